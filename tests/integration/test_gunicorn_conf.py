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
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.services.ports import free_port
from tmsi.cli.run import gunicorn_command

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


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


def _command(bind: str, workers: int) -> list[str]:
    return gunicorn_command(bind, "--workers", str(workers))


def _worker_pids(master: int) -> set[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {int(pid) for pid in children}


@contextmanager
def _gunicorn(tmp_path: Path, bind: str, workers: int, **extra: str) -> Iterator[subprocess.Popen[bytes]]:
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("ab") as log:
        server = subprocess.Popen(
            _command(bind, workers), cwd=ROOT, env=_environment(tmp_path, **extra), stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 60
        while len(_worker_pids(server.pid)) < workers or not _answers(bind):
            assert server.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.1)
        yield server
    finally:
        server.terminate()
        server.wait(30)


def _connect(bind: str) -> socket.socket:
    if bind.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(bind.removeprefix("unix:"))
        return sock
    host, port = bind.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def _get(sock: socket.socket, path: str = "/healthz") -> http.client.HTTPResponse:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: tmsi.test\r\n\r\n".encode())
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    return response


def _answers(bind: str) -> bool:
    try:
        with _connect(bind) as sock:
            return _get(sock).status == 200
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
    port = free_port()
    with _gunicorn(tmp_path, f"127.0.0.1:{port}", workers=2) as server:
        workers = _worker_pids(server.pid)
        connections = [_connect(f"127.0.0.1:{port}") for _ in range(20)]
        answers = [_get(sock) for sock in connections]
        owners = _connection_owners(port)
        for sock in connections:
            sock.close()
    assert {(answer.status, answer.getheader("Connection")) for answer in answers} == {(200, "keep-alive")}
    assert set(owners) == workers, owners
    assert sum(owners.values()) == 20


def test_a_connection_is_closed_after_the_configured_number_of_requests(tmp_path: Path) -> None:
    port = free_port()
    answers = []
    with (
        _gunicorn(tmp_path, f"127.0.0.1:{port}", workers=1, TMSI_KEEPALIVE_REQUESTS="3"),
        _connect(f"127.0.0.1:{port}") as sock,
    ):
        for _ in range(3):
            response = _get(sock)
            answers.append((response.status, response.getheader("Connection")))
        closed_by_server = sock.recv(1) == b""
    assert answers == [(200, "keep-alive"), (200, "keep-alive"), (200, "close")]
    assert closed_by_server


def test_an_address_in_use_is_refused_at_start(tmp_path: Path) -> None:
    port = free_port()
    with _gunicorn(tmp_path, f"127.0.0.1:{port}", workers=1):
        second = subprocess.run(
            _command(f"127.0.0.1:{port}", 1),
            cwd=ROOT,
            env=_environment(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert _answers(f"127.0.0.1:{port}")
    assert second.returncode == 2
    assert f"tmsi: cannot listen on 127.0.0.1:{port}: Address already in use\n" in second.stderr


def test_on_a_unix_socket_all_workers_share_one_listening_socket(tmp_path: Path) -> None:
    path = tmp_path / "tmsi.sock"
    with _gunicorn(tmp_path, f"unix:{path}", workers=2):
        answers = []
        for _ in range(10):
            with _connect(f"unix:{path}") as sock:
                answers.append(_get(sock).status)
        listening = subprocess.run(
            ["ss", "-xlH", "src", str(path)], capture_output=True, text=True, check=True
        ).stdout.splitlines()
    assert answers == [200] * 10
    # One socket, inherited by both workers; per-worker sockets would each replace the file before.
    assert len(listening) == 1, listening


def test_sockets_from_systemd_socket_activation_are_used_as_given(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    fd = listener.fileno()

    def as_fd_3() -> None:  # sd_listen_fds(3): the first passed socket is fd 3
        os.dup2(fd, 3)

    # LISTEN_PID must be gunicorn's own pid: the shell sets it and then becomes gunicorn.
    script = 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"'
    command = ["sh", "-c", script, "sh", *_command(f"127.0.0.1:{port}", 2)]
    with (tmp_path / "gunicorn.log").open("ab") as log:
        server = subprocess.Popen(
            command,
            cwd=ROOT,
            env=_environment(tmp_path),
            stdout=log,
            stderr=log,
            preexec_fn=as_fd_3,
            close_fds=False,  # else fd 3 is closed again after preexec_fn
        )
    try:
        deadline = time.monotonic() + 60
        while len(_worker_pids(server.pid)) < 2 or not _answers(f"127.0.0.1:{port}"):
            assert server.poll() is None, (tmp_path / "gunicorn.log").read_text()
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.1)
        listening = subprocess.run(
            ["ss", "-tlnH", f"( sport = :{port} )"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
    finally:
        server.terminate()
        server.wait(30)
        listener.close()
    assert len(listening) == 1, listening  # the given socket only: no worker bound one of its own
