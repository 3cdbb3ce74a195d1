"""gunicorn with tmsi's settings (``tmsi.gunicorn_conf``), started for real on loopback.

Keep-alive connections are spread over the workers (each listens on its own SO_REUSEPORT socket), a
connection is closed after ``TMSI_KEEPALIVE_REQUESTS`` requests so that a skewed spread does not last,
and an address already in use is refused at start instead of being shared.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TMSI_")}
    env |= {
        "TMSI_DATABASE_URL": f"sqlite:///{tmp_path / 'gunicorn.db'}",
        "TMSI_SECRET_KEY": "gunicorn-test-secret",
        "TMSI_INSTANCE_PATH": str(tmp_path / "instance"),
        "TMSI_HUEY_STORAGE": "memory",
        **extra,
    }
    return env


def _command(port: int, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "python:tmsi.gunicorn_conf",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "tmsi.wsgi:app",
    ]


def _worker_pids(master: int) -> set[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {int(pid) for pid in children}


@contextmanager
def _gunicorn(tmp_path: Path, port: int, workers: int, **extra: str) -> Iterator[subprocess.Popen[bytes]]:
    log = (tmp_path / f"gunicorn-{port}.log").open("wb")
    server = subprocess.Popen(
        _command(port, workers), cwd=ROOT, env=_environment(tmp_path, **extra), stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 60
        while len(_worker_pids(server.pid)) < workers or not _answers(port):
            assert server.poll() is None, (tmp_path / f"gunicorn-{port}.log").read_text()
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.1)
        yield server
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def _answers(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/healthz")
        ok = connection.getresponse().status == 200
        connection.close()
        return ok
    except OSError:
        return False


def _connection_owners(port: int) -> Counter[int]:
    """How many established connections to ``port`` each process holds (from ``ss``)."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return Counter(int(pid) for pid in re.findall(r"pid=(\d+)", out))


def test_keep_alive_connections_are_spread_over_the_workers(tmp_path: Path) -> None:
    port = _free_port()
    with _gunicorn(tmp_path, port, workers=2) as server:
        workers = _worker_pids(server.pid)
        connections = []
        for _ in range(20):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            assert response.status == 200 and response.getheader("Connection") != "close"
            connections.append(connection)
        owners = _connection_owners(port)
        for connection in connections:
            connection.close()
    assert set(owners) == workers, owners
    assert sum(owners.values()) == 20


def test_a_connection_is_closed_after_the_configured_number_of_requests(tmp_path: Path) -> None:
    port = _free_port()
    answers = []
    with (
        _gunicorn(tmp_path, port, workers=1, TMSI_KEEPALIVE_REQUESTS="3"),
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
    ):
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: tmsi.test\r\n\r\n")
            response = http.client.HTTPResponse(sock)
            response.begin()
            response.read()
            answers.append((response.status, response.getheader("Connection")))
        closed_by_server = sock.recv(1) == b""
    assert answers == [(200, "keep-alive"), (200, "keep-alive"), (200, "close")]
    assert closed_by_server


def test_an_address_in_use_is_refused_at_start(tmp_path: Path) -> None:
    port = _free_port()
    with _gunicorn(tmp_path, port, workers=1):
        second = subprocess.run(
            _command(port, 1),
            cwd=ROOT,
            env=_environment(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert _answers(port)
    assert second.returncode == 2
    assert f"tmsi: cannot listen on 127.0.0.1:{port}: Address already in use" in second.stderr
