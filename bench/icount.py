"""Python instructions per page, counted by valgrind: the number for the code on a machine whose speed moves.

Latencies and CPU milliseconds here follow the machine (its speed reference varied 2x within minutes);
callgrind counts instructions, whatever else runs. This runs the app in-process (Flask test client) on
the database ``bench.ui --keep`` left, under ``valgrind --tool=callgrind`` twice: once signing in and
warming up, once also serving N pages; the difference over N is the app's Python instructions per page
(the PostgreSQL backend is another process and is not counted). Needs valgrind (Debian: ``apt-get install
valgrind``); takes a few minutes per page kind. Usage:

    python -m bench.icount [--db tmsi_bench_ui] [--pages case,queue] [--requests 200] [--http]

``--http`` counts the case page's production path instead: one gunicorn worker (``tmsi.gunicorn_conf``:
gthread, its threads, the app's access log) under callgrind, serving the pages over HTTP to one
keep-alive client that keeps the sign-in cookie as wrk does. It adds gunicorn, the WSGI request and
response, and the session cookie as a client really sends it, which the test client does not show; it
still leaves out what 20 concurrent clients add (thread switches). About ten minutes.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.ui import (
    PASSWORD,
    PG_BASE,
    ROOT,
    Client,
    app_env,
    free_port,
    gunicorn_command,
    sign_in,
    wait_for_port,
)

PAGES = {"case": "a random case page", "queue": "the queue page, default filter, from its caches"}


def child(db: str, page: str, requests: int) -> None:
    """Sign in, warm up, then serve ``requests`` pages (run under valgrind by :func:`count`)."""
    os.environ.update(app_env(f"{PG_BASE}/{db}"), TMSI_LOG_LEVEL="WARNING")
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
    year = int(re.search(r"TMSI-(\d{4})-", client.get("/cases").get_data(as_text=True)).group(1))  # type: ignore[union-attr]
    for path in _paths(page, 50 + requests, year):
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


def _paths(page: str, count: int, year: int) -> list[str]:
    rng = random.Random(5)
    return [
        f"/cases/TMSI-{year}-{rng.randrange(1, 100_001):06d}" if page == "case" else "/cases"
        for _ in range(count)
    ]


def count_http(db: str, page: str, requests: int) -> int:
    """Instructions of one gunicorn worker that signed a client in and served it 50 + ``requests`` pages."""
    port = free_port()
    out = Path(tempfile.mkdtemp(prefix="tmsi-icount-"))
    env = dict(os.environ, **app_env(f"{PG_BASE}/{db}"))
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}/callgrind.%p",
        *gunicorn_command(port, "-w", "1", "--timeout", "900", "--graceful-timeout", "900"),
    ]
    log_path = out / "gunicorn.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_for_port(port, server, 600, log_path)
        # The port opens before the worker has imported the app (a minute or two under valgrind).
        ready = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
        ready.request("GET", "/healthz")
        assert ready.getresponse().status == 200
        ready.close()
        client = Client(port, sign_in(port))
        year = int(re.search(r"TMSI-(\d{4})-", client.request("GET", "/cases")[2]).group(1))  # type: ignore[union-attr]
        for path in _paths(page, 50 + requests, year):
            status = client.request("GET", path)[0]
            assert status == 200, (path, status)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(900)
    workers = [f for f in out.glob("callgrind.*") if f.name != f"callgrind.{server.pid}"]
    if len(workers) != 1:
        raise RuntimeError(f"expected one worker's callgrind file in {out}, found {workers}")
    found = re.search(r"^(?:totals|summary): (\d+)", workers[0].read_text(), re.M)
    if found is None:
        raise RuntimeError(f"no totals in {workers[0]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", default="tmsi_bench_ui")
    parser.add_argument("--pages", default="case,queue", help=f"comma-separated, of: {', '.join(PAGES)}")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--http", action="store_true", help="through one gunicorn worker, over HTTP")
    parser.add_argument("--child", choices=list(PAGES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.db, args.child, args.requests)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    where = "one gunicorn worker, over HTTP" if args.http else "in-process"
    print(f"| page ({args.requests} requests, {where}) | Python instructions per page |")
    print("|---|---|")
    measure = count_http if args.http else count
    if args.http and args.pages != "case":
        # The queue's caches (at most 2 s) would expire every few pages under valgrind.
        sys.exit("--http measures the case page only (--pages case)")
    for page in args.pages.split(","):
        base, loaded = measure(args.db, page, 0), measure(args.db, page, args.requests)
        print(f"| {PAGES[page]} | {(loaded - base) / args.requests / 1e6:.2f} M |", flush=True)


if __name__ == "__main__":
    main()
