"""Scheduled work: every schedule is listed in ``SCHEDULES``; each job is a thin wrapper around a
service-level ``job_x(settings, factory)`` function that the CLI (``tmsi jobs run NAME``) calls too.

Durable truth lives in the database (outbox rows, due re-verifications, pending exports): a periodic
task only sweeps what is due, and the services claim rows safely (``FOR UPDATE SKIP LOCKED`` /
claim leases), so a lost or doubled Huey message costs nothing but a sweep. Singletons (the mailbox
poller, the zone export, retention) additionally hold a ``job_locks`` lease and a Huey lock.

Huey storage: SQLite file in the instance folder by default, Redis in production
(``TMSI_HUEY_STORAGE=redis``), in-memory immediate mode for tests.
"""

from __future__ import annotations

import importlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from huey import Huey, MemoryHuey, RedisExpireHuey, SqliteHuey
from huey.exceptions import TaskLockedException
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from tmsi.config import Settings
from tmsi.db import make_engine, make_sessionmaker, unit_of_work, utcnow
from tmsi.logging import bound
from tmsi.models import Case, CaseTarget, CheckResult, RunStatus, VerificationRun
from tmsi.services import joblock

log = logging.getLogger(__name__)

JobFunc = Callable[[Settings, sessionmaker[Session]], Any]


@dataclass(frozen=True)
class Schedule:
    """One periodic job: what it calls, how often, and whether it must run alone."""

    name: str
    target: str  # "module:function", resolved when the job runs, so a job lands without touching this file
    every: Callable[[Settings], float]  # seconds between runs
    doc: str
    singleton: bool = False
    lease_seconds: float | Callable[[Settings], float] = 300.0
    lease_name: Callable[[Settings], str] | None = None
    enabled: Callable[[Settings], bool] = lambda _s: True
    # A job may return work items to fan out: each item becomes its own task calling ``fanout``.
    fanout: str | None = None


def _fixed(seconds: float) -> Callable[[Settings], float]:
    return lambda _s: seconds


def _demo_only(settings: Settings) -> bool:
    return settings.demo


def _short_in_demo(seconds: float, demo_seconds: float) -> Callable[[Settings], float]:
    return lambda s: demo_seconds if s.demo else seconds


def _poll_every(settings: Settings) -> float:
    return parse_job_intervals(settings).get("poll_mailbox") or (
        10.0 if settings.demo else float(settings.poll_interval_seconds)
    )


# ---- ALL schedules, in one place ------------------------------------------------------------------
SCHEDULES: tuple[Schedule, ...] = (
    Schedule(
        "poll_mailbox",
        "tmsi.services.poller:job_poll_mailbox",
        _poll_every,
        "fetch new mail from the shared mailbox (one poller per mailbox)",
        singleton=True,
        # Renewed every third of its length while a poll runs; a killed poller blocks the next one
        # for at most this long.
        lease_seconds=lambda s: max(30.0, 3.0 * _poll_every(s)),
        lease_name=lambda s: f"mailbox:{s.mailbox_kind}:{s.mailbox_address}",
        enabled=lambda s: s.mailbox_kind != "none",
    ),
    Schedule(
        "process_stored",
        "tmsi.services.ingest:job_process_stored",
        _fixed(10.0),
        "parse, thread and answer mail the poller only stored (TMSI_INGEST_DEFER; any number of workers)",
        enabled=lambda s: s.ingest_defer,
    ),
    Schedule(
        "reverify_due",
        "tmsi.services.verify:job_reverify_due",
        _short_in_demo(60.0, 10.0),
        "verify new targets and re-verify those whose next check is due (claimed per target)",
    ),
    Schedule(
        "evaluate_authority",
        "tmsi.jobs:authority_due",
        _short_in_demo(60.0, 10.0),
        "evaluate the sender's authority on open cases still pending it (one task per case)",
        fanout="tmsi.services.authority:job_evaluate_authority",
    ),
    Schedule(
        "send_outbox",
        "tmsi.services.outbox:job_send_outbox",
        _short_in_demo(30.0, 10.0),
        "send due outbox rows (claimed per row; retried with back-off)",
    ),
    Schedule(
        "export_zone",
        "tmsi.services.export:run_pending_export",
        _short_in_demo(15.0, 10.0),
        "write the rbldnsd zone when an export is pending (debounced by TMSI_EXPORT_DEBOUNCE_SECONDS)",
        singleton=True,
        lease_seconds=600.0,
    ),
    Schedule(
        "resume_chunks",
        "tmsi.jobs:unfinished_chunks",
        _fixed(300.0),
        "re-enqueue chunks of long range verifications whose task was lost (a killed worker)",
        fanout="tmsi.services.verify:job_verify_chunk",
    ),
    Schedule(
        "check_propagation",
        "tmsi.services.propagation:job_check_propagation",
        _fixed(60.0),
        "confirm delisted networks are gone from our DNSBL servers",
    ),
    Schedule(
        "regression_watch",
        "tmsi.services.propagation:job_regression_watch",
        _fixed(3600.0),
        "re-check delisted networks whose regression check is due",
    ),
    Schedule(
        "purge_raw_mail",
        "tmsi.services.retention:job_purge_raw_mail",
        _fixed(86400.0),
        "purge raw mail of cases closed more than TMSI_RETENTION_DAYS ago (audited)",
        singleton=True,
        lease_seconds=3600.0,
        enabled=lambda s: s.retention_days > 0,
    ),
    Schedule(
        "demo_fix_zone",
        "tmsi.demo:job_fix_demo_zone",
        _fixed(15.0),
        "demo only: the ISP 'fixes' one failing address after a while",
        enabled=_demo_only,
    ),
)

SCHEDULE_BY_NAME = {s.name: s for s in SCHEDULES}


def parse_job_intervals(settings: Settings) -> dict[str, float]:
    """``TMSI_JOB_INTERVALS`` (``send_outbox=10s,reverify_due=1m``) as seconds per job name."""
    from tmsi.config import ConfigError

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    out: dict[str, float] = {}
    for item in settings.job_intervals:
        name, _, value = item.partition("=")
        name, value = name.strip(), value.strip().lower()
        try:
            seconds = float(value[:-1]) * units[value[-1]] if value and value[-1] in units else float(value)
        except ValueError:
            seconds = -1.0
        if name not in SCHEDULE_BY_NAME or seconds <= 0:
            raise ConfigError(
                f"TMSI_JOB_INTERVALS: {item!r} is not NAME=DURATION with NAME one of "
                f"{', '.join(SCHEDULE_BY_NAME)} and DURATION like 30s, 5m, 1h (fix or remove the entry)"
            )
        out[name] = seconds
    return out


def interval(schedule: Schedule, settings: Settings) -> float:
    """Seconds between runs of ``schedule``: the override from TMSI_JOB_INTERVALS, else its default."""
    return parse_job_intervals(settings).get(schedule.name) or schedule.every(settings)


def lease_seconds(schedule: Schedule, settings: Settings) -> float:
    value = schedule.lease_seconds
    return float(value(settings) if callable(value) else value)


class JobUnavailable(LookupError):
    """The job's service function has not landed (or cannot be imported)."""


def resolve(target: str) -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise JobUnavailable(f"{target}: module {exc.name} does not exist") from None
        raise
    func = getattr(module, attr, None)
    if func is None:
        raise JobUnavailable(f"{target}: {module_name} has no {attr}")
    return func


def available(schedule: Schedule) -> bool:
    try:
        resolve(schedule.target)
    except JobUnavailable:
        return False
    return True


# ---- the database of this process -------------------------------------------------------------------
class Runtime:
    """Settings plus an engine/session factory created lazily per process (safe across fork)."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session] | None = None) -> None:
        self.settings = settings
        self._factory = factory
        self._pid = 0
        self._lock = threading.Lock()

    @property
    def factory(self) -> sessionmaker[Session]:
        import os

        if self._factory is not None and (self._pid in (0, os.getpid())):
            return self._factory
        with self._lock:
            if self._factory is None or self._pid not in (0, os.getpid()):
                self._factory = make_sessionmaker(
                    make_engine(self.settings.database_url, pool_size=self.settings.db_pool_size)
                )
                self._pid = os.getpid()
        return self._factory


@dataclass
class JobResult:
    name: str
    ran: bool
    result: Any = None
    reason: str = ""
    seconds: float = 0.0
    fanout: list[Any] = field(default_factory=list)


class _LeaseKeeper:
    """Holds a ``job_locks`` lease and renews it in the background while the job runs."""

    def __init__(self, factory: sessionmaker[Session], name: str, ttl: float) -> None:
        self.factory, self.name, self.ttl = factory, name, ttl
        self.holder = joblock.new_holder()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        with unit_of_work(self.factory) as session:
            got = joblock.try_acquire(session, self.name, self.holder, self.ttl)
        if got:
            self._thread = threading.Thread(target=self._renew, name=f"lease:{self.name}", daemon=True)
            self._thread.start()
        return got

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                with unit_of_work(self.factory) as session:
                    if not joblock.renew(session, self.name, self.holder, self.ttl):
                        log.error("lease %s lost while running", self.name)
                        return
            except Exception:
                log.exception("could not renew lease %s", self.name)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with unit_of_work(self.factory) as session:
            joblock.release(session, self.name, self.holder)


def run_job(name: str, settings: Settings, factory: sessionmaker[Session]) -> JobResult:
    """Run one scheduled job now (the Huey task and ``tmsi jobs run NAME`` both call this)."""
    schedule = SCHEDULE_BY_NAME[name]
    with bound(job=name):
        try:
            func = resolve(schedule.target)
        except JobUnavailable as exc:
            log.debug("job %s skipped: %s", name, exc)
            return JobResult(name, False, reason=str(exc))
        keeper = None
        if schedule.singleton:
            lease = schedule.lease_name(settings) if schedule.lease_name else f"job:{name}"
            keeper = _LeaseKeeper(factory, lease, lease_seconds(schedule, settings))
            if not keeper.acquire():
                log.info("job %s skipped: lease %s is held by another worker", name, lease)
                return JobResult(name, False, reason=f"lease {lease} held elsewhere")
        started = time.monotonic()
        try:
            result = retry_on_conflict(name, lambda: func(settings, factory))
        finally:
            if keeper is not None:
                keeper.release()
        seconds = time.monotonic() - started
        items = _fanout_items(schedule, result)
        log.info("job %s done in %.3fs", name, seconds, extra={"duration_s": round(seconds, 3)})
        return JobResult(name, True, result=result, seconds=seconds, fanout=items)


def _fanout_items(schedule: Schedule, result: Any) -> list[Any]:
    if schedule.fanout is None or result is None or isinstance(result, str | bytes | dict | int | float):
        return []
    if isinstance(result, Iterable):
        return [item if isinstance(item, list | tuple) else (item,) for item in result]
    return []


def run_target(target: str, settings: Settings, factory: sessionmaker[Session], *args: Any) -> Any:
    """Run one fanned-out work item, e.g. one chunk of a long range verification."""
    with bound(job=target.rpartition(":")[2]):
        func = resolve(target)
        return retry_on_conflict(target, lambda: func(settings, factory, *args))


CONFLICT_ATTEMPTS = 3


def retry_on_conflict(name: str, call: Callable[[], Any]) -> Any:
    """Run ``call``; if another worker changed the same case meanwhile (the case's optimistic lock,
    ``StaleDataError``), its transaction was rolled back whole: run it again on fresh rows, a few times."""
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            return call()
        except StaleDataError:
            if attempt == CONFLICT_ATTEMPTS:
                raise
            log.info("job %s met a concurrent update; retrying (%d/%d)", name, attempt, CONFLICT_ATTEMPTS)
            time.sleep(random.uniform(0.05, 0.3) * attempt)
    raise AssertionError("unreachable")


# ---- sweeps that feed fan-out ---------------------------------------------------------------------
CHUNK_ADDRESSES = 4096
STALE_CHUNK_AFTER = timedelta(minutes=5)


def authority_due(settings: Settings, factory: sessionmaker[Session], limit: int = 50) -> list[int]:
    """Open cases whose sender authority is still pending: one work item (case id) each."""
    from tmsi.services.cases import OPEN_STATES

    with factory() as session:
        stmt = (
            select(Case.id)
            .where(Case.authority_result == CheckResult.PENDING, Case.status.in_(OPEN_STATES))
            .order_by(Case.id)
            .limit(limit)
        )
        return list(session.scalars(stmt))


def unfinished_chunks(settings: Settings, factory: sessionmaker[Session]) -> list[tuple[int, str]]:
    """Chunks planned for a run that are still missing long after it started (their task was lost)."""
    cutoff = utcnow() - STALE_CHUNK_AFTER
    items: list[tuple[int, str]] = []
    with factory() as session:
        runs = session.scalars(
            select(VerificationRun).where(
                VerificationRun.status.in_([RunStatus.PENDING, RunStatus.RUNNING]),
                VerificationRun.started_at < cutoff,
            )
        )
        for run in runs:
            summary = run.summary or {}
            done = set(summary.get("chunks", {}))
            items += [(run.id, chunk) for chunk in summary.get("chunks_planned", []) if chunk not in done]
    return items


def verify_target_now(
    settings: Settings, factory: sessionmaker[Session], target_id: int
) -> list[tuple[Any, ...]]:
    """Verify one target: small ones at once, a long IPv4 range as chunk work items for many workers."""
    from tmsi.services import verify

    with factory() as session:
        target = session.get_one(CaseTarget, target_id)
        size = 1 << ((32 if target.version == 4 else 128) - target.prefixlen)
    if target.version == 4 and size > CHUNK_ADDRESSES:
        return list(verify.job_plan_chunks(settings, factory, target_id, size=CHUNK_ADDRESSES))
    verify.job_verify_target(settings, factory, target_id)
    return []


# ---- Huey wiring ----------------------------------------------------------------------------------
def make_huey(settings: Settings, *, immediate: bool | None = None) -> Huey:
    """The Huey instance for this settings object; ``huey_storage=memory`` runs tasks immediately."""
    name = "tmsi"
    if settings.huey_storage == "memory" or immediate:
        return MemoryHuey(name, immediate=True, results=True)
    if settings.huey_storage == "redis":
        if not settings.redis_url:
            from tmsi.config import ConfigError

            raise ConfigError(
                "TMSI_HUEY_STORAGE=redis needs TMSI_REDIS_URL (for example redis://redis:6379/0)"
            )
        # SET NX EX locks: a lock held by a killed worker expires instead of blocking forever.
        return RedisExpireHuey(name, url=settings.redis_url, results=False, expire_time=3600)
    path = settings.instance_path / "huey.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(name, filename=str(path), results=False)


def minute_validator(every_seconds: float) -> Callable[[datetime], bool]:
    """A Huey periodic validator firing every ``every_seconds`` (rounded to whole minutes, at least 1)."""
    minutes = max(1, round(every_seconds / 60))

    def validate(now: datetime) -> bool:
        return int(now.timestamp() // 60) % minutes == 0

    return validate


@dataclass
class TmsiHuey:
    """The Huey instance plus its tasks, built from SCHEDULES for one settings object."""

    huey: Huey
    runtime: Runtime
    tasks: dict[str, Any]
    chunk_task: Any

    def enqueue_all(self) -> None:
        """Run every enabled job once now (used at start-up so nothing waits for the first tick)."""
        for schedule in SCHEDULES:
            if schedule.enabled(self.runtime.settings):
                self.tasks[schedule.name]()


def build_huey(
    settings: Settings, *, factory: sessionmaker[Session] | None = None, immediate: bool | None = None
) -> TmsiHuey:
    parse_job_intervals(settings)  # a bad TMSI_JOB_INTERVALS stops the worker at start, by name
    huey = make_huey(settings, immediate=immediate)
    runtime = Runtime(settings, factory)
    tasks: dict[str, Any] = {}

    @huey.task(name="run_target", retries=2, retry_delay=10)
    def chunk_task(target: str, args: list[Any]) -> Any:
        return run_target(target, runtime.settings, runtime.factory, *args)

    @huey.task(name="verify_target", retries=1, retry_delay=30)
    def verify_target_task(target_id: int) -> int:
        items = verify_target_now(runtime.settings, runtime.factory, target_id)
        for item in items:
            chunk_task("tmsi.services.verify:job_verify_chunk", list(item))
        return len(items)

    for schedule in SCHEDULES:
        tasks[schedule.name] = _register(huey, runtime, schedule, chunk_task)
    tasks["verify_target"] = verify_target_task
    return TmsiHuey(huey, runtime, tasks, chunk_task)


_APPS: dict[int, TmsiHuey] = {}


def request_verification(settings: Settings, target_id: int) -> None:
    """Queue the verification of one target now (a UI button, a new case); long ranges fan out."""
    app = _APPS.get(id(settings))
    if app is None:
        app = _APPS[id(settings)] = build_huey(settings)
    app.tasks["verify_target"](target_id)


def _register(huey: Huey, runtime: Runtime, schedule: Schedule, chunk_task: Any) -> Any:
    name = schedule.name

    def job() -> Any:
        settings = runtime.settings
        try:
            if schedule.singleton and not huey.immediate:
                lock_ttl = (
                    int(lease_seconds(schedule, settings)) if settings.huey_storage == "redis" else None
                )
                with huey.lock_task(f"job:{name}", ttl=lock_ttl):
                    outcome = run_job(name, settings, runtime.factory)
            else:
                outcome = run_job(name, settings, runtime.factory)
        except TaskLockedException:
            log.info("job %s skipped: already running (huey lock)", name)
            return None
        for item in outcome.fanout:
            chunk_task(schedule.fanout, list(item))
        return outcome.ran

    job.__name__ = f"job_{name}"
    task = huey.task(name=name)(job)

    def tick(now: datetime | None = None) -> None:
        """Each periodic tick enqueues the job; sub-minute intervals are spread over the minute."""
        settings = runtime.settings
        if not schedule.enabled(settings):
            return
        if settings.huey_storage == "redis":
            # Every scaled worker runs a scheduler; only the first tick of each minute enqueues.
            minute = int(time.time() // 60)
            if not huey.put_if_empty(f"tick:{name}:{minute}", "1", 180):
                return
        every = interval(schedule, settings)
        if every >= 60:
            task()
            return
        steps = max(1, int(60 // every))
        for i in range(steps):
            if i == 0:
                task()
            else:
                task.schedule(delay=i * every)

    every = interval(schedule, runtime.settings)
    tick.__name__ = f"tick_{name}"
    huey.periodic_task(minute_validator(every), name=f"tick.{name}")(tick)
    return task


def describe(settings: Settings) -> list[dict[str, Any]]:
    """The schedule table as shown by ``tmsi jobs list`` (and the README)."""
    return [
        {
            "name": s.name,
            "every_s": interval(s, settings),
            "enabled": s.enabled(settings),
            "available": available(s),
            "singleton": s.singleton,
            "target": s.target,
            "doc": s.doc,
        }
        for s in SCHEDULES
    ]
