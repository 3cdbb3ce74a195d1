"""Zone export: the active listings as rbldnsd ``ip4set``/``ip6trie`` files, written atomically.

Requests are debounced (many delistings → one :class:`ExportRun`); :func:`run_pending_export` is the job.
Each file is written to a temp file, given a new whole-second mtime and renamed over the old one: rbldnsd
only notices a change of mtime (whole seconds) or size, so a same-second rewrite would otherwise be missed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from tmsi.config import Settings
from tmsi.db import unit_of_work, utcnow
from tmsi.domain import zone
from tmsi.models import Delisting, ExportRun, Listing, RunStatus

log = logging.getLogger(__name__)

YIELD_PER = 20_000
WRITE_BUFFER = 1 << 20
HOOK_TIMEOUT = 300.0
CONFIRM_WAIT_SECONDS = 10.0
STALE_RUN_SECONDS = 2 * HOOK_TIMEOUT + 600


@dataclass
class ExportResult:
    serial: int
    generated_at: datetime
    paths: list[str] = field(default_factory=list)
    count_v4: int = 0
    count_v6: int = 0
    seconds: float = 0.0
    hook: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "generated_at": self.generated_at.isoformat(),
            "paths": self.paths,
            "count_v4": self.count_v4,
            "count_v6": self.count_v6,
            "seconds": round(self.seconds, 3),
            "hook": self.hook,
        }


class ExportHookError(RuntimeError):
    """The configured export hook failed; the zone files were written all the same."""


# --- requests (debounced) ------------------------------------------------------------------------
def request_export(session: Session, reason: str, *, now: datetime | None = None) -> ExportRun:
    """Ask for an export: joins the pending request if there is one (debounce), else opens one."""
    now = now or utcnow()
    pending = session.scalar(
        select(ExportRun).where(ExportRun.status == RunStatus.PENDING.value).order_by(ExportRun.id).limit(1)
    )
    if pending is not None:
        if reason and reason not in pending.reason and len(pending.reason) + len(reason) < 250:
            pending.reason = f"{pending.reason}; {reason}" if pending.reason else reason
        return pending
    run = ExportRun(requested_at=now, status=RunStatus.PENDING.value, reason=reason[:255])
    session.add(run)
    session.flush()
    return run


def last_serial(session: Session) -> int | None:
    return session.scalar(select(func.max(ExportRun.serial)))


# --- writing -------------------------------------------------------------------------------------
def _entries_statement(version: int) -> Any:
    """Active networks of one IP version in address order, already formatted as data lines by the
    database (a host loses its ``/32``/``/128``, as :func:`tmsi.domain.zone.entry_line` does)."""
    table = Listing.__table__
    host, suffix = (32, 3) if version == 4 else (128, 4)
    line = case(
        (table.c.prefixlen == host, func.substr(table.c.network, 1, func.length(table.c.network) - suffix)),
        else_=table.c.network,
    )
    return (
        select(line)
        .where(table.c.active.is_(True), table.c.version == version)
        .order_by(table.c.start_key, table.c.prefixlen)
    )


class _Counter:
    def __init__(self) -> None:
        self.value = 0


def _stream_entries(session: Session, version: int, counter: _Counter) -> Iterator[str]:
    """Blocks of data lines, fetched in batches straight from the DB-API cursor (constant memory).

    Neither ORM entities nor Core rows: their per-row bookkeeping costs several times the write
    itself for a million rows. The statement has only literal integers and booleans (no user input).
    """
    conn = session.connection()
    sql = str(
        _entries_statement(version).compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    )
    dbapi: Any = conn.connection.dbapi_connection
    # PostgreSQL: a named (server-side) cursor streams; SQLite's cursor already fetches lazily
    cursor = (
        dbapi.cursor(name=f"tmsi_export_v{version}") if conn.dialect.name == "postgresql" else dbapi.cursor()
    )
    try:
        cursor.execute(sql)
        while batch := cursor.fetchmany(YIELD_PER):
            counter.value += len(batch)
            yield "\n".join([row[0] for row in batch]) + "\n"
    finally:
        cursor.close()


def _file_serial(path: Path) -> int | None:
    """The serial in the header of an earlier export (serials must grow even without ExportRun rows)."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return zone.parse_serial(fh.readline() for _ in range(6))
    except OSError:
        return None


def _new_mtime(path: Path) -> int:
    stamp = int(time.time())
    with contextlib.suppress(FileNotFoundError):
        stamp = max(stamp, int(path.stat().st_mtime) + 1)
    return stamp


def write_atomic(path: Path, chunks: Iterable[str]) -> None:
    """Write ``chunks`` of text to ``path`` via a temp file + rename, with a new whole-second mtime."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="ascii", newline="\n", buffering=WRITE_BUFFER) as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        # rbldnsd drops privileges to its own user: the file must be world-readable
        os.chmod(tmp, 0o644)
        stamp = _new_mtime(path)
        os.utime(tmp, (stamp, stamp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def export_zone(
    session: Session, settings: Settings, out: Path | str | None = None, *, now: datetime | None = None
) -> dict[str, Any]:
    """Write the active listings. ``out`` is a directory (default ``zone_dir``) receiving
    ``<zone>.ip4set`` and ``<zone>.ip6trie``, or a file receiving one rbldnsd ``combined`` dataset."""
    return write_zone(session, settings, out, now=now).as_dict()


def write_zone(
    session: Session, settings: Settings, out: Path | str | None = None, *, now: datetime | None = None
) -> ExportResult:
    started = time.perf_counter()
    now = now or utcnow()
    target = Path(out) if out is not None else Path(settings.zone_dir)
    as_directory = out is None or target.is_dir() or str(out).endswith(os.sep)
    files = [target / zone.dataset_file(settings.dnsbl_zone, v) for v in (4, 6)] if as_directory else [target]
    previous = [s for s in [last_serial(session), *map(_file_serial, files)] if s is not None]
    serial = zone.next_serial(now, max(previous, default=None))
    txt = zone.txt_template(settings.zone_txt_template, settings.base_url)
    result = ExportResult(serial=serial, generated_at=now)

    def header(kind: zone.DatasetKind, soa: bool = True) -> list[str]:
        return zone.header_lines(
            zone=settings.dnsbl_zone, kind=kind, serial=serial, generated_at=now, txt=txt, soa=soa
        )

    if as_directory:
        for version in (4, 6):
            counter = _Counter()
            head = "".join(line + "\n" for line in header(zone.DATASETS[version]))
            path = target / zone.dataset_file(settings.dnsbl_zone, version)
            write_atomic(path, _chain([head], _stream_entries(session, version, counter)))
            result.paths.append(str(path))
            if version == 4:
                result.count_v4 = counter.value
            else:
                result.count_v6 = counter.value
    else:
        counters = {4: _Counter(), 6: _Counter()}

        def combined() -> Iterator[str]:
            yield f"# combined rbldnsd dataset for {settings.dnsbl_zone}, serial {serial}\n"
            for version in (4, 6):
                kind = zone.DATASETS[version]
                yield zone.combined_dataset_line(kind) + "\n"
                yield "".join(line + "\n" for line in header(kind, soa=version == 4))
                yield from _stream_entries(session, version, counters[version])

        write_atomic(target, combined())
        result.paths.append(str(target))
        result.count_v4, result.count_v6 = counters[4].value, counters[6].value
    result.seconds = time.perf_counter() - started
    return result


def _chain(*parts: Iterable[str]) -> Iterator[str]:
    for part in parts:
        yield from part


def run_hook(settings: Settings, result: ExportResult) -> str:
    """Run ``export_hook`` (no shell) with the export's files in the environment; returns its output."""
    if not settings.export_hook.strip():
        return ""
    env = dict(os.environ)
    env.update(
        {
            "TMSI_EXPORT_SERIAL": str(result.serial),
            "TMSI_EXPORT_FILES": " ".join(result.paths),
            "TMSI_ZONE_DIR": str(settings.zone_dir),
            "TMSI_DNSBL_ZONE": settings.dnsbl_zone,
        }
    )
    try:
        proc = subprocess.run(
            shlex.split(settings.export_hook),
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=HOOK_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExportHookError(f"export hook {settings.export_hook!r} failed: {exc}") from exc
    output = (proc.stdout + proc.stderr).decode("utf-8", "replace")[-2000:]
    if proc.returncode != 0:
        raise ExportHookError(f"export hook exited {proc.returncode}: {output}")
    return output


# --- the job ---------------------------------------------------------------------------------------
def _abandon_stale_runs(session: Session, now: datetime) -> None:
    """A run still ``running`` long after any export could take was lost with its worker: mark it failed
    (its delistings were never linked to it, so the next run carries them)."""
    session.execute(
        update(ExportRun)
        .where(
            ExportRun.status == RunStatus.RUNNING.value,
            ExportRun.started_at < now - timedelta(seconds=STALE_RUN_SECONDS),
        )
        .values(
            status=RunStatus.FAILED.value, finished_at=now, error="abandoned: the export worker was lost"
        ),
        execution_options={"synchronize_session": False},
    )


def _claim(factory: sessionmaker[Session], settings: Settings, now: datetime, force: bool) -> int | None:
    with unit_of_work(factory) as session:
        _abandon_stale_runs(session, now)
        run = session.scalar(
            select(ExportRun)
            .where(ExportRun.status == RunStatus.PENDING.value)
            .order_by(ExportRun.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if run is None:
            return None
        due = run.requested_at + timedelta(seconds=settings.export_debounce_seconds)
        if not force and due > now:
            return None
        run.status = RunStatus.RUNNING.value
        run.started_at = now
        return run.id


def run_pending_export(
    settings: Settings,
    factory: sessionmaker[Session],
    *,
    force: bool = False,
    now: datetime | None = None,
    confirm_wait: float = CONFIRM_WAIT_SECONDS,
) -> dict[str, Any]:
    """The export job: once the oldest pending request is ``export_debounce_seconds`` old (or ``force``),
    write the zone, run the hook, and link the delistings it carries to the run."""
    now = now or utcnow()
    run_id = _claim(factory, settings, now, force)
    if run_id is None:
        return {"exported": False}
    try:
        with unit_of_work(factory) as session:
            # Delistings committed before this point are in the listings read below.
            carried = list(
                session.scalars(
                    select(Delisting.id).where(
                        Delisting.export_id.is_(None), Delisting.propagation_status == "pending"
                    )
                )
            )
            result = write_zone(session, settings, now=now)
    except Exception as exc:
        log.exception("zone export %s failed", run_id)
        _finish(factory, run_id, None, [], settings, error=f"{type(exc).__name__}: {exc}")
        return {"exported": False, "run_id": run_id, "error": str(exc)}
    error = None
    try:
        result.hook = run_hook(settings, result)
    except ExportHookError as exc:
        log.error("%s", exc)
        error = str(exc)
    _finish(factory, run_id, result, carried, settings, error=error)
    summary: dict[str, Any] = {
        "exported": True,
        "run_id": run_id,
        "delistings": len(carried),
        **result.as_dict(),
    }
    if error:
        summary["error"] = error
    if carried:
        # Close the loop at once while the servers reload; the periodic check takes over after this.
        from tmsi.services.propagation import wait_for_propagation

        wait = confirm_wait if settings.dnsbl_nameservers else 0.0
        summary["propagation"] = wait_for_propagation(settings, factory, timeout=wait)
    return summary


def _finish(
    factory: sessionmaker[Session],
    run_id: int,
    result: ExportResult | None,
    carried: list[int],
    settings: Settings,
    *,
    error: str | None,
) -> None:
    finished = utcnow()
    with unit_of_work(factory) as session:
        run = session.get(ExportRun, run_id)
        assert run is not None
        run.finished_at = finished
        run.status = RunStatus.FAILED.value if error else RunStatus.DONE.value
        run.error = error[:4000] if error else None
        if result is not None:
            run.serial = result.serial
            run.path = ", ".join(result.paths)[:1024]
            run.count_v4 = result.count_v4
            run.count_v6 = result.count_v6
            if carried:
                deadline = finished + timedelta(seconds=settings.propagation_deadline_seconds)
                session.execute(
                    update(Delisting)
                    .where(Delisting.id.in_(carried))
                    .values(export_id=run_id, propagation_deadline=deadline),
                    execution_options={"synchronize_session": False},
                )
