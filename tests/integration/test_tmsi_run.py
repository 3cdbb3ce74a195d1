"""``tmsi run`` from an empty directory: migrates, loads the offline demo, serves pages, signs in, runs
the worker (sample requests ingested, verified, one re-verified after the demo ISP fixes it), and stops
cleanly on SIGINT with exit status 0."""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.services.ports import free_port
from tmsi.cli.run import gunicorn_command

pytestmark = pytest.mark.integration
TMSI = str(Path(sys.executable).with_name("tmsi"))


@dataclass
class Running:
    proc: subprocess.Popen[str]
    url: str
    directory: Path
    output: list[str]

    def text(self) -> str:
        return "".join(self.output)

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.directory / "instance" / "tmsi.db", timeout=10)


def _reader(proc: subprocess.Popen[str], sink: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        sink.append(line)


@pytest.fixture
def tmsi_run(tmp_path: Path) -> Iterator[Running]:
    import threading

    env = {k: v for k, v in os.environ.items() if not k.startswith("TMSI_")}
    port = free_port()
    proc = subprocess.Popen(
        [TMSI, "run", "--port", str(port), "--web-workers", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    threading.Thread(target=_reader, args=(proc, output), daemon=True).start()
    running = Running(proc, f"http://127.0.0.1:{port}", tmp_path, output)
    try:
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(running: Running, timeout: float = 60) -> dict[str, Any]:
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert running.proc.poll() is None, running.text()
        try:
            with urllib.request.urlopen(running.url + "/readyz", timeout=3) as resp:
                if resp.status == 200:
                    body: dict[str, Any] = json.load(resp)
                    return body
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError("never ready:\n" + running.text())


def _wait_banner(running: Running, timeout: float = 30) -> None:
    """``tmsi run`` prints its banner once it saw the web answer itself: a moment after /readyz does."""
    deadline = time.monotonic() + timeout
    while "Press Ctrl-C to stop." not in running.text():
        assert time.monotonic() < deadline, running.text()
        time.sleep(0.1)


def _sign_in(running: Running) -> tuple[urllib.request.OpenerDirector, str]:
    match = re.search(r"Sign in as (\S+) with password: (\S+)", running.text())
    assert match, running.text()
    email, password = match.groups()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    form = opener.open(running.url + "/login", timeout=10).read().decode()
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token, form
    data = urllib.parse.urlencode(
        {"csrf_token": token.group(1), "email": email, "password": password, "next": ""}
    )
    page = opener.open(running.url + "/login", data=data.encode(), timeout=10)
    return opener, page.read().decode()


def _stop(running: Running) -> int:
    running.proc.send_signal(signal.SIGINT)
    return running.proc.wait(timeout=40)


def test_run_from_an_empty_directory_serves_signs_in_and_stops_cleanly(tmsi_run: Running) -> None:
    ready = _wait_ready(tmsi_run)
    _wait_banner(tmsi_run)
    assert set(ready["checks"]) >= {"database", "mailbox", "dns_resolver"}
    assert f"tmsi is running at {tmsi_run.url}/" in tmsi_run.text()
    opener, page = _sign_in(tmsi_run)
    assert "demo@example.test" in page and "Unknown e-mail address" not in page
    # the sample requests are ingested by the worker and show up in the queue
    deadline = time.monotonic() + 30
    queue = ""
    while time.monotonic() < deadline and "TMSI-" not in queue:
        queue = opener.open(tmsi_run.url + "/cases", timeout=10).read().decode()
        time.sleep(1)
    assert "TMSI-" in queue
    metrics = urllib.request.urlopen(tmsi_run.url + "/metrics", timeout=10).read().decode()
    assert 'tmsi_messages_ingested_total{status="processed"}' in metrics
    assert _stop(tmsi_run) == 0
    assert "tmsi: stopped" in tmsi_run.text()
    assert "Traceback" not in tmsi_run.text()
    with pytest.raises(OSError):
        urllib.request.urlopen(tmsi_run.url + "/healthz", timeout=2)


@pytest.mark.slow
def test_demo_shows_cases_verified_failing_and_reverified(tmsi_run: Running) -> None:
    _wait_ready(tmsi_run)
    started = time.monotonic()
    seen: dict[str, set[str]] = {}
    passed_after_fix = None
    while time.monotonic() - started < 120:
        with tmsi_run.db() as db:
            for network, status in db.execute("SELECT network, status FROM case_targets"):
                seen.setdefault(network, set()).add(status)
        if "pass" in seen.get("198.51.100.77/32", set()):
            passed_after_fix = time.monotonic() - started
            break
        time.sleep(2)
    assert "pass" in seen.get("192.0.2.25/32", set()) and "fail" not in seen["192.0.2.25/32"], seen
    assert "fail" in seen.get("203.0.113.200/32", set()), seen
    assert {"fail", "pass"} <= seen.get("198.51.100.77/32", set()), (seen, tmsi_run.text()[-3000:])
    assert passed_after_fix is not None and passed_after_fix < 100
    with tmsi_run.db() as db:
        runs = db.execute(
            "SELECT r.result FROM verification_runs r JOIN case_targets t ON t.id = r.target_id "
            "WHERE t.network = '198.51.100.77/32' AND r.status = 'done' ORDER BY r.id"
        ).fetchall()
    assert runs[0][0] == "fail" and runs[-1][0] == "pass"
    assert _stop(tmsi_run) == 0


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["run", "--port", "1"], {"TMSI_HUEY_STORAGE": "bogus"}, "TMSI_HUEY_STORAGE"),
        (["worker"], {"TMSI_DNS_TIMEOUT": "-1"}, "TMSI_DNS_TIMEOUT"),
        (["run", "--port", "1"], {"TMSI_JOB_INTERVALS": "send_outbox=soon"}, "TMSI_JOB_INTERVALS"),
        (["worker"], {"TMSI_HUEY_STORAGE": "redis"}, "TMSI_REDIS_URL"),
        ([], {"TMSI_RETENTION_DAYS": "-5"}, "TMSI_RETENTION_DAYS"),
    ],
)
def test_configuration_errors_name_the_variable_and_exit_2(
    tmp_path: Path, argv: list[str], env: dict[str, str], expected: str
) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TMSI_")}
    # no argv: gunicorn itself, through our config module
    command = [TMSI, *argv] if argv else gunicorn_command(f"127.0.0.1:{free_port()}", "--no-control-socket")
    done = subprocess.run(command, cwd=tmp_path, env=base | env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr + done.stdout


def test_killing_tmsi_run_takes_its_children_down(tmsi_run: Running) -> None:
    _wait_ready(tmsi_run)
    tmsi_run.proc.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel tells the children
    tmsi_run.proc.wait(timeout=10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(tmsi_run.url + "/healthz", timeout=1)
        except OSError:
            break
        time.sleep(0.3)
    else:
        raise AssertionError("the web server outlived tmsi run")
