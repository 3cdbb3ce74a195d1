"""Free loopback ports and process bookkeeping shared by the service fixtures."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

LOOPBACKS = ("127.0.0.1", "::1")


def _bindable(port: int) -> bool:
    for host in LOOPBACKS:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            try:
                with socket.socket(family, kind) as sock:
                    sock.bind((host, port))
            except OSError as exc:
                # no IPv6 on this host at all: only IPv4 has to be free
                if family == socket.AF_INET6 and exc.errno in (97, 99):
                    continue
                return False
    return True


_handed_out: set[int] = set()


def free_port() -> int:
    """A random high port that is free for TCP and UDP on 127.0.0.1 and ::1 (never the same twice)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out and port >= 10000 and _bindable(port):
            _handed_out.add(port)
            return port
    raise RuntimeError("no free loopback port found")


def start_daemon(args: list[str], log: Path, timeout: float = 30.0) -> None:
    """Run a self-daemonizing command. Its output goes to ``log``, never to a pipe: the daemon
    inherits the pipe and keeps it open, so ``capture_output`` would wait for it forever."""
    with open(log, "ab") as out:
        result = subprocess.run(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
        )
    if result.returncode != 0:
        raise RuntimeError(f"{args[0]} exited {result.returncode}: {log.read_text(errors='replace')[-2000:]}")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (PID 1 here may not reap daemons)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            state = fh.read().rsplit(")", 1)[-1].split()[0]
        if state in ("Z", "X"):
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            return False
    return True


def read_pid(pidfile: Path, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            return int(pidfile.read_text().split()[0])
        time.sleep(0.02)
    raise RuntimeError(f"pid file {pidfile} did not appear")


def signal_pid(pid: int, sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def wait_gone(pids: Iterable[int], timeout: float = 10.0) -> None:
    """Wait until every pid has exited; SIGKILL what is left after ``timeout``."""
    pending = set(pids)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            if not pid_alive(pid):
                pending.discard(pid)
        if pending:
            time.sleep(0.05)
    for pid in pending:
        signal_pid(pid, signal.SIGKILL)


class Reaper:
    """Collects pids that were sent SIGTERM so that the session waits for all of them at once
    (each daemon takes 1-3 s to exit; one after another would take ~10 s)."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.cleanups: list[Callable[[], object]] = []

    def terminate(self, pid: int) -> None:
        signal_pid(pid)
        self.pids.append(pid)

    def defer(self, cleanup: Callable[[], object]) -> None:
        self.cleanups.append(cleanup)

    def wait(self, timeout: float = 10.0) -> None:
        wait_gone(self.pids, timeout)
        self.pids.clear()
        while self.cleanups:
            with contextlib.suppress(Exception):
                self.cleanups.pop()()


def stop_service(reaper: Reaper | None, pid: int, directory: Path | None) -> None:
    """SIGTERM ``pid`` and remove ``directory``: now, or when the reaper waits for everything."""
    own = reaper is None
    reaper = reaper or Reaper()
    if pid:
        reaper.terminate(pid)
    if directory is not None:
        reaper.defer(lambda: shutil.rmtree(directory, ignore_errors=True))
    if own:
        reaper.wait()


def wait_tcp(host: str, port: int, timeout: float = 10.0, expect: bytes = b"") -> None:
    """Poll until ``host:port`` accepts TCP (and, if given, its greeting starts with ``expect``)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1) as sock:
                if not expect:
                    return
                sock.settimeout(1)
                if sock.recv(len(expect)).startswith(expect):
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{host}:{port} not ready after {timeout}s ({last})")
