"""``python -m bench`` lists the benchmarks; ``python -m bench NAME [ARGS...]`` runs one (a table)."""

from __future__ import annotations

import runpy
import sys

BENCHMARKS = {
    "listings": "import 1,000,000 listings and time 10,000 look-ups (SQLite and PostgreSQL)",
    "rdns_classifier": "classifier precision/recall on the labelled set, names/s",
    "rdns_range": "verify a /16 against a local Knot, with adnshost as the yardstick",
    "ingest": "10,000 mixed messages from Dovecot end to end (SQLite and PostgreSQL)",
    "authority": "authority evaluation of 10,000 DKIM-signed requests, warm DNS cache",
    "export_lookup": "zone export of 1,000,000 listings; public lookup vs rbldnsd throughput",
    "ui": "queue and case pages under 20 clients with 100,000 cases (PostgreSQL)",
    "sustained": "mail through Dovecot plus UI clients with two workers (PostgreSQL + Redis)",
    "icount": "Python instructions per case/queue page under valgrind (needs bench.ui --keep's data)",
}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        print("usage: python -m bench NAME [ARGS...]   (results and commands: bench/README.md)\n")
        for name, what in BENCHMARKS.items():
            print(f"  {name:16} {what}")
        return 0 if len(sys.argv) < 2 else 2
    name = sys.argv.pop(1)
    sys.argv[0] = f"bench.{name}"
    runpy.run_module(f"bench.{name}", run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
