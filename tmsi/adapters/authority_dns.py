"""DNS look-ups for the authority checks (DKIM keys, SPF, DMARC, PTR) behind one small Protocol.

``DnspythonDns`` asks the configured resolvers (``Settings.resolvers``, ``host`` or ``host:port``);
``CachingDns`` keeps answers for their TTL (bounded) in front of any implementation; ``StaticDns`` answers
from a dict, for unit tests.  Answers never raise: DNS trouble is ``status="error"``, so that a caller can
tell "could not check" from "no record".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import dns.exception
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver
from cachetools import TLRUCache

RDTYPES = frozenset({"A", "AAAA", "MX", "PTR", "TXT", "SPF", "CNAME"})


@dataclass(frozen=True)
class DnsAnswer:
    name: str
    rdtype: str
    status: str  # ok | nxdomain | nodata | error
    records: tuple[str, ...] = ()
    ttl: int = 0
    error: str = ""
    server: str = ""
    at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "name": self.name,
            "type": self.rdtype,
            "status": self.status,
            "records": list(self.records),
            "ttl": self.ttl,
            "server": self.server,
            "at": round(self.at, 3),
        }
        if self.error:
            out["error"] = self.error
        return out


class AuthorityDns(Protocol):
    def query(self, name: str, rdtype: str) -> DnsAnswer: ...


def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _parse_server(spec: str) -> tuple[str, int]:
    spec = spec.strip()
    if spec.startswith("["):  # [v6]:port
        host, _, port = spec[1:].partition("]")
        return host, int(port.lstrip(":") or 53)
    if spec.count(":") == 1:
        host, _, port = spec.partition(":")
        return host, int(port)
    return spec, 53


def _record_text(rdata: object, rdtype: str) -> str:
    if rdtype in {"TXT", "SPF"}:
        strings = getattr(rdata, "strings", ())
        return b"".join(strings).decode("utf-8", errors="replace")
    if rdtype == "MX":
        return f"{rdata.preference} {rdata.exchange.to_text(omit_final_dot=True)}"  # type: ignore[attr-defined]
    if rdtype in {"PTR", "CNAME"}:
        return rdata.target.to_text(omit_final_dot=True)  # type: ignore[attr-defined]
    return rdata.to_text()  # type: ignore[attr-defined]


class DnspythonDns:
    """Stub resolver on dnspython, pointed at ``servers`` (``host`` or ``host:port``), no cache of its own."""

    def __init__(self, servers: Iterable[str], *, timeout: float = 2.0, retries: int = 1) -> None:
        self.servers = [s for s in servers if s.strip()]
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [dns.nameserver.Do53Nameserver(*_parse_server(s)) for s in self.servers]
        res.cache = None
        res.timeout = timeout
        res.lifetime = timeout * (retries + 1)
        res.retry_servfail = False
        self._resolver = res

    @classmethod
    def from_settings(cls, settings: object) -> DnspythonDns:
        return cls(
            getattr(settings, "resolvers", ["127.0.0.1"]),
            timeout=getattr(settings, "dns_timeout", 2.0),
            retries=getattr(settings, "dns_retries", 1),
        )

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        rdtype = rdtype.upper()
        qname = _norm(name)
        server = ",".join(self.servers)
        try:
            answer = self._resolver.resolve(qname + ".", rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            return DnsAnswer(qname, rdtype, "nxdomain", server=server)
        except dns.resolver.NoNameservers as exc:
            return DnsAnswer(qname, rdtype, "error", error=f"no server answered: {exc}", server=server)
        except dns.exception.Timeout as exc:
            return DnsAnswer(qname, rdtype, "error", error=f"timeout: {exc}", server=server)
        except (dns.exception.DNSException, OSError) as exc:
            return DnsAnswer(qname, rdtype, "error", error=f"{type(exc).__name__}: {exc}", server=server)
        if answer.rrset is None:
            ttl = 0
            if answer.response is not None:
                for rrset in answer.response.authority:
                    ttl = rrset.ttl
            return DnsAnswer(qname, rdtype, "nodata", ttl=ttl, server=server)
        records = tuple(_record_text(r, rdtype) for r in answer.rrset)
        return DnsAnswer(qname, rdtype, "ok", records, answer.rrset.ttl, server=server)


class CachingDns:
    """Answers kept for min(TTL, ``max_ttl``); negative answers for ``negative_ttl``; errors never.

    At most ``max_entries`` answers (least recently used go first; expired ones are dropped as the cache
    is written): a worker that meets new sender domains all day keeps a fixed amount of memory.
    """

    def __init__(
        self,
        inner: AuthorityDns,
        *,
        max_ttl: int = 3600,
        negative_ttl: int = 300,
        max_entries: int = 50_000,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self._cache: TLRUCache[tuple[str, str], DnsAnswer] = TLRUCache(
            maxsize=max_entries, ttu=self._expires, timer=timer
        )
        self._lock = threading.Lock()  # cachetools caches are not thread-safe (a read reorders the LRU)
        self.hits = 0
        self.misses = 0

    def _ttl(self, answer: DnsAnswer) -> float:
        ttl = answer.ttl if answer.ok else min(answer.ttl or self.negative_ttl, self.negative_ttl)
        return max(0, min(ttl, self.max_ttl))

    def _expires(self, _key: tuple[str, str], answer: DnsAnswer, now: float) -> float:
        return now + self._ttl(answer)

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        key = (_norm(name), rdtype.upper())
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        answer = self.inner.query(*key)
        if answer.status != "error" and self._ttl(answer):
            with self._lock:
                self._cache[key] = answer
        return answer

    def __len__(self) -> int:
        with self._lock:
            self._cache.expire()
            return len(self._cache)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


class StaticDns:
    """In-memory DNS for unit tests: ``{(name, type): [records]}``; names in ``failing`` time out."""

    def __init__(
        self, records: Mapping[tuple[str, str], Iterable[str]] | None = None, failing: Iterable[str] = ()
    ) -> None:
        self.records = {(_norm(n), t.upper()): tuple(v) for (n, t), v in (records or {}).items()}
        self.failing = {_norm(n) for n in failing}
        self.queries: list[tuple[str, str]] = []

    def add(self, name: str, rdtype: str, *values: str) -> None:
        key = (_norm(name), rdtype.upper())
        self.records[key] = self.records.get(key, ()) + values

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        qname, rdtype = _norm(name), rdtype.upper()
        self.queries.append((qname, rdtype))
        if qname in self.failing:
            return DnsAnswer(qname, rdtype, "error", error="timeout (static)", server="static")
        values = self.records.get((qname, rdtype))
        if values:
            return DnsAnswer(qname, rdtype, "ok", values, 300, server="static")
        if any(n == qname for n, _ in self.records):
            return DnsAnswer(qname, rdtype, "nodata", server="static")
        return DnsAnswer(qname, rdtype, "nxdomain", server="static")
