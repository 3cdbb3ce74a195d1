"""A throw-away Dovecot IMAP server (plain/STARTTLS and implicit TLS) on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.services.ports import Reaper, free_port, read_pid, start_daemon, stop_service, wait_tcp

DOVECOT = "/usr/sbin/dovecot"

CONFIG = """\
protocols = imap
listen = 127.0.0.1, ::1
base_dir = {d}/run
state_dir = {d}/state
instance_name = tmsi-imap-{port}
log_path = {d}/dovecot.log
ssl = yes
ssl_cert = <{d}/cert.pem
ssl_key = <{d}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={d}/mail/%u
}}
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = {tls_port}
    ssl = yes
  }}
}}
"""


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """cert.pem/key.pem for CN=localhost with SAN localhost, 127.0.0.1 and ::1."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "7",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    os.chmod(key, 0o644)
    return cert, key


@dataclass
class Dovecot:
    directory: Path
    host: str
    port: int
    tls_port: int
    user: str
    password: str
    ca_file: str
    pid: int = 0
    users: dict[str, str] = field(default_factory=dict)

    @property
    def log_file(self) -> Path:
        return self.directory / "dovecot.log"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def add_user(self, user: str, password: str = "secret", *, wait: float | None = 20.0) -> tuple[str, str]:
        """Another mailbox (isolates a test's folders), returned once it can log in (``wait=None``: at
        once, for a server not started yet).

        Dovecot re-reads the passwd-file when it changes, but its auth process can take seconds to notice:
        a login straight after writing it fails now and then ("Authentication failed").
        """
        self.users[user] = password
        self._write_users()
        if wait is None:
            return user, password
        deadline = time.monotonic() + wait
        while True:
            try:
                self.client(user, password).logout()
                return user, password
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _write_users(self) -> None:
        path = self.directory / "users"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in self.users.items()))
        os.chmod(tmp, 0o644)
        # a new whole-second mtime so dovecot notices the change even within the same second
        stamp = int(time.time()) + 1
        if path.exists():
            stamp = max(stamp, int(path.stat().st_mtime) + 1)
        os.utime(tmp, (stamp, stamp))
        os.replace(tmp, path)

    def client(self, user: str | None = None, password: str | None = None, tls: str = "none") -> Any:
        """A logged-in ``imapclient.IMAPClient``; ``tls`` is ``none``, ``starttls`` or ``implicit``."""
        from imapclient import IMAPClient

        if tls == "implicit":
            conn = IMAPClient(
                "localhost", port=self.tls_port, ssl=True, ssl_context=self.ssl_context(), timeout=10
            )
        else:
            conn = IMAPClient(self.host, port=self.port, ssl=False, timeout=10)
            if tls == "starttls":
                conn.starttls(self.ssl_context())
        conn.login(user or self.user, password or self.users.get(user or self.user, self.password))
        return conn

    def append(self, folder: str, raw: bytes, user: str | None = None) -> int | None:
        """APPEND a raw message (creating the folder if needed); returns its UID when the server says it."""
        with self.client(user) as conn:  # logs out on exit
            if not conn.folder_exists(folder):
                conn.create_folder(folder)
            response = conn.append(folder, raw)
        text = response.decode() if isinstance(response, bytes) else str(response)
        # "[APPENDUID <validity> <uid>] Append completed."
        if "APPENDUID" in text:
            return int(text.split("APPENDUID", 1)[1].split("]", 1)[0].split()[1])
        return None


def available() -> bool:
    return os.path.exists(DOVECOT) and shutil.which("openssl") is not None


@contextlib.contextmanager
def dovecot_server(reaper: Reaper | None = None) -> Iterator[Dovecot]:
    """Start Dovecot in a fresh temp dir; stop it (SIGTERM via its pid file) on exit."""
    directory = Path(tempfile.mkdtemp(prefix="tmsi-dovecot-"))
    # the auth/mail processes run as `dovecot` and must traverse the dir
    directory.chmod(0o755)
    for sub in ("run", "state", "mail"):
        (directory / sub).mkdir()
    shutil.chown(directory / "mail", "dovecot", "dovecot")
    cert, _ = make_self_signed_cert(directory)
    port, tls_port = free_port(), free_port()
    (directory / "dovecot.conf").write_text(CONFIG.format(d=directory, port=port, tls_port=tls_port))
    server = Dovecot(directory, "127.0.0.1", port, tls_port, "dul@example.test", "secret", str(cert))
    server.add_user(server.user, server.password, wait=None)
    try:
        start_daemon([DOVECOT, "-c", str(directory / "dovecot.conf")], directory / "start.log")
        server.pid = read_pid(directory / "run" / "master.pid")
        wait_tcp("127.0.0.1", port, expect=b"* OK")
        wait_tcp("127.0.0.1", tls_port)
        yield server
    finally:
        stop_service(reaper, server.pid, directory)
