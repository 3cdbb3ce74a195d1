"""Listings store: import 1,000,000 listings, then time 10,000 random look-ups through the Python API.

Synthetic IPv4 data lives in 240.0.0.0/4 (reserved, never routed) and IPv6 in 2001:db8::/32
(documentation), so no real network is named. Usage:

    python -m bench.listings [--db sqlite|postgresql|both] [--count 1000000] [--lookups 10000]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import text

from tmsi.cli.db import upgrade
from tmsi.db import make_engine, make_sessionmaker, unit_of_work
from tmsi.domain.listfile import Entry
from tmsi.domain.networks import IPNetwork
from tmsi.services.listings import find_overlapping, find_overlapping_rows, import_entries

PG_BASE = os.environ.get("TMSI_BENCH_PG_BASE", "postgresql+psycopg://postgres@127.0.0.1:5432")


def synthetic_networks(count: int, v6_count: int, seed: int = 7) -> list[IPNetwork]:
    rng = random.Random(seed)
    v4: list[IPNetwork] = []
    base = int(ipaddress.IPv4Address("240.0.0.0"))
    # Walk the reserved /4 in /24 blocks; each block holds one listing of /24../32.
    blocks = rng.sample(range(1 << 20), count - v6_count)
    for block in blocks:
        plen = rng.choice((24, 25, 26, 27, 28, 29, 30, 31, 32, 32, 32, 32))
        offset = rng.randrange(1 << (plen - 24)) << (32 - plen)
        v4.append(ipaddress.IPv4Network((base + (block << 8) + offset, plen)))
    v6: list[IPNetwork] = []
    base6 = int(ipaddress.IPv6Address("2001:db8::"))
    for block in rng.sample(range(1 << 32), v6_count):
        plen = rng.choice((48, 56, 64))
        v6.append(ipaddress.IPv6Network((base6 + (block << 64) & ~((1 << (128 - plen)) - 1), plen)))
    return v4 + v6


def entries(nets: list[IPNetwork]) -> Iterator[Entry]:
    for i, net in enumerate(nets, 1):
        yield Entry(i, net, "generic rDNS", None)


def run(url: str, count: int, lookups: int) -> dict[str, float | str]:
    upgrade(url)
    engine = make_engine(url)
    factory = make_sessionmaker(engine)
    nets = synthetic_networks(count, v6_count=count // 10)
    started = time.perf_counter()
    with unit_of_work(factory) as session:
        report = import_entries(session, entries(nets))
    import_s = time.perf_counter() - started
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("ANALYZE listings"))
    rng = random.Random(11)
    queries: list[IPNetwork] = []
    for _ in range(lookups):
        net = rng.choice(nets)
        if rng.random() < 0.5:  # an address inside a listing
            queries.append(ipaddress.ip_network(net.network_address + rng.randrange(net.num_addresses)))
        else:  # a random address, usually not listed
            queries.append(ipaddress.ip_network(ipaddress.IPv4Address(rng.randrange(0xF0000000, 0xFFFFFFFF))))

    def timed(finder: Any) -> tuple[list[float], int]:
        timings: list[float] = []
        hits = 0
        with factory() as session:
            for q in queries:
                t0 = time.perf_counter()
                hits += bool(finder(session, q))
                timings.append((time.perf_counter() - t0) * 1000)
        timings.sort()
        return timings, hits

    rows_t, hits = timed(find_overlapping_rows)
    orm_t, _ = timed(find_overlapping)
    engine.dispose()
    return {
        "database": engine.dialect.name,
        "listings": report.added,
        "import_s": import_s,
        "lookup_median_ms": statistics.median(rows_t),
        "lookup_p99_ms": rows_t[int(len(rows_t) * 0.99) - 1],
        "orm_median_ms": statistics.median(orm_t),
        "orm_p99_ms": orm_t[int(len(orm_t) * 0.99) - 1],
        "hit_rate": hits / len(queries),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=10_000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.db in ("sqlite", "both"):
            rows.append(run(f"sqlite:///{tmp}/bench.db", args.count, args.lookups))
        if args.db in ("postgresql", "both"):
            name = f"tmsi_bench_{uuid.uuid4().hex[:8]}"
            admin = make_engine(f"{PG_BASE}/postgres", isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            try:
                rows.append(run(f"{PG_BASE}/{name}", args.count, args.lookups))
            finally:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()
    print(
        f"\nListings store: {args.count:,} listings ({args.count // 10:,} IPv6), {args.lookups:,} look-ups\n"
    )
    print(
        "| database | listings imported | import (s) | look-up median (ms) | look-up p99 (ms) "
        "| as ORM objects: median / p99 (ms) | hit rate |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['database']} | {r['listings']:,} | {r['import_s']:.1f} | {r['lookup_median_ms']:.3f} "
            f"| {r['lookup_p99_ms']:.3f} | {r['orm_median_ms']:.3f} / {r['orm_p99_ms']:.3f} "
            f"| {r['hit_rate']:.2f} |"
        )


if __name__ == "__main__":
    main()
