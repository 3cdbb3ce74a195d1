"""Sustained load: mail through Dovecot at a steady rate plus concurrent UI clients, against the real
deployment shape (gunicorn + two ``tmsi worker`` processes on PostgreSQL and Redis).

What it checks (issue 8): no backlog growth (the inbox and the outbox drain), p95 UI latency, RSS flat.
Mail is a realistic mix (``bench.ingest.make_message``: requests in many notations, replies,
auto-replies, bounces, lists, spam, malformed) APPENDed over IMAP at ``--rate`` messages/s; replies
go to an in-process SMTP sink; verification answers come from the demo zone files; Knot answers the
authority look-ups. UI clients are signed-in leads in a closed loop with ``--think`` seconds between
requests: queue page, case pages, dashboard. Usage:

    python -m bench.sustained [--minutes 1] [--rate 50] [--clients 20] [--think 1.0] [--workers 2]
                              [--web-workers 2] [--write-readme]
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select, text

from bench.machine import reference_ms

ROOT = Path(__file__).resolve().parents[1]
PG_BASE = os.environ.get("TMSI_BENCH_PG_BASE", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("TMSI_BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
PASSWORD = "bench password 123"
TMSI = str(Path(sys.executable).with_name("tmsi"))
README_SECTION = "## Sustained load: mail + UI with two workers (`bench/sustained.py`)"


def _free_port() -> int:
    from tests.services.ports import free_port

    return free_port()


# ---- processes and their memory -------------------------------------------------------------------
def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (MB), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


@contextmanager
def database() -> Iterator[str]:
    name = f"tmsi_sustained_{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"{PG_BASE}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{PG_BASE}/{name}"
    try:
        from tmsi.cli.db import upgrade

        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class Sink:
    """SMTP sink counting what the workers send."""

    def __init__(self) -> None:
        self.count = 0
        self.port = _free_port()
        self._controller: Any = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 OK"

    def __enter__(self) -> Sink:
        from aiosmtpd.controller import Controller

        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._controller.stop()


# ---- load generators ------------------------------------------------------------------------------
@dataclass
class MailLoad:
    dovecot: Any
    user: str
    rate: float
    sent: int = 0
    errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from bench.ingest import make_message

        rng = random.Random(8)
        client = self.dovecot.client(self.user, PASSWORD)
        started = time.monotonic()
        try:
            while not self.stop.is_set():
                due = started + self.sent / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(min(delay, 0.2))
                    continue
                try:
                    client.append("INBOX", make_message(self.sent, rng, "sustained"))
                except Exception:
                    self.errors += 1
                    client = self.dovecot.client(self.user, PASSWORD)
                self.sent += 1
        finally:
            client.logout()


@dataclass
class UiClient:
    """A signed-in lead. Each client connects from its own loopback address (127.0.0.N), as distinct
    users do, so the per-address sign-in rate limit applies to each one separately."""

    port: int
    email: str
    think: float
    references: list[str]
    source: str = "127.0.0.1"
    latencies: list[tuple[float, str, float]] = field(default_factory=list)  # (when, page, seconds)
    errors: int = 0
    cookie: str = ""

    def _request(self, method: str, path: str, body: str | None = None) -> tuple[int, str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30, source_address=(self.source, 0))
        headers = {"Cookie": self.cookie} if self.cookie else {}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read().decode("utf-8", "replace")
        cookie = response.getheader("Set-Cookie")
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        conn.close()
        return response.status, data, response

    def sign_in(self) -> None:
        status, page, _ = self._request("GET", "/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert token, f"no login form ({status})"
        form = urllib.parse.urlencode(
            {"csrf_token": token.group(1), "email": self.email, "password": PASSWORD}
        )
        status, _, _ = self._request("POST", "/login", form)
        assert status == 302, f"sign-in failed ({status})"

    def run(self, stop: threading.Event, seed: int) -> None:
        rng = random.Random(seed)
        self.sign_in()
        while not stop.is_set():
            roll = rng.random()
            if roll < 0.05:
                page, path = "dashboard", "/dashboard"
            elif roll < 0.40 and self.references:
                page, path = "case", f"/cases/{rng.choice(self.references[-200:])}"
            else:
                page, path = "queue", "/cases"
            started = time.perf_counter()
            try:
                status, _, _ = self._request("GET", path)
                if status != 200:
                    self.errors += 1
            except OSError:
                self.errors += 1
                status = 0
            self.latencies.append((time.monotonic(), page, time.perf_counter() - started))
            stop.wait(self.think * rng.uniform(0.5, 1.5))


# ---- the run --------------------------------------------------------------------------------------
@dataclass
class Sample:
    at: float
    inbox: int
    outbox: int
    stored: int
    sent: int
    web_mb: float
    workers_mb: float
    queued: int = 0  # Huey tasks waiting in Redis (ready now)
    scheduled: int = 0  # Huey tasks scheduled for later (the ticks' spread of sub-minute jobs)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs) or 1.0
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


def run(args: argparse.Namespace) -> tuple[list[tuple[str, str, str]], str]:
    import redis

    from tests.services.dovecot import dovecot_server
    from tests.services.knot import knot_server
    from tmsi.cli.run import gunicorn_command
    from tmsi.db import make_engine, make_sessionmaker, unit_of_work
    from tmsi.models import Case, Direction, Message, OutboxMessage, OutboxStatus, Role
    from tmsi.services import users

    zones = sorted((ROOT / "tmsi" / "data" / "demo" / "zones").glob("*.zone"))
    rows: list[tuple[str, str, str]] = []
    queue = redis.Redis.from_url(REDIS_URL)
    queue.flushdb()
    with dovecot_server() as dovecot, knot_server() as knot, database() as db_url, Sink() as sink:
        mail_user = f"load{uuid.uuid4().hex[:6]}"
        dovecot.add_user(mail_user, PASSWORD)
        engine = make_engine(db_url, pool_size=4)
        factory = make_sessionmaker(engine)
        emails = [f"lead{i}@example.test" for i in range(args.clients)]
        with unit_of_work(factory) as session:
            for address in emails:
                users.create_user(session, address, Role.LEAD, password=PASSWORD)
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TMSI_")} | {
            "TMSI_DATABASE_URL": db_url,
            "TMSI_SECRET_KEY": "bench-secret",
            "TMSI_HUEY_STORAGE": "redis",
            "TMSI_REDIS_URL": REDIS_URL,
            "TMSI_RATELIMIT_STORAGE_URL": "memory://",
            "TMSI_INSTANCE_PATH": str(Path(dovecot.directory) / "instance"),
            "TMSI_MAILBOX_KIND": "imap",
            "TMSI_IMAP_HOST": dovecot.host,
            "TMSI_IMAP_PORT": str(dovecot.port),
            "TMSI_IMAP_TLS": "none",
            "TMSI_IMAP_USER": mail_user,
            "TMSI_IMAP_PASSWORD": PASSWORD,
            "TMSI_AUTHSERV_IDS": "mx.example.test",
            "TMSI_SMTP_HOST": "127.0.0.1",
            "TMSI_SMTP_PORT": str(sink.port),
            "TMSI_SMTP_TLS": "none",
            "TMSI_AUTOREPLY_PER_SENDER_PER_HOUR": "1000",
            "TMSI_RESOLVER_KIND": "zonefile",
            "TMSI_RESOLVER_ZONE_FILES": ",".join(map(str, zones)),
            "TMSI_RESOLVERS": knot.nameserver,
            "TMSI_JOB_INTERVALS": "poll_mailbox=2s,send_outbox=2s,reverify_due=5s,evaluate_authority=5s",
            "TMSI_LOG_LEVEL": args.log_level,
        }
        logs = Path(dovecot.directory) / "logs"
        logs.mkdir()
        procs: dict[str, subprocess.Popen[bytes]] = {}
        with (logs / "web.log").open("ab") as out:
            procs["web"] = subprocess.Popen(
                gunicorn_command(
                    f"127.0.0.1:{port}",
                    "--workers",
                    str(args.web_workers),
                    "--no-control-socket",
                    "--access-logfile",
                    "/dev/null",
                ),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        for i in range(args.workers):
            with (logs / f"worker{i}.log").open("ab") as out:
                procs[f"worker{i}"] = subprocess.Popen(
                    [TMSI, "worker", "--workers", str(args.threads)],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    conn.request("GET", "/healthz")
                    if conn.getresponse().status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("web server did not start; see " + str(logs))
                time.sleep(0.3)

            references: list[str] = []
            mail = MailLoad(dovecot, mail_user, args.rate)
            stop_ui = threading.Event()
            clients = [
                UiClient(port, address, args.think, references, source=f"127.0.0.{10 + i}")
                for i, address in enumerate(emails)
            ]
            threads = [threading.Thread(target=mail.run, daemon=True)]
            threads += [
                threading.Thread(target=c.run, args=(stop_ui, i), daemon=True) for i, c in enumerate(clients)
            ]
            imap = dovecot.client(mail_user, PASSWORD)

            def sample(t0: float) -> Sample:
                inbox = int(imap.folder_status("INBOX", ["MESSAGES"])[b"MESSAGES"])
                with factory() as session:
                    outbox = (
                        session.scalar(
                            select(func.count(OutboxMessage.id)).where(
                                OutboxMessage.status.in_([OutboxStatus.PENDING, OutboxStatus.SENDING])
                            )
                        )
                        or 0
                    )
                    stored = (
                        session.scalar(
                            select(func.count(Message.id)).where(Message.direction == Direction.IN)
                        )
                        or 0
                    )
                    references[:] = list(
                        session.scalars(select(Case.reference).order_by(Case.id.desc()).limit(200))
                    )
                workers_mb = sum(tree_rss_mb(p.pid) for n, p in procs.items() if n.startswith("worker"))
                queued = int(queue.llen("huey.redis.tmsi"))
                scheduled = int(queue.zcard("huey.schedule.tmsi"))
                return Sample(
                    time.monotonic() - t0,
                    inbox,
                    outbox,
                    stored,
                    sink.count,
                    tree_rss_mb(procs["web"].pid),
                    workers_mb,
                    queued,
                    scheduled,
                )

            load_at_start = os.getloadavg()[0]
            speed_at_start = reference_ms()
            t0 = time.monotonic()
            for thread in threads:
                thread.start()
            samples: list[Sample] = []
            duration = args.minutes * 60
            while time.monotonic() - t0 < duration:
                for name, proc in procs.items():
                    if proc.poll() is not None:
                        raise SystemExit(f"{name} exited with {proc.returncode}; see {logs}")
                samples.append(sample(t0))
                time.sleep(5)
            mail.stop.set()
            stop_ui.set()
            end_of_load = time.monotonic()
            for thread in threads:
                thread.join(timeout=30)
            samples.append(sample(t0))
            drained_after = None
            while time.monotonic() - end_of_load < 180:
                last = sample(t0)
                if last.inbox == 0 and last.outbox == 0 and last.stored >= mail.sent - mail.errors:
                    drained_after = time.monotonic() - end_of_load
                    break
                time.sleep(1)
            final = sample(t0)
            imap.logout()
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT if proc is not procs["web"] else signal.SIGTERM)
            for proc in procs.values():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            if args.logs:
                shutil.copytree(logs, args.logs, dirs_exist_ok=True)
        engine.dispose()

    latencies = [lat for c in clients for (_, _, lat) in c.latencies]
    by_page: dict[str, list[float]] = {}
    for c in clients:
        for _, page, lat in c.latencies:
            by_page.setdefault(page, []).append(lat)
    second_half = [s for s in samples if s.at >= duration / 2]
    warm = [s for s in samples if s.at >= min(30.0, duration / 3)] or samples
    ms = 1000
    rows += [
        ("duration / offered mail rate", f"{duration:.0f} s / {args.rate:g} msg/s", ""),
        ("messages appended (errors)", f"{mail.sent} ({mail.errors})", ""),
        ("messages stored at end of load", f"{samples[-1].stored}", ""),
        ("ingest throughput during load", f"{samples[-1].stored / duration:.1f} msg/s", f">= {args.rate:g}"),
        ("replies sent (SMTP sink)", f"{final.sent}", ""),
        ("inbox backlog: max / at end of load", f"{max(s.inbox for s in samples)} / {samples[-1].inbox}", ""),
        (
            "inbox backlog slope, 2nd half",
            f"{slope_per_minute([(s.at, s.inbox) for s in second_half]):+.0f} /min",
            "<= 0 (no growth)",
        ),
        (
            "outbox backlog: max / at end of load",
            f"{max(s.outbox for s in samples)} / {samples[-1].outbox}",
            "",
        ),
        (
            "outbox backlog slope, 2nd half",
            f"{slope_per_minute([(s.at, s.outbox) for s in second_half]):+.0f} /min",
            "<= 0 (no growth)",
        ),
        (
            "drained after the load stopped",
            "not within 180 s" if drained_after is None else f"{drained_after:.0f} s",
            "inbox and outbox empty",
        ),
        ("UI clients / think time", f"{args.clients} / {args.think:g} s", ""),
        ("UI requests (errors)", f"{len(latencies)} ({sum(c.errors for c in clients)})", ""),
        (
            "UI latency p50 / p95 / p99",
            f"{percentile(latencies, 0.5) * ms:.0f} / {percentile(latencies, 0.95) * ms:.0f} / "
            f"{percentile(latencies, 0.99) * ms:.0f} ms",
            "p95 <= 200 ms",
        ),
    ]
    for page, values in sorted(by_page.items()):
        rows.append(
            (
                f"  {page} page p50 / p95 ({len(values)} requests)",
                f"{percentile(values, 0.5) * ms:.0f} / {percentile(values, 0.95) * ms:.0f} ms",
                "",
            )
        )
    rows += [
        (
            "web RSS (gunicorn, all processes): warm / end",
            f"{warm[0].web_mb:.0f} / {samples[-1].web_mb:.0f} MB",
            "flat",
        ),
        (
            "workers RSS (both): warm / end",
            f"{warm[0].workers_mb:.0f} / {samples[-1].workers_mb:.0f} MB",
            "flat",
        ),
        (
            "workers RSS (both) at each minute",
            " ".join(
                f"{sample_at_minute(samples, m).workers_mb:.0f}"
                for m in range(1, int(samples[-1].at // 60) + 1)
            )
            + " MB",
            "levels off",
        ),
        (
            "Huey queue: max ready / max scheduled",
            f"{max(s.queued for s in samples)} / {max(s.scheduled for s in samples)}",
            "",
        ),
        (
            "load average (1 min): before the load / at end",
            f"{load_at_start:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs",
            "",
        ),
        (
            "machine speed (bench/machine.py reference loop) before / after",
            f"{speed_at_start:.0f} / {reference_ms():.0f} ms",
            "lower is faster",
        ),
    ]
    return rows, timeline(samples)


def sample_at_minute(samples: list[Sample], minute: int) -> Sample:
    """The sample taken closest to the end of the given minute of the run."""
    return min(samples, key=lambda sample: abs(sample.at - 60 * minute))


def timeline(samples: list[Sample]) -> str:
    """One line per minute: what the backlogs and memory did over the run."""
    lines = ["| minute | inbox | outbox | Huey ready / scheduled | stored | sent | workers RSS MB |"]
    lines.append("|---|---|---|---|---|---|---|")
    for m in range(1, int(samples[-1].at // 60) + 1):
        s = sample_at_minute(samples, m)
        lines.append(
            f"| {m} | {s.inbox} | {s.outbox} | {s.queued} / {s.scheduled} | {s.stored} | {s.sent} | "
            f"{s.workers_mb:.0f} |"
        )
    return "\n".join(lines)


def table(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| measure | value | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def write_readme(rows: list[tuple[str, str, str]], minutes: str, args: argparse.Namespace) -> None:
    path = ROOT / "bench" / "README.md"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = (
        f"python -m bench.sustained --minutes {args.minutes:g} --rate {args.rate:g} "
        f"--clients {args.clients} --think {args.think:g} --workers {args.workers}"
    )
    body = f"\nRun {stamp}: `{command}`\n\n{table(rows)}\n\nPer minute:\n\n{minutes}\n"
    if README_SECTION not in current:
        current = current.rstrip("\n") + "\n\n" + README_SECTION + "\n\n" + INTRO + "\n"
    head, _, rest = current.partition(README_SECTION)
    section, sep, tail = rest.partition("\n## ")
    path.write_text(
        head + README_SECTION + section.rstrip("\n") + "\n" + body + (("\n## " + tail) if sep else "")
    )


INTRO = """\
gunicorn (2 workers, 4 threads each) and two `tmsi worker` processes (4 threads each) on PostgreSQL and
Redis, on this 2-core machine shared with the rest of the team. Mail is APPENDed to Dovecot at a steady
rate (the realistic mix of `bench/ingest.py`); signed-in leads browse the queue, case pages and the
dashboard with a think time. Samples every 5 s: the IMAP inbox (not yet ingested), the outbox backlog
(pending + sending), stored messages and the RSS of each process tree. Each run is appended below."""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=1.0, help="load duration (10 for the full run)")
    parser.add_argument("--rate", type=float, default=50.0, help="messages per second into Dovecot")
    parser.add_argument("--clients", type=int, default=20, help="concurrent UI clients")
    parser.add_argument("--think", type=float, default=1.0, help="seconds between a client's requests")
    parser.add_argument("--workers", type=int, default=2, help="tmsi worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker process")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--write-readme", action="store_true", help="append the table to bench/README.md")
    parser.add_argument("--log-level", default="WARNING", help="TMSI_LOG_LEVEL of web and workers")
    parser.add_argument("--logs", type=Path, help="copy the processes' logs to this directory at the end")
    args = parser.parse_args()
    # SIGTERM/SIGINT unwind through the finally blocks, which stop every process the run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows, minutes = run(args)
    print(table(rows))
    print()
    print(minutes)
    if args.write_readme:
        write_readme(rows, minutes, args)


if __name__ == "__main__":
    main()
