"""rbldnsd serving a DNSBL zone from a data dir of ``*.ip4set``/``*.ip6trie`` files on a loopback port."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.services.ports import Reaper, free_port, read_pid, start_daemon, stop_service

RBLDNSD = "/usr/sbin/rbldnsd"
DATASET_SUFFIXES = {".ip4set": "ip4set", ".ip6trie": "ip6trie", ".ip4trie": "ip4trie", ".ip6tset": "ip6tset"}


def lookup_name(address: str, zone: str) -> str:
    """The DNSBL query name of ``address`` under ``zone`` (reversed octets / nibbles)."""
    ip = ipaddress.ip_address(address)
    return ip.reverse_pointer.rsplit(".in-addr.arpa" if ip.version == 4 else ".ip6.arpa", 1)[0] + "." + zone


def datasets_in(data_dir: Path) -> list[tuple[str, str]]:
    """(dataset type, file name) for every data file in ``data_dir`` that rbldnsd understands."""
    return sorted(
        (DATASET_SUFFIXES[p.suffix], p.name) for p in data_dir.iterdir() if p.suffix in DATASET_SUFFIXES
    )


@dataclass
class Rbldnsd:
    zone: str
    data_dir: Path
    host: str
    port: int
    run_dir: Path
    pid: int = 0
    datasets: list[tuple[str, str]] = field(default_factory=list)

    @property
    def nameserver(self) -> str:
        return f"{self.host}:{self.port}"

    def reload(self) -> None:
        """SIGHUP: rbldnsd re-stat()s its files and reloads those whose mtime/size changed."""
        os.kill(self.pid, signal.SIGHUP)

    def query(self, address: str, rdtype: str = "A") -> list[str] | None:
        """The answer texts for ``address``, or None for NXDOMAIN (not listed)."""
        import dns.message
        import dns.query
        import dns.rcode

        response = dns.query.udp(
            dns.message.make_query(lookup_name(address, self.zone), rdtype),
            self.host,
            port=self.port,
            timeout=2,
        )
        if response.rcode() == dns.rcode.NXDOMAIN:
            return None
        if response.rcode() != dns.rcode.NOERROR:
            raise RuntimeError(f"rbldnsd answered {dns.rcode.to_text(response.rcode())}")
        texts: list[str] = []
        for rrset in response.answer:
            for rdata in rrset:
                if rdtype == "TXT":
                    texts.append(b"".join(rdata.strings).decode())
                else:
                    texts.append(rdata.to_text())
        return texts

    def wait_for(self, address: str, expected: Any, rdtype: str = "A", timeout: float = 2.0) -> Any:
        """Poll until ``query(address)`` equals ``expected`` (a queued query may see the old data)."""
        deadline = time.monotonic() + timeout
        got = self.query(address, rdtype)
        while got != expected and time.monotonic() < deadline:
            time.sleep(0.02)
            got = self.query(address, rdtype)
        return got


def available() -> bool:
    return os.path.exists(RBLDNSD)


@contextlib.contextmanager
def rbldnsd_server(
    zone: str,
    data_dir: Path | str,
    datasets: Sequence[tuple[str, str]] | None = None,
    reaper: Reaper | None = None,
    check_interval: int = 1,
) -> Iterator[Rbldnsd]:
    """Start rbldnsd for ``zone`` over the data files in ``data_dir`` (default: every known dataset file)."""
    data_dir = Path(data_dir).resolve()
    # rbldnsd drops to user `rbldns` after binding: the data must stay readable for it
    data_dir.chmod(0o755)
    found = list(datasets) if datasets is not None else datasets_in(data_dir)
    if not found:
        raise ValueError(f"no *.ip4set / *.ip6trie files in {data_dir}")
    for _, name in found:
        with contextlib.suppress(FileNotFoundError):
            (data_dir / name).chmod(0o644)
    run_dir = Path(tempfile.mkdtemp(prefix="tmsi-rbldnsd-"))
    port = free_port()
    server = Rbldnsd(zone.rstrip("."), data_dir, "127.0.0.1", port, run_dir, datasets=found)
    pidfile = run_dir / "rbldnsd.pid"
    args = [
        RBLDNSD,
        "-p",
        str(pidfile),
        "-b",
        f"127.0.0.1/{port}",
        "-c",
        str(check_interval),
        "-w",
        str(data_dir),
    ]
    if Path("/proc/net/if_inet6").exists():
        args[5:5] = ["-b", f"::1/{port}"]
    args += [f"{server.zone}:{kind}:{name}" for kind, name in found]
    try:
        # it loads and binds before it daemonizes: when this returns, it is ready
        start_daemon(args, run_dir / "rbldnsd.log")
        server.pid = read_pid(pidfile)
        yield server
    finally:
        stop_service(reaper, server.pid, run_dir)
