"""A throw-away Knot DNS authoritative server that accepts RFC 2136 updates from loopback.

The default zone set (``STANDARD_ZONES``) covers the documentation ranges and two forward zones:

=====================  =======================================  ======================================
address                PTR                                      forward
=====================  =======================================  ======================================
192.0.2.7              static-customer-7.isp.example.           A 192.0.2.7 (FCrDNS passes)
192.0.2.8              dyn-192-0-2-8.pool.isp.example.          A 192.0.2.8 (generic dynamic name)
192.0.2.9              mail.example.test.                       A 192.0.2.9
192.0.2.10             (none)
198.51.100.20          static-198-51-100-20.isp.example.        A 198.51.100.99 (FCrDNS mismatch)
203.0.113.5            host-203-0-113-5.dsl.isp.example.        A 203.0.113.5
2001:db8::25           mail6.example.test.                      AAAA 2001:db8::25
=====================  =======================================  ======================================

Tests that change records should use their own names/addresses: the ``knot`` fixture is session-wide.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.services.ports import Reaper, free_port, read_pid, start_daemon, stop_service

KNOTD = "/usr/sbin/knotd"

SOA = """\
$ORIGIN {zone}.
$TTL 300
@ IN SOA ns1.example.test. hostmaster.example.test. 1 3600 600 86400 60
@ IN NS ns1.example.test.
"""

STANDARD_ZONES: dict[str, str] = {
    "2.0.192.in-addr.arpa": SOA.format(zone="2.0.192.in-addr.arpa")
    + "7 IN PTR static-customer-7.isp.example.\n"
    "8 IN PTR dyn-192-0-2-8.pool.isp.example.\n"
    "9 IN PTR mail.example.test.\n",
    "100.51.198.in-addr.arpa": SOA.format(zone="100.51.198.in-addr.arpa")
    + "20 IN PTR static-198-51-100-20.isp.example.\n",
    "113.0.203.in-addr.arpa": SOA.format(zone="113.0.203.in-addr.arpa")
    + "5 IN PTR host-203-0-113-5.dsl.isp.example.\n",
    "8.b.d.0.1.0.0.2.ip6.arpa": SOA.format(zone="8.b.d.0.1.0.0.2.ip6.arpa")
    + "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0 IN PTR mail6.example.test.\n",
    "isp.example": SOA.format(zone="isp.example") + "static-customer-7 IN A 192.0.2.7\n"
    "dyn-192-0-2-8.pool IN A 192.0.2.8\n"
    "static-198-51-100-20 IN A 198.51.100.99\n"
    "host-203-0-113-5.dsl IN A 203.0.113.5\n",
    "example.test": SOA.format(zone="example.test") + "ns1 IN A 127.0.0.1\n"
    "mail IN A 192.0.2.9\n"
    "mail6 IN AAAA 2001:db8::25\n",
}

CONFIG_HEAD = """\
server:
    rundir: "{d}"
    listen: [ 127.0.0.1@{port}, ::1@{port} ]
log:
  - target: {d}/knot.log
    any: info
database:
    storage: "{d}/db"
acl:
  - id: local_update
    address: [ 127.0.0.0/8, ::1 ]
    action: update
template:
  - id: default
    storage: "{d}/zones"
    file: "%s.zone"
    acl: local_update
    semantic-checks: off
zone:
"""


def soa_header(zone: str) -> str:
    """The ``$ORIGIN``/``$TTL``/SOA/NS lines every test zone text can start with."""
    return SOA.format(zone=zone.rstrip("."))


@dataclass
class Knot:
    directory: Path
    host: str
    port: int
    zones: tuple[str, ...]
    pid: int = 0

    @property
    def log_file(self) -> Path:
        return self.directory / "knot.log"

    @property
    def nameserver(self) -> str:
        """``host:port`` as Settings.resolvers expects it."""
        return f"{self.host}:{self.port}"

    def resolver(self) -> Any:
        import dns.resolver

        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [self.host]
        res.port = self.port
        res.cache = None
        res.lifetime = 3.0
        return res

    def zone_for(self, name: str) -> str:
        """The served zone that contains ``name`` (longest suffix match)."""
        fqdn = name.rstrip(".").lower()
        best = ""
        for zone in self.zones:
            if (fqdn == zone or fqdn.endswith("." + zone)) and len(zone) > len(best):
                best = zone
        if not best:
            raise ValueError(f"{name} is in none of the served zones {self.zones}")
        return best

    def _send(self, zone: str, build: Any) -> None:
        import dns.query
        import dns.rcode
        import dns.update

        update = dns.update.UpdateMessage(zone)
        build(update)
        response = dns.query.tcp(update, self.host, port=self.port, timeout=5)
        if response.rcode() != dns.rcode.NOERROR:
            raise RuntimeError(f"update of {zone} failed: {dns.rcode.to_text(response.rcode())}")

    def update_ptr(self, address: str, name: str, ttl: int = 60) -> None:
        """Replace the PTR of ``address`` (``name`` gets a trailing dot if missing)."""
        import dns.reversename

        owner = dns.reversename.from_address(address).to_text()
        target = name if name.endswith(".") else name + "."
        self._send(self.zone_for(owner), lambda u: u.replace(owner, ttl, "PTR", target))

    def update_a(self, name: str, address: str, ttl: int = 60) -> None:
        """Replace the A (or AAAA for an IPv6 ``address``) record of ``name``."""
        owner = name if name.endswith(".") else name + "."
        rdtype = "AAAA" if ipaddress.ip_address(address).version == 6 else "A"
        self._send(self.zone_for(owner), lambda u: u.replace(owner, ttl, rdtype, address))

    def delete(self, name_or_address: str, rdtype: str | None = None) -> None:
        """Delete an owner's records (all, or one type); an IP address means its PTR name."""
        import dns.reversename

        owner = name_or_address
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(name_or_address)
            owner = dns.reversename.from_address(name_or_address).to_text()
        owner = owner if owner.endswith(".") else owner + "."
        if rdtype is None:
            self._send(self.zone_for(owner), lambda u: u.delete(owner))
        else:
            self._send(self.zone_for(owner), lambda u: u.delete(owner, rdtype))

    def wait_ready(self, timeout: float = 10.0) -> None:
        """knotd -d returns before the zones are loaded: poll each zone's SOA."""
        import dns.exception
        import dns.message
        import dns.query
        import dns.rcode

        deadline = time.monotonic() + timeout
        for zone in self.zones:
            while True:
                try:
                    answer = dns.query.udp(
                        dns.message.make_query(zone, "SOA"), self.host, port=self.port, timeout=0.5
                    )
                    if answer.rcode() == dns.rcode.NOERROR and answer.answer:
                        break
                except (dns.exception.Timeout, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"knot zone {zone} not loaded; see {self.log_file}")
                time.sleep(0.05)


def available() -> bool:
    return os.path.exists(KNOTD)


@contextlib.contextmanager
def knot_server(zones: Mapping[str, str] | None = None, reaper: Reaper | None = None) -> Iterator[Knot]:
    """Start knotd serving ``zones`` ({zone name: master file text}); stop it on exit."""
    zones = dict(STANDARD_ZONES if zones is None else zones)
    directory = Path(tempfile.mkdtemp(prefix="tmsi-knot-"))
    (directory / "zones").mkdir()
    (directory / "db").mkdir()  # without it every update fails with SERVFAIL
    names = tuple(name.rstrip(".").lower() for name in zones)
    for name, text in zones.items():
        (directory / "zones" / f"{name.rstrip('.').lower()}.zone").write_text(text)
    port = free_port()
    config = CONFIG_HEAD.format(d=directory, port=port) + "".join(f"  - domain: {n}\n" for n in names)
    (directory / "knot.conf").write_text(config)
    server = Knot(directory, "127.0.0.1", port, names)
    try:
        start_daemon([KNOTD, "-c", str(directory / "knot.conf"), "-d"], directory / "start.log")
        server.pid = read_pid(directory / "knot.pid")
        server.wait_ready()
        yield server
    finally:
        stop_service(reaper, server.pid, directory)


class DeadDns:
    """A UDP (and TCP) socket on loopback that reads queries and never answers: for timeouts."""

    def __init__(self) -> None:
        import socket
        import threading

        self.host = "127.0.0.1"
        self.port = free_port()
        self.received = 0
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind((self.host, self.port))
        self._udp.settimeout(0.2)
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tcp.bind((self.host, self.port))
        self._tcp.listen(64)  # connections sit in the backlog, never accepted, never answered
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="dead-dns", daemon=True)
        self._thread.start()

    @property
    def nameserver(self) -> str:
        return f"{self.host}:{self.port}"

    def _drain(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                self._udp.recv(65535)
                self.received += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._udp.close()
        self._tcp.close()
