"""Zone export and public lookup with 1,000,000 listings, side by side with rbldnsd over DNS.

1. Imports 1,000,000 synthetic listings (the listings benchmark's data: 240.0.0.0/4 reserved space and
   2001:db8::/32, 10% IPv6) into a fresh SQLite database (or ``--db URL``).
2. Exports the rbldnsd zone in a child process: wall time and peak RSS of that process.
3. Serves the exported zone with rbldnsd and the app with gunicorn, both on loopback, and sends the
   same addresses (half inside listings, half random) to each: dnsperf → rbldnsd, a multi-process
   keep-alive HTTP client → ``GET /api/v1/lookup?ip=``. Answers are cross-checked on a sample first.

Usage: ``python -m bench.export_lookup [--count 1000000] [--seconds 10] [--workers 2]``
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import multiprocessing
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ZONE = "dul.example.test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- 1. data ---------------------------------------------------------------------------------------
def populate(url: str, count: int, *, load: bool = True) -> tuple[float, list[str]]:
    from bench.listings import entries, synthetic_networks
    from tmsi.cli.db import upgrade
    from tmsi.db import make_engine, make_sessionmaker, unit_of_work
    from tmsi.services.listings import import_entries

    upgrade(url)
    factory = make_sessionmaker(make_engine(url))
    v6_count = count // 10
    # IPv4 from the listings benchmark (one listing per distinct /24 of 240.0.0.0/4); IPv6 as distinct
    # /64s of 2001:db8::/32, so that nothing nests and exactly ``count`` listings are stored
    nets = synthetic_networks(count - v6_count, v6_count=0)
    base6 = int(ipaddress.IPv6Address("2001:db8::"))
    nets += [
        ipaddress.IPv6Network((base6 + (block << 64), 64))
        for block in random.Random(5).sample(range(1 << 32), v6_count)
    ]
    started = time.perf_counter()
    if load:
        with unit_of_work(factory) as session:
            import_entries(session, entries(nets))
    seconds = time.perf_counter() - started
    rng = random.Random(3)
    addresses: list[str] = []
    for _ in range(100_000):
        net = rng.choice(nets)
        if rng.random() < 0.5:
            addresses.append(str(net.network_address + rng.randrange(min(net.num_addresses, 1 << 32))))
        elif net.version == 4:
            addresses.append(str(ipaddress.IPv4Address(rng.randrange(0xF0000000, 0xFFFFFFFF))))
        else:
            addresses.append(str(ipaddress.IPv6Address(rng.randrange(1 << 64) | (0x20010DB8 << 96))))
    return seconds, addresses


# --- 2. export in a child process (its own peak RSS) -----------------------------------------------
def _vm_hwm_kb() -> int:
    """Peak RSS of this process image (``ru_maxrss`` would carry the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def export_child(url: str, zone_dir: str) -> None:
    from tmsi.config import Settings
    from tmsi.db import make_engine, make_sessionmaker
    from tmsi.services.export import write_zone

    settings = Settings(database_url=url, zone_dir=Path(zone_dir), dnsbl_zone=ZONE, _env_file=None)
    factory = make_sessionmaker(make_engine(url))
    before = _vm_hwm_kb()
    with factory() as session:
        result = write_zone(session, settings)
    peak = _vm_hwm_kb()
    print(json.dumps({**result.as_dict(), "rss_before_kb": before, "rss_peak_kb": peak}))


def run_export(url: str, zone_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "bench.export_lookup", "--export-child", url, str(zone_dir)],
        cwd=ROOT,
        capture_output=True,
        check=True,
        text=True,
    )
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    data["wall_with_start_s"] = time.perf_counter() - started
    data["bytes"] = sum(Path(p).stat().st_size for p in data["paths"])
    return data


# --- 3a. DNS side ----------------------------------------------------------------------------------
def dnsbl_name(address: str) -> str:
    ip = ipaddress.ip_address(address)
    suffix = ".in-addr.arpa" if ip.version == 4 else ".ip6.arpa"
    return ip.reverse_pointer[: -len(suffix)] + "." + ZONE


def run_dnsperf(port: int, addresses: list[str], seconds: int, workdir: Path) -> dict[str, float]:
    queries = workdir / "queries.txt"
    queries.write_text("".join(f"{dnsbl_name(a)} A\n" for a in addresses))
    out = subprocess.run(
        [
            "dnsperf",
            "-s",
            "127.0.0.1",
            "-p",
            str(port),
            "-d",
            str(queries),
            "-l",
            str(seconds),
            "-c",
            "4",
            "-q",
            "200",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = float(re.search(r"Average Latency \(s\):\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    return {"qps": qps, "avg_ms": latency * 1000, "lost": float(lost.group(1)) if lost else 0.0}


# --- 3b. HTTP side ---------------------------------------------------------------------------------
def _read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, bytes]:
    """One HTTP/1.1 response off a keep-alive socket (status, body); leftovers stay in ``buffer``."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buffer += chunk
    head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
    start = len(head) + 4
    while len(buffer) < start + length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buffer += chunk
    body = bytes(buffer[start : start + length])
    del buffer[: start + length]
    return int(head[9:12]), body


def _http_worker(args: tuple[int, list[str], float, int]) -> tuple[int, int, list[float]]:
    """A lean keep-alive client (http.client's header parsing would eat the CPU the server needs)."""
    port, addresses, seconds, seed = args
    rng = random.Random(seed)
    requests = [
        f"GET /api/v1/lookup?ip={a} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        for a in rng.sample(addresses, min(len(addresses), 20_000))
    ]
    sock = socket.create_connection(("127.0.0.1", port))
    buffer = bytearray()
    done = errors = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    index = 0
    while True:
        start = time.perf_counter()
        if start >= deadline:
            break
        try:
            sock.sendall(requests[index % len(requests)])
            status, _ = _read_response(sock, buffer)
            if status != 200:
                errors += 1
        except OSError:
            errors += 1
            sock.close()
            sock = socket.create_connection(("127.0.0.1", port))
            buffer.clear()
            continue
        index += 1
        latencies.append(time.perf_counter() - start)
        done += 1
    sock.close()
    return done, errors, latencies[::10]


def run_http(port: int, addresses: list[str], seconds: float, clients: int) -> dict[str, float]:
    with multiprocessing.get_context("fork").Pool(clients) as pool:
        started = time.perf_counter()
        results = pool.map(_http_worker, [(port, addresses, seconds, i) for i in range(clients)])
        elapsed = time.perf_counter() - started
    done = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    lat = sorted(x for r in results for x in r[2])
    return {
        "rps": done / elapsed,
        "errors": errors,
        "median_ms": statistics.median(lat) * 1000,
        "p95_ms": lat[int(0.95 * (len(lat) - 1))] * 1000,
    }


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server on a free loopback port for the rate-limit storage (as in production)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def start_gunicorn(
    url: str, port: int, workers: int, threads: int, instance: Path, ratelimit_storage: str = "memory://"
) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        TMSI_DATABASE_URL=url,
        TMSI_SECRET_KEY="bench-" + os.urandom(8).hex(),
        TMSI_ENVIRONMENT="production",
        TMSI_HUEY_STORAGE="memory",
        TMSI_INSTANCE_PATH=str(instance),
        TMSI_DNSBL_ZONE=ZONE,
        TMSI_PUBLIC_LOOKUP_RATE_LIMIT="100000000 per minute",
        TMSI_RATELIMIT_STORAGE_URL=ratelimit_storage,
        TMSI_LOG_LEVEL="WARNING",
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            str(workers),
            "-k",
            "gthread",
            "--threads",
            str(threads),
            "--access-logfile",
            "/dev/null",
            "--log-level",
            "warning",
            "tmsi.wsgi:app",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/v1/lookup?ip=240.0.0.1")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                "gunicorn did not start: " + (proc.stderr.read().decode() if proc.stderr else "")
            )
        time.sleep(0.2)


def cross_check(port: int, server: Any, addresses: list[str]) -> int:
    """Both sides agree on listed/not listed for a sample of the addresses; returns how many listed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    listed = 0
    for address in addresses:
        conn.request("GET", f"/api/v1/lookup?ip={address}")
        web = json.loads(conn.getresponse().read())["listed"]
        dns = server.query(address) is not None
        if web != dns:
            raise AssertionError(f"{address}: web says listed={web}, rbldnsd says listed={dns}")
        listed += web
    return listed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--db", default="", help="database URL (default: a temp SQLite file)")
    parser.add_argument(
        "--keep", default="", help="work dir to keep (and reuse: its database is not reloaded)"
    )
    parser.add_argument(
        "--redis", action="store_true", help="rate-limit storage in a private redis-server (as in production)"
    )
    parser.add_argument("--export-child", nargs=2, metavar=("URL", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export_child:
        export_child(*args.export_child)
        return 0

    from tests.services.rbldnsd import rbldnsd_server

    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="tmsi-bench-export-"))
    workdir.mkdir(parents=True, exist_ok=True)
    url = args.db or f"sqlite:///{workdir / 'bench.db'}"
    reuse = bool(args.keep) and (workdir / "bench.db").exists() and not args.db
    try:
        import_s, addresses = populate(url, args.count, load=not reuse)
        print(f"imported {args.count:,} listings in {import_s:.1f} s (setup, not measured)", flush=True)
        zone_dir = workdir / "zone"
        export = run_export(url, zone_dir)
        print(f"exported in {export['seconds']:.2f} s", flush=True)
        export2 = run_export(url, zone_dir)  # a re-export over existing files (the usual case)
        port = free_port()
        redis, storage = start_redis(workdir) if args.redis else (None, "memory://")
        gunicorn = start_gunicorn(url, port, args.workers, args.threads, workdir / "instance", storage)
        try:
            with rbldnsd_server(ZONE, zone_dir) as server:
                listed = cross_check(port, server, addresses[:500])
                dns = run_dnsperf(server.port, addresses, args.seconds, workdir)
                web = run_http(port, addresses, args.seconds, args.clients)
        finally:
            gunicorn.send_signal(signal.SIGTERM)
            gunicorn.wait(20)
            if redis is not None:
                redis.terminate()
                redis.wait(10)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    mb = 1024.0
    database = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    lines = [
        f"Data: {args.count:,} listings ({export['count_v4']:,} IPv4 in an ip4set, "
        f"{export['count_v6']:,} IPv6 in an ip6trie), {database}; "
        f"{len(addresses):,} query addresses, "
        "half inside listings "
        f"({listed} of a 500-address sample listed, web and DNS agreeing on every one). 2 CPU cores shared "
        "by server and load generator, loopback.",
        "",
        "| step | result |",
        "|---|---|",
        f"| zone export, first (write_zone) | {export['seconds']:.2f} s, {export['bytes'] / mb / mb:.1f} MB, "
        f"peak RSS {export['rss_peak_kb'] / mb:.0f} MB (process {export['rss_before_kb'] / mb:.0f} MB "
        "before the export) |",
        f"| zone export, over existing files | {export2['seconds']:.2f} s, peak RSS "
        f"{export2['rss_peak_kb'] / mb:.0f} MB |",
        "",
        "| server | load | throughput | latency |",
        "|---|---|---|---|",
        f"| rbldnsd (DNS, dnsperf -c 4 -q 200, {args.seconds} s) | same addresses | {dns['qps']:,.0f} q/s | "
        f"avg {dns['avg_ms']:.2f} ms, {dns['lost']:.0f} lost |",
        f"| `GET /api/v1/lookup` (gunicorn {args.workers} workers x {args.threads} threads, {args.clients} "
        f"keep-alive clients, {args.seconds} s, rate limits in {storage.split(':')[0]}) | same addresses | "
        f"{web['rps']:,.0f} req/s | median "
        f"{web['median_ms']:.2f} ms, p95 {web['p95_ms']:.2f} ms, {web['errors']:.0f} errors |",
    ]
    lines.append("")
    lines.append(
        f"Load average (1/5/15 min) when the run ended: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}."
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
