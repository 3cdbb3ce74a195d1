"""Benchmark: verify a /16 (65,536 addresses, PTR + forward A each) against a local Knot, with Debian's
``adnshost -i`` (checked PTR look-ups) as the yardstick in the same run.

The range is 198.18.0.0/16, from the RFC 2544 benchmarking block 198.18.0.0/15: the documentation ranges
hold only 768 IPv4 addresses, and this traffic never leaves loopback (our own Knot, our own zone data).
Every address gets ``static-198-18-A-B.bench.example`` with the matching A record, so every address is
expected to pass and the whole pipeline runs (PTR, FCrDNS, classification).

Knot listens on a free port on 127.0.0.1 for tmsi and on 127.0.0.2@53 for adnshost (adns has no port
option). Rows printed:

* ``adnshost -i``: 512 processes of 128 look-ups one after another (adns sends everything before it reads,
  so more per process overflows the UDP receive buffer; see SERVICES.md);
* ``tmsi FCrDNS only``: the resolver engine doing PTR then A for all addresses (what adnshost -i does);
* ``tmsi verify_network``: the full verification (also classifies every name and builds the summary).

Run: ``.venv/bin/python -m bench.rdns_range [--runs N] [--append-readme]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query

from tmsi.adapters.resolver import DnsResolver
from tmsi.services.verify import verify_network

ROOT = Path(__file__).resolve().parent
NETWORK = "198.18.0.0/16"
REVERSE_ZONE = "18.198.in-addr.arpa"
FORWARD_ZONE = "bench.example"
ADNS_HOST = "127.0.0.2"
ADNS_CHUNK = 128

HEADER = """$ORIGIN {zone}.
$TTL 300
@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 3600 600 86400 60
@ IN NS ns1.{zone}.
"""


def _name(i: int) -> str:
    return f"static-198-18-{i >> 8}-{i & 255}"


def write_zones(directory: Path) -> None:
    zones = directory / "zones"
    zones.mkdir(parents=True)
    ptr = [HEADER.format(zone=REVERSE_ZONE)]
    ptr += [f"{i & 255}.{i >> 8} IN PTR {_name(i)}.{FORWARD_ZONE}.\n" for i in range(65536)]
    (zones / f"{REVERSE_ZONE}.zone").write_text("".join(ptr))
    fwd = [HEADER.format(zone=FORWARD_ZONE), "ns1 IN A 127.0.0.1\n"]
    fwd += [f"{_name(i)} IN A 198.18.{i >> 8}.{i & 255}\n" for i in range(65536)]
    (zones / f"{FORWARD_ZONE}.zone").write_text("".join(fwd))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def knot() -> Iterator[int]:
    directory = Path(tempfile.mkdtemp(prefix="tmsi-bench-knot-"))
    try:
        write_zones(directory)
        (directory / "db").mkdir()
        port = _free_port()
        (directory / "knot.conf").write_text(
            f"""server:
    rundir: "{directory}"
    listen: [ 127.0.0.1@{port}, {ADNS_HOST}@53 ]
log:
  - target: {directory}/knot.log
    any: warning
database:
    storage: "{directory}/db"
template:
  - id: default
    storage: "{directory}/zones"
    file: "%s.zone"
    semantic-checks: off
zone:
  - domain: {REVERSE_ZONE}
  - domain: {FORWARD_ZONE}
"""
        )
        subprocess.run(["/usr/sbin/knotd", "-c", str(directory / "knot.conf"), "-d"], check=True)
        pid = 0
        deadline = time.monotonic() + 20
        for zone in (REVERSE_ZONE, FORWARD_ZONE):
            while True:
                with contextlib.suppress(Exception):
                    pid = pid or int((directory / "knot.pid").read_text().split()[0])
                    reply = dns.query.udp(
                        dns.message.make_query(zone, "SOA"), "127.0.0.1", port=port, timeout=0.5
                    )
                    if reply.answer:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"knot did not load {zone}; see {directory}/knot.log")
                time.sleep(0.05)
        try:
            yield port
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.05)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_adnshost(workdir: Path) -> tuple[float, int]:
    """All 65,536 ``-i`` look-ups, ADNS_CHUNK per adnshost process, one process after another."""
    chunks = []
    for start in range(0, 65536, ADNS_CHUNK):
        chunks.append(
            "".join(f"-i198.18.{i >> 8}.{i & 255}\n" for i in range(start, start + ADNS_CHUNK)).encode()
        )
    ok = 0
    started = time.perf_counter()
    for chunk in chunks:
        out = subprocess.run(
            ["adnshost", "--config", f"nameserver {ADNS_HOST}", "-a", "-f"],
            input=chunk,
            capture_output=True,
            check=False,
        ).stdout
        ok += out.count(b" PTR ")
    elapsed = time.perf_counter() - started
    del workdir
    return elapsed, ok


def run_fcrdns(port: int, in_flight: int) -> tuple[float, int]:
    resolver = DnsResolver(
        [f"127.0.0.1:{port}"], timeout=1.0, retries=2, max_in_flight=in_flight, rate_limit=1e6
    )
    started = time.perf_counter()
    ptrs = resolver.resolve_many([(f"{i & 255}.{i >> 8}.18.198.in-addr.arpa", "PTR") for i in range(65536)])
    names = [a.records[0].value if a.records else "" for a in ptrs]
    forward = resolver.resolve_many([(name or "missing.invalid", "A") for name in names])
    ok = sum(
        1 for i, a in enumerate(forward) if a.records and a.records[0].value == f"198.18.{i >> 8}.{i & 255}"
    )
    return time.perf_counter() - started, ok


def run_verify(port: int, in_flight: int, workers: int) -> tuple[float, int, int]:
    resolver = DnsResolver(
        [f"127.0.0.1:{port}"], timeout=1.0, retries=2, max_in_flight=in_flight, rate_limit=1e6
    )
    started = time.perf_counter()
    summary = verify_network(resolver, NETWORK, keep_passing=False, workers=workers)
    elapsed = time.perf_counter() - started
    return elapsed, summary.passed, summary.failed + summary.unverifiable


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=150)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="process counts to try")
    parser.add_argument("--append-readme", action="store_true")
    args = parser.parse_args()
    have_adns = shutil.which("adnshost") is not None
    # client -> [(ok, seconds, not_ok)], the clients interleaved run by run so that load hits all alike
    results: dict[str, list[tuple[int, float, int]]] = {}
    loads: list[float] = []
    with knot() as port, tempfile.TemporaryDirectory() as tmp:
        for _run in range(args.runs):
            loads.append(os.getloadavg()[0])
            if have_adns:
                seconds, ok = run_adnshost(Path(tmp))
                results.setdefault(f"adnshost -i, {ADNS_CHUNK} per process", []).append(
                    (ok, seconds, 65536 - ok)
                )
            seconds, ok = run_fcrdns(port, args.in_flight)
            label = f"tmsi engine, FCrDNS only, {args.in_flight} in flight"
            results.setdefault(label, []).append((ok, seconds, 65536 - ok))
            for workers in args.workers:
                seconds, passed, other = run_verify(port, args.in_flight, workers)
                label = f"tmsi verify_network (full), {workers} process(es)"
                results.setdefault(label, []).append((passed, seconds, other))
    table = render(results, args.runs)
    print(table)
    print(f"load average (1 min) at the start of each run: {', '.join(f'{x:.1f}' for x in loads)}")
    if args.append_readme:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        block = (
            f"\n### run of {stamp} (`--runs {args.runs}`; 1-min load average at each run's start: "
            f"{', '.join(f'{x:.1f}' for x in loads)}; 2 cores shared with the team)\n\n{table}\n"
        )
        append_to_section(ROOT / "README.md", block)
    return 0


def render(results: dict[str, list[tuple[int, float, int]]], runs: int) -> str:
    """One row per client: best and median time of the runs, addresses/s of the best, ratio to adnshost."""
    adns = next((v for k, v in results.items() if k.startswith("adnshost")), [])
    best_adns = max((ok / s for ok, s, _n in adns), default=0.0)
    lines = [
        f"| client (65,536 addresses, {runs} runs) | OK (all runs) | not OK | best s | median s "
        "| addresses/s (best) | vs adnshost (best/best) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, items in results.items():
        times = sorted(s for _ok, s, _n in items)
        best = times[0]
        median = times[len(times) // 2]
        ok = min(o for o, _s, _n in items)
        not_ok = max(n for _o, _s, n in items)
        rate = 65536 / best
        ratio = f"{rate / best_adns:.0%}" if best_adns else "n/a"
        lines.append(f"| {name} | {ok} | {not_ok} | {best:.2f} | {median:.2f} | {rate:,.0f} | {ratio} |")
    return "\n".join(lines)


SECTION = "## rDNS range verification (`bench/rdns_range.py`)"
SECTION_TEXT = f"""{SECTION}

What: verify 198.18.0.0/16 (65,536 addresses; RFC 2544 benchmarking range, loopback only, our own zone
data) against a local Knot: PTR + forward A for every address. Yardstick in the same run: Debian's
`adnshost -i` (checked PTR look-ups = PTR + A), 128 look-ups per process, processes one after another,
through a second Knot listener on 127.0.0.2@53. "FCrDNS only" is the tmsi resolver engine doing the
same work as adnshost; "verify_network" is the whole verification (also classifies every name, groups
and summarizes), with 1 or 2 processes (`TMSI_DNS_WORKERS`). Targets: >= 50% of adnshost's rate, a /16
in <= 10 s. Numbers move with the machine's load (the whole team shares 2 cores): compare rows of one run.
"""


def append_to_section(path: Path, block: str) -> None:
    """Add ``block`` at the end of this benchmark's section (created on first use), before the next one."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if SECTION not in text:
        text = text.rstrip("\n") + "\n\n" + SECTION_TEXT
    start = text.index(SECTION)
    following = text.find("\n## ", start + len(SECTION))
    end = len(text) if following < 0 else following
    text = text[:end].rstrip("\n") + "\n" + block + text[end:]
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
