"""Web UI under load: the queue page and case pages against gunicorn on loopback, CIDR searches, and the
CPU each page costs.

Loads N cases (with targets, audit events, verdicts), M messages and L listings into a throw-away
PostgreSQL database with COPY, starts gunicorn on a free loopback port, and drives it with C concurrent
keep-alive clients: closed loop (no think time), then with think time. The load generator is wrk when
installed (Debian: `apt-get install wrk`; much lighter than Python threads on a 2-core machine), else Python
threads. CIDR searches run against a second gunicorn with the queue cache off, so that repeating a search
times the search. Last, CPU milliseconds per page are measured in-process (Flask test client; Python and
the PostgreSQL backend), the number to compare on a machine shared with other work. Synthetic IPv4 lives in
240.0.0.0/4 (reserved, never routed), IPv6 in 2001:db8::/32 (documentation), as in bench/listings.py. Usage:

    python -m bench.ui [--cases 100000] [--messages 500000] [--listings 1000000] [--clients 20]
                       [--seconds 20] [--think 1] [--workers 2] [--threads 4] [--cpu 300] [--keep] [--reuse]
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import text

from bench.machine import reference_ms
from tmsi.cli.db import upgrade
from tmsi.db import make_engine, unit_of_work
from tmsi.db import make_sessionmaker as _make_sessionmaker
from tmsi.models import Role
from tmsi.services import users

PG_BASE = os.environ.get("TMSI_BENCH_PG_BASE", "postgresql+psycopg://postgres@127.0.0.1:5432")
ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "bench password 123"
OPEN = ["new", "verifying", "awaiting_requester", "ready_for_decision"]
STATUSES = [*OPEN, "delisted", "rejected", "closed"]
STATUS_WEIGHTS = [10, 5, 10, 5, 5, 5, 60]
DOMAINS = [f"isp{i}.example" for i in range(200)]
BODY = (
    "Hello,\n\nplease remove our static range from your list. The PTR records now say static.\n"
    "Regards,\nNOC\n"
)


def _now() -> datetime:
    return datetime.now(UTC)


def _copy(
    conn: psycopg.Connection[Any], table: str, columns: list[str], rows: Iterator[tuple[Any, ...]]
) -> int:
    count = 0
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def _v4_target(rng: random.Random) -> ipaddress.IPv4Network:
    base = int(ipaddress.IPv4Address("240.0.0.0")) + (rng.randrange(1 << 20) << 8)
    plen = rng.choice((24, 28, 29, 30, 32, 32, 32))
    offset = rng.randrange(1 << (plen - 24)) << (32 - plen) if plen > 24 else 0
    return ipaddress.IPv4Network((base + offset, plen))


def _v6_target(rng: random.Random) -> ipaddress.IPv6Network:
    base = int(ipaddress.IPv6Address("2001:db8::")) + (rng.randrange(1 << 16) << 80)
    return ipaddress.IPv6Network((base, 48))


def load(url: str, n_cases: int, n_messages: int, n_listings: int, seed: int = 11) -> dict[str, float]:
    """Create the schema and bulk-load the data set; returns seconds per table."""
    rng = random.Random(seed)
    timings: dict[str, float] = {}
    upgrade(url)
    engine = make_engine(url)
    factory = _make_sessionmaker(engine)
    with unit_of_work(factory) as db:
        users.create_user(db, "bench@example.test", Role.ANALYST, password=PASSWORD)
        for i in range(9):
            users.create_user(db, f"analyst{i}@example.test", Role.ANALYST, password=PASSWORD)
    engine.dispose()
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    now = _now()
    year = now.year
    with psycopg.connect(dsn, autocommit=False) as conn:
        t0 = time.perf_counter()
        case_cols = [
            "id",
            "reference",
            "status",
            "resolution",
            "subject",
            "requester_email",
            "requester_name",
            "requester_domain",
            "assignee_id",
            "authority_result",
            "authority_evidence",
            "verification_result",
            "flags",
            "search_text",
            "created_at",
            "updated_at",
            "waiting_since",
            "last_inbound_at",
            "lock_version",
        ]

        def cases() -> Iterator[tuple[Any, ...]]:
            for i in range(1, n_cases + 1):
                status = rng.choices(STATUSES, STATUS_WEIGHTS)[0]
                domain = rng.choice(DOMAINS)
                created = now - timedelta(minutes=rng.randrange(60 * 24 * 365))
                waiting = created + timedelta(minutes=rng.randrange(60)) if status in OPEN else None
                yield (
                    i,
                    f"TMSI-{year}-{i:06d}",
                    status,
                    "delisted" if status == "delisted" else None,
                    f"Delisting request {i} for our customers",
                    f"noc{i % 50}@{domain}",
                    f"NOC {domain}",
                    domain,
                    rng.choice([None, None, 1, 2, 3]),
                    rng.choice(["pass", "fail", "none", "pending"]),
                    "{}",
                    rng.choice(["pass", "fail", "partial", "pending"]),
                    "{}",
                    f"request {i} from {domain} ticket {rng.randrange(10**6)}",
                    created,
                    created,
                    waiting,
                    created,
                    1,
                )

        _copy(conn, "cases", case_cols, cases())
        conn.execute("SELECT setval('cases_id_seq', %s)", (n_cases,))
        conn.execute("INSERT INTO case_counters (year, value) VALUES (%s, %s)", (year, n_cases))
        timings["cases"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        target_cols = [
            "id",
            "case_id",
            "network",
            "version",
            "prefixlen",
            "start_key",
            "end_key",
            "source_text",
            "oversized",
            "coverage",
            "status",
            "summary",
            "authority_result",
            "authority_evidence",
            "check_attempts",
            "created_at",
        ]
        target_id = 0

        def targets() -> Iterator[tuple[Any, ...]]:
            nonlocal target_id
            for case_id in range(1, n_cases + 1):
                for _ in range(rng.choice((1, 1, 1, 2, 3))):
                    net = _v4_target(rng) if rng.random() < 0.9 else _v6_target(rng)
                    target_id += 1
                    yield (
                        target_id,
                        case_id,
                        str(net),
                        net.version,
                        net.prefixlen,
                        net.network_address.packed,
                        net.broadcast_address.packed,
                        str(net),
                        False,
                        "listed",
                        "fail",
                        json.dumps({"reasons": ["generic rDNS"]}),
                        "pending",
                        "{}",
                        1,
                        now,
                    )

        n_targets = _copy(conn, "case_targets", target_cols, targets())
        conn.execute("SELECT setval('case_targets_id_seq', %s)", (n_targets,))
        timings["case_targets"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        msg_cols = [
            "id",
            "case_id",
            "direction",
            "kind",
            "status",
            "dedupe_key",
            "message_id_header",
            "content_hash",
            "raw",
            "raw_size",
            "from_addr",
            "from_name",
            "to_addrs",
            "envelope_from",
            "subject",
            "in_reply_to",
            '"references"',
            "headers",
            "body_text",
            "body_html",
            "attachments",
            "explain",
            "delivery_count",
            "received_at",
        ]

        def messages() -> Iterator[tuple[Any, ...]]:
            for i in range(1, n_messages + 1):
                case_id = (i - 1) % n_cases + 1
                mid = f"<bench-{i}@isp.example>"
                raw = f"Message-ID: {mid}\r\nSubject: request {case_id}\r\n\r\n{BODY}".encode()
                yield (
                    i,
                    case_id,
                    "in" if i % 3 else "out",
                    "request",
                    "processed",
                    mid,
                    mid,
                    "0" * 64,
                    raw,
                    len(raw),
                    f"noc@isp{case_id % 200}.example",
                    "NOC",
                    '["dul@example.test"]',
                    "",
                    f"Re: request {case_id}",
                    "",
                    "[]",
                    "[]",
                    BODY,
                    "",
                    "[]",
                    "{}",
                    1,
                    now - timedelta(minutes=i % 100000),
                )

        _copy(conn, "messages", msg_cols, messages())
        conn.execute("SELECT setval('messages_id_seq', %s)", (n_messages,))
        timings["messages"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        listing_cols = [
            "id",
            "network",
            "version",
            "prefixlen",
            "start_key",
            "end_key",
            "reason",
            "listed_at",
            "source",
            "evidence",
            "active",
            "created_at",
        ]
        seen: set[str] = set()

        def listings() -> Iterator[tuple[Any, ...]]:
            i = 0
            while i < n_listings:
                net = _v4_target(rng) if rng.random() < 0.95 else _v6_target(rng)
                key = str(net)
                if key in seen:
                    continue
                seen.add(key)
                i += 1
                yield (
                    i,
                    key,
                    net.version,
                    net.prefixlen,
                    net.network_address.packed,
                    net.broadcast_address.packed,
                    "generic rDNS",
                    now,
                    "bench",
                    "{}",
                    True,
                    now,
                )

        _copy(conn, "listings", listing_cols, listings())
        conn.execute("SELECT setval('listings_id_seq', %s)", (n_listings,))
        seen.clear()
        timings["listings"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        audit_cols = [
            "at",
            "actor",
            "action",
            "case_id",
            "object_type",
            "object_id",
            "before",
            "after",
            "detail",
            "request_id",
        ]

        def events() -> Iterator[tuple[Any, ...]]:
            for case_id in range(1, n_cases + 1):
                ref = f"TMSI-{year}-{case_id:06d}"
                yield (
                    now,
                    "system",
                    "case.opened",
                    case_id,
                    "case",
                    ref,
                    "{}",
                    '{"status": "new"}',
                    "{}",
                    "",
                )
                yield (
                    now,
                    "analyst1@example.test",
                    "case.note",
                    case_id,
                    "note",
                    "1",
                    "{}",
                    "{}",
                    '{"excerpt": "called the ISP"}',
                    "",
                )

        _copy(conn, "audit_events", audit_cols, events())
        check_cols = [
            "target_id",
            "address",
            "version",
            "address_key",
            "result",
            "name_verdict",
            "ptr_names",
            "reasons",
            "evidence",
            "checked_at",
        ]

        def checks() -> Iterator[tuple[Any, ...]]:
            for tid in range(1, min(n_targets, n_cases) + 1, 5):
                for k in range(4):
                    addr = ipaddress.IPv4Address(int(ipaddress.IPv4Address("240.0.0.0")) + tid * 4 + k)
                    yield (
                        tid,
                        str(addr),
                        4,
                        addr.packed,
                        "fail",
                        "generic",
                        '["dyn.isp.example."]',
                        '["generic dynamic name"]',
                        '{"ptr": {"ttl": 300}}',
                        now,
                    )

        _copy(conn, "dns_checks", check_cols, checks())
        timings["audit+checks"] = time.perf_counter() - t0
        conn.commit()
        t0 = time.perf_counter()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
        timings["vacuum analyze"] = time.perf_counter() - t0
    return timings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Client:
    """One keep-alive HTTP/1.1 connection carrying the signed-in session cookie."""

    def __init__(self, port: int, cookie: str = "") -> None:
        self.port = port
        self.cookie = cookie
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(
        self, method: str, path: str, body: str = "", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:
        hdrs = {"Cookie": self.cookie} if self.cookie else {}
        hdrs.update(headers or {})
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=body or None, headers=hdrs)
                resp = self.conn.getresponse()
                data = resp.read().decode("utf-8", "replace")
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def sign_in(port: int) -> str:
    client = Client(port)
    status, headers, page = client.request("GET", "/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert status == 200 and token, status
    cookie = headers["set-cookie"].split(";", 1)[0]
    client.cookie = cookie
    from urllib.parse import urlencode

    form = urlencode({"email": "bench@example.test", "password": PASSWORD, "csrf_token": token.group(1)})
    status, headers, _ = client.request(
        "POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 302, status
    return headers["set-cookie"].split(";", 1)[0]


def run_load(
    port: int,
    cookie: str,
    clients: int,
    total: int,
    make_path: Callable[[random.Random], str],
    expect: str,
    think: float = 0.0,
) -> list[float]:
    """``clients`` threads each send requests (back to back, or ``think`` seconds apart on average) until
    ``total`` are done."""
    latencies: list[float] = []
    lock = threading.Lock()
    remaining = [total]
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        client = Client(port, cookie)
        while True:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            path = make_path(rng)
            t0 = time.perf_counter()
            status, _, body = client.request("GET", path)
            elapsed = time.perf_counter() - t0
            if status != 200 or expect not in body:
                errors.append(f"{path}: {status}")
            with lock:
                latencies.append(elapsed)
            if think:
                time.sleep(rng.uniform(0.5, 1.5) * think)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    WALL[id(latencies)] = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[:3]}")
    return latencies


WALL: dict[int, float] = {}

WRK_SCRIPT = """
math.randomseed(os.time())
local cases = tonumber(os.getenv("BENCH_CASES") or "0")
local year = os.getenv("BENCH_YEAR")
local think = tonumber(os.getenv("BENCH_THINK_MS") or "0")
request = function()
  local path = "/cases"
  if cases > 0 then path = string.format("/cases/TMSI-%s-%06d", year, math.random(1, cases)) end
  return wrk.format("GET", path)
end
if think > 0 then
  delay = function() return math.random(math.floor(think / 2), think + math.floor(think / 2)) end
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %.3f %.3f %.3f %d %d %d\\n", summary.requests,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency.max / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.timeout,
    summary.duration, summary.errors.status))
end
"""


def run_wrk(
    port: int, cookie: str, clients: int, seconds: int, cases: int, year: int, think: float
) -> tuple[int, float, float, float, float]:
    """wrk (C, event loop) as the load generator: requests, median, p95, max (ms) and req/s. All its
    clients send ``cookie``; a fresh sign-in's cookie per run, because wrk never stores the cookie the
    app sends again once a minute (as a browser does), and an old one is re-signed on every request."""
    script = ROOT / "instance" / "bench-ui" / "wrk.lua"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(WRK_SCRIPT)
    env = dict(
        os.environ, BENCH_CASES=str(cases), BENCH_YEAR=str(year), BENCH_THINK_MS=str(int(think * 1000))
    )
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{clients}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-H",
            f"Cookie: {cookie}",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    requests, p50, p95, top, errors, duration_us, _status = line.split()[1:]
    if int(errors):
        raise RuntimeError(f"wrk saw {errors} failed requests:\n{out}")
    return int(requests), float(p50), float(p95), float(top), int(requests) / (int(duration_us) / 1e6)


def _backend_cpu_seconds(dsn: str) -> float:
    """CPU time (user + system) used so far by the PostgreSQL backends of the bench database; 0.0 when
    /proc of the server's processes cannot be read (server on another host)."""
    total = 0
    with psycopg.connect(dsn) as conn:
        pids = [
            pid
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ]
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def measure_cpu(url: str, env: dict[str, str], cases: int, requests: int) -> list[tuple[str, float, float]]:
    """CPU milliseconds per page, in-process (Flask test client, no HTTP server): the app's Python and the
    PostgreSQL backend serving it. The working metric here: unlike latency, it hardly moves with the load
    others put on the machine."""
    os.environ.update(env)
    from tmsi import create_app

    app = create_app()
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token, "no CSRF token on /login"
    form = {"email": "bench@example.test", "password": PASSWORD, "csrf_token": token.group(1)}
    assert client.post("/login", data=form).status_code == 302
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    rng = random.Random(5)
    year = _now().year
    pages: list[tuple[str, Callable[[], str], float | None]] = [
        ("queue page, default filter (rows cache on, as served)", lambda: "/cases", None),
        ("queue page, default filter (rows cache off)", lambda: "/cases", 0.0),
        ("case page, random case", lambda: f"/cases/TMSI-{year}-{rng.randrange(1, cases + 1):06d}", None),
    ]
    out = []
    for name, make_path, ttl in pages:
        app.config.pop("TMSI_QUEUE_CACHE_TTL", None)
        if ttl is not None:
            app.config["TMSI_QUEUE_CACHE_TTL"] = ttl
        for _ in range(30):
            assert client.get(make_path()).status_code == 200
        backend0, python0 = _backend_cpu_seconds(dsn), time.process_time()
        for _ in range(requests):
            assert client.get(make_path()).status_code == 200
        python_ms = (time.process_time() - python0) * 1000 / requests
        backend_ms = (_backend_cpu_seconds(dsn) - backend0) * 1000 / requests
        out.append((name, python_ms, backend_ms))
    return out


def app_env(url: str) -> dict[str, str]:
    """The ``TMSI_*`` settings of an app serving the benchmark database ``url`` (a fresh secret key)."""
    return {
        "TMSI_DATABASE_URL": url,
        "TMSI_SECRET_KEY": uuid.uuid4().hex,
        "TMSI_ENVIRONMENT": "production",
        "TMSI_HUEY_STORAGE": "memory",
        "TMSI_INSTANCE_PATH": str(ROOT / "instance" / "bench-ui"),
    }


def gunicorn_command(port: int, *options: str) -> list[str]:
    """gunicorn on a loopback port with the production settings (``tmsi.gunicorn_conf``: gthread, the
    app's own access log at INFO, none of gunicorn's); ``options`` override them."""
    from tmsi.cli.run import gunicorn_command as command

    return command(f"127.0.0.1:{port}", *options)


def wait_for_port(port: int, server: subprocess.Popen[bytes], seconds: float, log_path: Path) -> None:
    """Return once ``port`` accepts connections; kill ``server`` and raise (with its log's end) when it
    exits first or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError(f"gunicorn did not start:\n{log_path.read_text()[-3000:]}") from None
            time.sleep(0.2)


def start_gunicorn(port: int, env: dict[str, str], workers: int, threads: int) -> subprocess.Popen[bytes]:
    """:func:`gunicorn_command` with ``workers`` x ``threads``, returned once it accepts connections. Its
    log goes to ``instance/bench-ui/gunicorn-<port>.log``."""
    log_path = ROOT / "instance" / "bench-ui" / f"gunicorn-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = gunicorn_command(port, "-w", str(workers), "--threads", str(threads))
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    wait_for_port(port, server, 30, log_path)
    return server


def stop_gunicorn(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGTERM)
    server.wait(15)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--messages", type=int, default=500_000)
    parser.add_argument("--listings", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=2000, help="per measured page")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--repeat", type=int, default=1, help="closed-loop runs of each page (the machine's speed varies)"
    )
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument(
        "--think",
        type=float,
        default=1.0,
        help="also measure with this mean think time (s) between a client's requests; 0: skip",
    )
    parser.add_argument(
        "--loader",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="load generator: wrk (Debian package) when installed, else Python threads",
    )
    parser.add_argument("--seconds", type=int, default=20, help="duration of each wrk run")
    parser.add_argument("--db", default="tmsi_bench_ui")
    parser.add_argument("--reuse", action="store_true", help="use the data already loaded in --db")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--readme", action="store_true", help="append the table to bench/README.md")
    parser.add_argument(
        "--cpu",
        type=int,
        default=300,
        metavar="N",
        help="also measure CPU ms per page in-process over N requests each (0: skip)",
    )
    args = parser.parse_args()

    url = f"{PG_BASE}/{args.db}"
    admin = make_engine(f"{PG_BASE}/postgres", isolation_level="AUTOCOMMIT")
    timings: dict[str, float] = {}
    if not args.reuse:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{args.db}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{args.db}"'))
        t0 = time.perf_counter()
        timings = load(url, args.cases, args.messages, args.listings)
        timings["total load"] = time.perf_counter() - t0
        for name, seconds in timings.items():
            print(f"load {name:>16}: {seconds:7.1f} s", flush=True)

    port = free_port()
    settings_env = app_env(url)
    env = dict(os.environ, **settings_env)
    load_at_start = os.getloadavg()[0]  # after the data load: the machine as the measurement finds it
    speed_at_start = reference_ms()
    gunicorn = start_gunicorn(port, env, args.workers, args.threads)
    try:
        try:
            cookie = sign_in(port)
            year = _now().year
            n = args.cases
            warm = Client(port, cookie)
            for _ in range(20):
                warm.request("GET", "/cases")
                warm.request("GET", f"/cases/TMSI-{year}-{random.randrange(1, n + 1):06d}")
            rows: list[tuple[str, int, list[float]]] = []
            wrk_rows: list[tuple[str, int, tuple[int, float, float, float, float]]] = []
            use_wrk = args.loader == "wrk" or (args.loader == "auto" and shutil.which("wrk") is not None)
            if use_wrk:
                for think in (0.0, args.think) if args.think else (0.0,):
                    label = f"think {think:g} s" if think else "closed loop"
                    for run in range(args.repeat if not think else 1):
                        tag = f", run {run + 1}" if args.repeat > 1 and not think else ""
                        wrk_rows.append(
                            (
                                f"queue page, default filter, page 1 ({label}{tag})",
                                args.clients,
                                run_wrk(port, sign_in(port), args.clients, args.seconds, 0, year, think),
                            )
                        )
                        wrk_rows.append(
                            (
                                f"case page, random case ({label}{tag})",
                                args.clients,
                                run_wrk(port, sign_in(port), args.clients, args.seconds, n, year, think),
                            )
                        )
            else:
                queue = run_load(
                    port, sign_in(port), args.clients, args.requests, lambda r: "/cases", "queue-table"
                )
                rows.append(("queue page (default filter, page 1)", args.clients, queue))
                case = run_load(
                    port,
                    sign_in(port),
                    args.clients,
                    args.requests,
                    lambda r: f"/cases/TMSI-{year}-{r.randrange(1, n + 1):06d}",
                    "timeline-list",
                )
                rows.append(("case page (random case)", args.clients, case))
                if args.think:
                    label = f"think {args.think:g} s"
                    queue = run_load(
                        port,
                        sign_in(port),
                        args.clients,
                        args.requests,
                        lambda r: "/cases",
                        "queue-table",
                        args.think,
                    )
                    rows.append((f"queue page ({label})", args.clients, queue))
                    case = run_load(
                        port,
                        sign_in(port),
                        args.clients,
                        args.requests,
                        lambda r: f"/cases/TMSI-{year}-{r.randrange(1, n + 1):06d}",
                        "timeline-list",
                        args.think,
                    )
                    rows.append((f"case page ({label})", args.clients, case))
            queries = [
                "240.0.0.0/4",
                "240.1.0.0/16",
                "240.1.2.0/24",
                "240.1.2.3",
                "2001:db8::/32",
                "2001:db8:12::/48",
            ]
            # Repeating one search within the queue cache's lifetime would time the cache: the searches
            # run against a server with it off (TMSI_QUEUE_CACHE_SECONDS=0).
            stop_gunicorn(gunicorn)
            gunicorn = start_gunicorn(
                port, dict(env, TMSI_QUEUE_CACHE_SECONDS="0"), args.workers, args.threads
            )
            single = Client(port, sign_in(port))
            for _ in range(20):  # warm both workers (templates, prepared statements) as for the pages
                single.request("GET", "/cases?status=all&net=240.9.9.0/24")
            cidr_rows: list[tuple[str, float, int]] = []
            for q in queries:
                samples = []
                total = ""
                for _ in range(7):
                    t0 = time.perf_counter()
                    status, _, body = single.request("GET", f"/cases?status=all&net={q}")
                    samples.append(time.perf_counter() - t0)
                    assert status == 200, (q, status)
                    found = re.search(r"(\d+) case\(s\)", body)
                    total = found.group(1) if found else "?"
                cidr_rows.append(
                    (q, statistics.median(samples) * 1000, int(total) if total.isdigit() else -1)
                )
        finally:
            stop_gunicorn(gunicorn)
        # After gunicorn has stopped, so that nothing else of ours runs meanwhile.
        cpu_rows = measure_cpu(url, settings_env, args.cases, args.cpu) if args.cpu else []
    finally:
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{args.db}" WITH (FORCE)'))
        admin.dispose()

    lines = [
        f"Data: {args.cases:,} cases, {args.messages:,} messages, {args.listings:,} listings (PostgreSQL); "
        f"gunicorn {args.workers} workers x {args.threads} threads (gthread) on loopback, 2 CPU cores shared "
        f"with PostgreSQL and the load generator; first closed loop (no think time), then with think time. "
        f"Load average at the start: {load_at_start:.1f}, at the end: {os.getloadavg()[0]:.1f}. "
        f"Machine speed (bench/machine.py reference loop, lower is faster): {speed_at_start:.0f} ms at the "
        f"start, {reference_ms():.0f} ms at the end.",
        "",
        "| page | clients | requests | median ms | p95 ms | max ms | req/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, clients, (count, p50, p95, top, rps) in wrk_rows:
        lines.append(
            f"| {name} [wrk] | {clients} | {count} | {p50:.1f} | {p95:.1f} | {top:.1f} | {rps:.0f} |"
        )
    for name, clients, lat in rows:
        rps = len(lat) / max(WALL.get(id(lat), 0.0), 1e-9)
        lines.append(
            f"| {name} | {clients} | {len(lat)} | {statistics.median(lat) * 1000:.1f} | "
            f"{pct(lat, 0.95):.1f} | {max(lat) * 1000:.1f} | {rps:.0f} |"
        )
    lines += [
        "",
        "| CIDR search over all cases (`/cases?status=all&net=…`, 1 client) | cases found | median ms |",
        "|---|---|---|",
    ]
    lines += [f"| {q} | {found:,} | {ms:.1f} |" for q, ms, found in cidr_rows]
    if cpu_rows:
        lines += [
            "",
            f"| CPU per page, in-process ({args.cpu} requests each) | Python ms | PostgreSQL ms | total ms |",
            "|---|---|---|---|",
        ]
        lines += [f"| {name} | {py:.2f} | {pg:.2f} | {py + pg:.2f} |" for name, py, pg in cpu_rows]
    if timings:
        lines += ["", "Load: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())]
    table = "\n".join(lines)
    print(table)
    if args.readme:
        readme = ROOT / "bench" / "README.md"
        stamp = _now().strftime("%Y-%m-%d %H:%M UTC")
        with readme.open("a", encoding="utf-8") as fh:
            fh.write(
                f"\n## Web UI (bench/ui.py) — {stamp}\n\n`python -m bench.ui {' '.join(sys.argv[1:])}`\n\n"
                f"{table}\n"
            )


if __name__ == "__main__":
    main()
