"""Python instructions per page, counted by valgrind: the number for the code on a machine whose speed moves.

Latencies and CPU milliseconds here follow the machine (its speed reference varied 2x within minutes);
callgrind counts instructions, whatever else runs. This runs the app in-process (Flask test client) on
the database ``bench.ui --keep`` left, under ``valgrind --tool=callgrind`` twice: once signing in and
warming up, once also serving N pages; the difference over N is the app's Python instructions per page
(the PostgreSQL backend is another process and is not counted). Needs valgrind (Debian: ``apt-get install
valgrind``); takes a few minutes per page kind. Usage:

    python -m bench.icount [--db tmsi_bench_ui] [--pages case,queue] [--requests 200]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import uuid

from bench.ui import PASSWORD, PG_BASE, ROOT

PAGES = {"case": "a random case page", "queue": "the queue page, default filter, from its caches"}


def child(db: str, page: str, requests: int) -> None:
    """Sign in, warm up, then serve ``requests`` pages (run under valgrind by :func:`count`)."""
    os.environ.update(
        {
            "TMSI_DATABASE_URL": f"{PG_BASE}/{db}",
            "TMSI_SECRET_KEY": uuid.uuid4().hex,
            "TMSI_ENVIRONMENT": "production",
            "TMSI_HUEY_STORAGE": "memory",
            "TMSI_INSTANCE_PATH": str(ROOT / "instance" / "bench-ui"),
            "TMSI_LOG_LEVEL": "WARNING",
        }
    )
    from tmsi import create_app

    app = create_app()
    # Under valgrind a page takes ~50 times longer: the queue's rows and counts caches (2 s and 5 s) would
    # expire between pages, so they are kept for the run; "queue" counts a page served from them.
    app.config["TMSI_QUEUE_CACHE_TTL"] = 3600.0
    app.config["TMSI_QUEUE_COUNTS_TTL"] = 3600.0
    client = app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").get_data(as_text=True))
    assert token, "no CSRF token on /login"
    form = {"email": "bench@example.test", "password": PASSWORD, "csrf_token": token.group(1)}
    assert client.post("/login", data=form).status_code == 302, "sign-in failed: load with bench.ui --keep"
    rng = random.Random(5)
    year = int(re.search(r"TMSI-(\d{4})-", client.get("/cases").get_data(as_text=True)).group(1))  # type: ignore[union-attr]
    paths = [
        f"/cases/TMSI-{year}-{rng.randrange(1, 100_001):06d}" if page == "case" else "/cases"
        for _ in range(50 + requests)
    ]
    for path in paths:
        assert client.get(path).status_code == 200, path


def count(db: str, page: str, requests: int) -> int:
    """Instructions of one child run (valgrind's total)."""
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "bench.icount",
            "--child",
            page,
            "--db",
            db,
            "--requests",
            str(requests),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", default="tmsi_bench_ui")
    parser.add_argument("--pages", default="case,queue", help=f"comma-separated, of: {', '.join(PAGES)}")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--child", choices=list(PAGES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.db, args.child, args.requests)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    print(f"| page ({args.requests} requests, in-process) | Python instructions per page |")
    print("|---|---|")
    for page in args.pages.split(","):
        base, loaded = count(args.db, page, 0), count(args.db, page, args.requests)
        print(f"| {PAGES[page]} | {(loaded - base) / args.requests / 1e6:.2f} M |", flush=True)


if __name__ == "__main__":
    main()
