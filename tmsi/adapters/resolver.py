"""DNS look-ups behind one small Protocol: a batching UDP engine, a zone-file resolver, an in-memory fake.

``Resolver.resolve_many(queries)`` answers a batch of ``(name, rdtype)`` questions and returns one
:class:`DnsAnswer` per question (same order) with everything the evidence needs: rcode, AA flag, answer
records with TTLs, the negative-caching TTL, which server answered, timing, attempts, and an
:class:`ErrorKind` when the question could not be answered.

How the real engine (:class:`DnsResolver`) is fast enough for a /16 (65,536 PTR + 65,536 forward
queries in a few seconds) on 2 cores:

* many queries in flight on few non-blocking UDP sockets driven by one ``selectors`` loop; replies
  matched by (message id, question); at most ``per_socket`` (150) in flight per socket because a
  socket's receive buffer (``rmem_default`` 212,992 bytes here, about 166 replies) overflows beyond that;
* a token bucket per server (``Settings.dns_rate_limit``) and a cap on in-flight queries per server
  (``Settings.dns_max_in_flight``); per-attempt timeout and retries, a retry goes to the next server;
  at the tail of a batch an unanswered question is *hedged* (sent once more after max(50 ms, 4 x SRTT)),
  so that one lost datagram does not hold the batch for a whole timeout;
* wire format: on this machine ``dns.message.make_query().to_wire()`` costs ~50 µs and
  ``dns.message.from_wire()`` ~120 µs per message, which caps a Python client near 6,000 queries/s.
  So queries are built from a header + the name's wire form (checked against dnspython's
  ``make_query`` in the tests), and replies go through :func:`parse_reply`, a small reader for the
  header, the echoed question and PTR/CNAME/A/AAAA/SOA/NS records. Anything it does not fully
  understand (escaped label bytes, unknown record types in the answer, a question echoed differently)
  is handed to ``dns.message.from_wire`` unchanged, and truncated replies are asked again over TCP
  with ``dns.query.tcp`` (dnspython end to end).

What an answer means (how verification reads it):
``NOERROR`` with records, ``NXDOMAIN`` and ``NOERROR`` without records (NODATA) are *answers*: the last
two mean "no such record", which makes an address fail. ``SERVFAIL``, ``REFUSED``, ``FORMERR``, other
rcodes, timeouts and lame replies are *errors* (:attr:`DnsAnswer.error`): the question could not be
checked, so the address is ``unverifiable``, never failed and never passed. REFUSED is deliberately an
error and not "no PTR": Knot (and most authoritative servers) answer REFUSED for names outside their
zones, which says the server was the wrong one to ask, not that the record is missing. A reply is *lame*
when it carries neither AA nor RA (the server is neither authoritative nor recursive for the name: a
referral, or a stale delegation), so its "no record" cannot be trusted.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import enum
import ipaddress
import random
import selectors
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.zone

RDTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "AAAA": 28}
RDTYPE_NAMES = {v: k for k, v in RDTYPES.items()}
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
PER_SOCKET_IN_FLIGHT = 150
HEDGE_MIN = 0.05  # seconds before a question at the tail of a batch is sent once more
EDNS_PAYLOAD = 1232
_OPT_RR = b"\x00" + struct.pack("!HHIH", 41, EDNS_PAYLOAD, 0, 0)
_HEADER = struct.Struct("!HHHHHH")
_LENGTH_BYTE = [bytes((n,)) for n in range(64)]
_QTAILS = {name: struct.pack("!HH", code, 1) for name, code in RDTYPES.items()}  # type, class IN
_RR_FIXED = struct.Struct("!HHIH")
_LDH = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*."  # "." joins labels


class ErrorKind(enum.StrEnum):
    """Why a question got no usable answer: every one of them means "could not check"."""

    TIMEOUT = "timeout"
    SERVFAIL = "servfail"
    REFUSED = "refused"
    FORMERR = "formerr"
    LAME = "lame"
    RCODE = "rcode"  # any other rcode (NOTIMP, BADVERS, ...)
    UNREACHABLE = "unreachable"  # ICMP port unreachable: nothing listens there
    NETWORK = "network"  # a socket error on send or a TCP failure


Question = tuple[str, str]


@dataclass(frozen=True, slots=True)
class DnsRecord:
    """One resource record of an answer section, in presentation form (names absolute, lower case)."""

    name: str
    rdtype: str
    ttl: int
    value: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.rdtype, "ttl": self.ttl, "value": self.value}


@dataclass(slots=True)
class DnsAnswer:
    """The outcome of one question: the final reply (or the error) plus how it was obtained."""

    qname: str
    qtype: str
    resolver: str = ""
    rcode: str | None = None
    error: ErrorKind | None = None
    detail: str = ""
    records: tuple[DnsRecord, ...] = ()
    negative_ttl: int | None = None
    authoritative: bool = False
    recursion_available: bool = False
    transport: str = "udp"
    attempts: int = 0
    hedged: int = 0  # extra copies sent at the tail of a batch (not attempts; see _Batch._hedge)
    elapsed_ms: float = 0.0
    at: float = 0.0  # wall clock (epoch seconds) of the first send

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def nxdomain(self) -> bool:
        return self.error is None and self.rcode == "NXDOMAIN"

    def chase(self, rdtype: str | None = None) -> tuple[str, list[DnsRecord], list[str]]:
        """Follow the CNAME chain from the question inside this answer.

        Returns (final owner, records of ``rdtype`` at that owner, the CNAME chain followed). When the
        chain ends at a name with no records here, the caller must ask for that name itself.
        """
        wanted = rdtype or self.qtype
        owner = self.qname
        records = self.records
        found = [r for r in records if r.rdtype == wanted and r.name == owner]
        if found or not records:
            return owner, found, []
        chain: list[str] = []
        for _ in range(16):
            cname = next((r for r in records if r.rdtype == "CNAME" and r.name == owner), None)
            if cname is None or cname.value in chain:
                break
            chain.append(cname.value)
            owner = cname.value
            found = [r for r in records if r.rdtype == wanted and r.name == owner]
            if found:
                break
        return owner, found, chain

    def min_ttl(self) -> int | None:
        ttls = [r.ttl for r in self.records]
        if self.negative_ttl is not None:
            ttls.append(self.negative_ttl)
        return min(ttls) if ttls else None

    def as_evidence(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "query": self.qname,
            "type": self.qtype,
            "resolver": self.resolver,
            "rcode": self.rcode,
            "aa": self.authoritative,
            "answers": [r.as_dict() for r in self.records],
            "at": round(self.at, 3),
            "ms": round(self.elapsed_ms, 2),
            "attempts": self.attempts,
        }
        if self.transport != "udp":
            data["transport"] = self.transport
        if self.hedged:
            data["hedged"] = self.hedged
        if self.negative_ttl is not None:
            data["negative_ttl"] = self.negative_ttl
        if self.error is not None:
            data["error"] = str(self.error)
            if self.detail:
                data["detail"] = self.detail
        return data


class Resolver(Protocol):
    """Answers batches of questions; every implementation returns one DnsAnswer per question."""

    def resolve_many(self, queries: Sequence[Question]) -> list[DnsAnswer]: ...


def resolve(resolver: Resolver, name: str, rdtype: str) -> DnsAnswer:
    return resolver.resolve_many([(name, rdtype)])[0]


# --- wire format ---------------------------------------------------------------------------------


def absolute(name: str) -> str:
    """Lower-case absolute presentation form (``host.example.``)."""
    name = name.strip().lower()
    return name if name.endswith(".") else name + "."


def name_to_wire(name: str) -> bytes:
    """Uncompressed wire form of a presentation name (dnspython for anything escaped or non-ASCII)."""
    text = name[:-1] if name.endswith(".") else name
    if text and "\\" not in text and text.isascii():
        parts = text.encode("ascii").split(b".")
        lengths = [len(p) for p in parts]
        if min(lengths) > 0 and max(lengths) < 64 and len(text) < 254:
            return b"".join([_LENGTH_BYTE[n] + p for n, p in zip(lengths, parts, strict=True)]) + b"\0"
    return dns.name.from_text(name).to_wire() or b""


def question_wire(name: str, rdtype: str) -> bytes:
    tail = _QTAILS.get(rdtype)
    if tail is None:
        tail = struct.pack("!HH", dns.rdatatype.from_text(rdtype), 1)
    return name_to_wire(name) + tail


def build_query(qid: int, question: bytes, *, recursion_desired: bool = True) -> bytes:
    """A standard query with one question and an EDNS0 OPT record (payload 1232, RFC 9715 advice)."""
    flags = 0x0100 if recursion_desired else 0
    return _HEADER.pack(qid, flags, 1, 0, 0, 1) + question + _OPT_RR


class SlowPath(Exception):
    """The fast reader met something it does not handle; dnspython parses the message instead."""


@dataclass(slots=True)
class Reply:
    qid: int
    rcode: int
    truncated: bool
    authoritative: bool
    recursion_available: bool
    records: list[DnsRecord]
    negative_ttl: int | None
    referral: bool


def _read_name(wire: bytes, offset: int, known: dict[int, str]) -> tuple[str, int]:
    """Read a (possibly compressed) name; ``known`` maps offsets already read to their text."""
    start = offset
    parts: list[bytes] = []
    suffix = "."
    end = -1
    jumps = 0
    while True:
        length = wire[offset]
        if length >= 0xC0:
            if end < 0:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | wire[offset + 1]
            hit = known.get(offset)
            if hit is not None:
                suffix = hit
                break
            jumps += 1
            if jumps > 64:
                raise SlowPath("compression loop")
            continue
        if length == 0:
            offset += 1
            break
        if length > 63:
            raise SlowPath("extended label type")
        label = wire[offset + 1 : offset + 1 + length]
        if len(label) != length:
            raise IndexError("label past the end")
        parts.append(label)
        offset += 1 + length
    if parts:
        raw = b".".join(parts)
        if raw.translate(None, _LDH) or raw.count(b".") != len(parts) - 1:
            raise SlowPath("label needs escaping")
        text = raw.decode("ascii").lower() + ("." if suffix == "." else "." + suffix)
    else:
        text = suffix
    known[start] = text
    return text, (end if end >= 0 else offset)


def parse_reply(wire: bytes, question: bytes, qname: str = "") -> Reply | None:
    """Read a reply to ``question`` (its wire form); None if the echoed question differs.

    Raises SlowPath for anything outside the common shapes, IndexError/struct.error on garbage.
    """
    qid, flags, qdcount, ancount, nscount, _ar = _HEADER.unpack_from(wire, 0)
    if not flags & 0x8000:
        return None
    qlen = len(question)
    if qdcount != 1 or wire[12 : 12 + qlen - 4].lower() != question[:-4].lower():
        raise SlowPath("question echoed differently")
    if wire[8 + qlen : 12 + qlen] != question[-4:]:
        return None
    offset = 12 + qlen
    known = {12: qname} if qname else {}
    records: list[DnsRecord] = []
    negative_ttl = None
    referral = False
    for index in range(ancount + nscount):
        owner, offset = _read_name(wire, offset, known)
        rtype, _rclass, ttl, rdlen = _RR_FIXED.unpack_from(wire, offset)
        offset += 10
        rdata_end = offset + rdlen
        if rdata_end > len(wire):
            raise IndexError("rdata past the end")
        if index < ancount:
            if rtype in (12, 5):
                value, _ = _read_name(wire, offset, known)
            elif rtype == 1 and rdlen == 4:
                value = socket.inet_ntop(socket.AF_INET, wire[offset:rdata_end])
            elif rtype == 28 and rdlen == 16:
                value = socket.inet_ntop(socket.AF_INET6, wire[offset:rdata_end])
            else:
                raise SlowPath(f"answer of type {rtype}")
            records.append(DnsRecord(owner, RDTYPE_NAMES[rtype], ttl, value))
        elif rtype == 6:
            _mname, pos = _read_name(wire, offset, known)
            _rname, pos = _read_name(wire, pos, known)
            minimum = struct.unpack_from("!I", wire, pos + 16)[0]
            negative_ttl = min(ttl, minimum)  # RFC 2308 section 5
        elif rtype == 2:
            referral = True
        offset = rdata_end
    return Reply(
        qid,
        flags & 0x000F,
        bool(flags & 0x0200),
        bool(flags & 0x0400),
        bool(flags & 0x0080),
        records,
        negative_ttl,
        referral,
    )


def reply_from_message(msg: dns.message.Message) -> Reply:
    """The same Reply, read through dnspython (slow path and TCP)."""
    records: list[DnsRecord] = []
    for rrset in msg.answer:
        kind = dns.rdatatype.to_text(rrset.rdtype)
        for rdata in rrset:
            value = rdata.to_text()
            if rrset.rdtype in (dns.rdatatype.PTR, dns.rdatatype.CNAME):
                value = value.lower()
            records.append(DnsRecord(rrset.name.to_text().lower(), kind, rrset.ttl, value))
    negative_ttl = None
    referral = False
    for rrset in msg.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            negative_ttl = min(rrset.ttl, rrset[0].minimum)
        elif rrset.rdtype == dns.rdatatype.NS:
            referral = True
    return Reply(
        msg.id,
        msg.rcode(),
        bool(msg.flags & dns.flags.TC),
        bool(msg.flags & dns.flags.AA),
        bool(msg.flags & dns.flags.RA),
        records,
        negative_ttl,
        referral,
    )


def parse_reply_any(wire: bytes, question: bytes, qname: str, qtype: str) -> Reply | None:
    """parse_reply with dnspython as the fallback; None when the reply is not for this question."""
    try:
        return parse_reply(wire, question, qname)
    except SlowPath:
        pass
    try:
        msg = dns.message.from_wire(wire, ignore_trailing=True)
    except dns.exception.DNSException:
        return None
    if len(msg.question) != 1:
        return None
    q = msg.question[0]
    if q.name != dns.name.from_text(qname) or dns.rdatatype.to_text(q.rdtype) != qtype:
        return None
    return reply_from_message(msg)


def classify_reply(reply: Reply, answer: DnsAnswer) -> None:
    """Fill ``answer`` from a reply: rcode, records, flags, and the error kind if it is not an answer."""
    answer.rcode = RCODE_NAMES.get(reply.rcode) or dns.rcode.to_text(dns.rcode.Rcode(reply.rcode))
    answer.records = tuple(reply.records)
    answer.negative_ttl = reply.negative_ttl
    answer.authoritative = reply.authoritative
    answer.recursion_available = reply.recursion_available
    if reply.rcode in (0, 3):
        if not reply.authoritative and not reply.recursion_available and not reply.records:
            answer.error = ErrorKind.LAME
            answer.detail = "referral" if reply.referral else "neither authoritative nor recursive"
    elif reply.rcode == 2:
        answer.error = ErrorKind.SERVFAIL
    elif reply.rcode == 5:
        answer.error = ErrorKind.REFUSED
    elif reply.rcode == 1:
        answer.error = ErrorKind.FORMERR
    else:
        answer.error = ErrorKind.RCODE
        answer.detail = answer.rcode or ""


# --- the batching engine -------------------------------------------------------------------------


def parse_server(text: str, default_port: int = 53) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest.lstrip(":") or default_port)
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, default_port


_ASK_ELSEWHERE = frozenset({ErrorKind.SERVFAIL, ErrorKind.REFUSED, ErrorKind.LAME})


class _Task:
    __slots__ = (
        "answer",
        "attempts",
        "body",
        "deadline",
        "hedged",
        "ids",
        "index",
        "last_send",
        "question",
        "sends",
        "sent",
        "server",
        "tried",
    )

    def __init__(self, index: int, answer: DnsAnswer, question: bytes, server: int, head: bytes) -> None:
        self.index = index
        self.answer = answer
        self.question = question
        self.body = head + question + _OPT_RR  # the query after its 2-byte id
        self.server = server
        self.attempts = 0  # counted against the retries budget; a hedge is not an attempt
        self.sends = 0  # datagrams sent, hedges included
        self.hedged = 0
        self.ids: list[tuple[_Server, _Socket, int]] = []  # outstanding (server, socket, message id)
        self.deadline = 0.0
        self.sent = 0.0
        self.last_send = 0.0
        self.tried: set[int] = set()


class _Socket:
    __slots__ = ("inflight", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inflight: dict[int, _Task] = {}


class _Server:
    def __init__(self, spec: str, sockets: int, rate: float, capacity: int) -> None:
        self.spec = spec
        self.host, self.port = parse_server(spec)
        self.family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.sockets: list[_Socket] = []
        self.n_sockets = sockets
        self.rate = rate
        self.capacity = capacity
        self.tokens = float(min(capacity, max(1.0, rate / 20)))
        self.burst = self.tokens
        self.refilled = time.monotonic()
        self.inflight = 0
        self.unreachable = False
        self.retry: collections.deque[_Task] = collections.deque()

    def open(self, selector: selectors.BaseSelector) -> None:
        for _ in range(self.n_sockets):
            sock = socket.socket(self.family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.connect((self.host, self.port))  # replies from anyone else are not even delivered
            wrapped = _Socket(sock)
            self.sockets.append(wrapped)
            selector.register(sock, selectors.EVENT_READ, (self, wrapped))

    def close(self) -> None:
        for wrapped in self.sockets:
            wrapped.sock.close()
        self.sockets.clear()

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now

    def free_socket(self) -> _Socket | None:
        if len(self.sockets) == 1:
            only = self.sockets[0]
            return only if len(only.inflight) < PER_SOCKET_IN_FLIGHT else None
        best = None
        for wrapped in self.sockets:
            if len(wrapped.inflight) < PER_SOCKET_IN_FLIGHT and (
                best is None or len(wrapped.inflight) < len(best.inflight)
            ):
                best = wrapped
        return best


class DnsResolver:
    """The batching engine over one or more servers (``host`` or ``host:port``)."""

    def __init__(
        self,
        servers: Sequence[str],
        *,
        timeout: float = 2.0,
        retries: int = 2,
        max_in_flight: int = 150,
        rate_limit: float = 20000.0,
        recursion_desired: bool = True,
        tcp_workers: int = 4,
    ) -> None:
        if not servers:
            raise ValueError("no DNS servers configured (TMSI_RESOLVERS)")
        self.servers = list(servers)
        self.timeout = timeout
        self.retries = retries
        self.max_in_flight = max_in_flight
        self.rate_limit = rate_limit
        self.recursion_desired = recursion_desired
        self.tcp_workers = tcp_workers
        self.stats: collections.Counter[str] = collections.Counter()

    @classmethod
    def from_settings(cls, settings: Any) -> DnsResolver:
        return cls(
            settings.resolvers,
            timeout=settings.dns_timeout,
            retries=settings.dns_retries,
            max_in_flight=settings.dns_max_in_flight,
            rate_limit=settings.dns_rate_limit,
        )

    def for_workers(self, workers: int) -> DnsResolver:
        """A copy for one of ``workers`` processes sharing the servers: each gets its share of the rate
        and of the in-flight cap, so that the servers see the configured limits in total."""
        return DnsResolver(
            self.servers,
            timeout=self.timeout,
            retries=self.retries,
            max_in_flight=max(1, self.max_in_flight // max(1, workers)),
            rate_limit=self.rate_limit / max(1, workers),
            recursion_desired=self.recursion_desired,
            tcp_workers=self.tcp_workers,
        )

    def resolve_many(self, queries: Sequence[Question]) -> list[DnsAnswer]:
        if not queries:
            return []
        return _Batch(self, queries).run()


class _Batch:
    """One resolve_many call: a selectors loop until every question has an answer or an error."""

    def __init__(self, owner: DnsResolver, queries: Sequence[Question]) -> None:
        self.owner = owner
        self.queries = queries
        n_sockets = max(1, -(-owner.max_in_flight // PER_SOCKET_IN_FLIGHT))
        self.servers = [_Server(s, n_sockets, owner.rate_limit, owner.max_in_flight) for s in owner.servers]
        self.results: list[DnsAnswer | None] = [None] * len(queries)
        self.fresh = collections.deque(range(len(queries)))
        self.timers: collections.deque[tuple[float, _Task, int]] = collections.deque()
        self.tcp: dict[concurrent.futures.Future[Any], _Task] = {}
        self.tcp_pending: list[_Task] = []
        self.remaining = len(queries)
        self.selector = selectors.DefaultSelector()
        self.rng = random.Random()
        self.srtt: float | None = None
        self.outstanding: dict[int, _Task] = {}  # index -> task with a datagram out
        self.head = struct.pack("!HHHHH", 0x0100 if owner.recursion_desired else 0, 1, 0, 0, 1)
        self.sent = 0

    def run(self) -> list[DnsAnswer]:
        executor: concurrent.futures.ThreadPoolExecutor | None = None
        try:
            for server in self.servers:
                server.open(self.selector)
            while self.remaining:
                now = time.monotonic()
                self._expire(now)
                wait = self._send(now)
                wait = min(wait, self._hedge(now))
                if self.tcp:
                    self._collect_tcp()
                    wait = min(wait, 0.005)
                if self.timers:
                    wait = min(wait, max(0.0, self.timers[0][0] - now))
                if self.remaining:
                    for key, _ in self.selector.select(wait):
                        self._receive(*key.data)
                if self.tcp_pending:
                    if executor is None:
                        executor = concurrent.futures.ThreadPoolExecutor(
                            self.owner.tcp_workers, "tmsi-dns-tcp"
                        )
                    self._start_tcp(executor)
        finally:
            self.owner.stats["sent"] += self.sent
            for server in self.servers:
                server.close()
            self.selector.close()
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
        return [r for r in self.results if r is not None]

    # sending -------------------------------------------------------------------------------------
    def _new_task(self, index: int, server: int) -> _Task:
        qname, qtype = self.queries[index]
        if not (qname.endswith(".") and qname.islower()):
            qname = absolute(qname)
        answer = DnsAnswer(qname, qtype.upper())
        return _Task(index, answer, question_wire(qname, answer.qtype), server, self.head)

    def _send(self, now: float) -> float:
        """Send what the caps and rates allow, one question per server in turn (so that a dead server
        gets only its share); return how long to wait at most for the next rate token."""
        for server in self.servers:
            server.refill(now)
        active = list(range(len(self.servers)))
        while active:
            still = []
            for server_index in active:
                server = self.servers[server_index]
                if server.tokens < 1.0 or server.inflight >= server.capacity:
                    continue
                if server.retry:
                    task = server.retry.popleft()
                elif self.fresh:
                    task = self._new_task(self.fresh.popleft(), server_index)
                else:
                    continue
                wrapped = server.free_socket()
                if wrapped is None:
                    server.retry.appendleft(task)
                elif self._transmit(server, wrapped, task, now):
                    still.append(server_index)
            active = still
        wait = 1.0
        for server in self.servers:
            if server.tokens < 1.0:
                wait = min(wait, (1.0 - server.tokens) / server.rate)
        return wait

    def _transmit(
        self, server: _Server, wrapped: _Socket, task: _Task, now: float, hedge: bool = False
    ) -> bool:
        qid = self.rng.getrandbits(16)
        while qid in wrapped.inflight:
            qid = self.rng.getrandbits(16)
        wire = qid.to_bytes(2, "big") + task.body
        try:
            wrapped.sock.send(wire)
        except (BlockingIOError, InterruptedError):
            if not hedge:
                server.retry.appendleft(task)
            return False
        except ConnectionRefusedError:
            server.unreachable = True  # a pending ICMP error from an earlier datagram; send again
            if not hedge:
                server.retry.appendleft(task)
            server.tokens -= 1.0
            return True
        except OSError as exc:
            if not hedge:
                self._finish(task, error=ErrorKind.NETWORK, detail=str(exc), server=server)
            return True
        if hedge:
            task.hedged += 1
        else:
            if task.attempts == 0:
                task.answer.at = time.time()
                task.sent = now
            task.attempts += 1
            task.tried.add(task.server)
            task.deadline = now + self.owner.timeout
            self.timers.append((task.deadline, task, task.attempts))
        task.sends += 1
        task.last_send = now
        task.ids.append((server, wrapped, qid))
        self.outstanding[task.index] = task
        wrapped.inflight[qid] = task
        server.inflight += 1
        server.tokens -= 1.0
        self.sent += 1
        return True

    # receiving -----------------------------------------------------------------------------------
    def _receive(self, server: _Server, wrapped: _Socket) -> None:
        sock = wrapped.sock
        for _ in range(512):
            try:
                wire = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                server.unreachable = True  # ICMP port unreachable for one of our datagrams
                continue
            except OSError:
                return
            if len(wire) < 12:
                self.owner.stats["runt"] += 1
                continue
            qid = (wire[0] << 8) | wire[1]
            task = wrapped.inflight.get(qid)
            if task is None:
                self.owner.stats["unmatched"] += 1  # late reply to a query already retried or done
                continue
            try:
                reply = parse_reply_any(wire, task.question, task.answer.qname, task.answer.qtype)
            except (IndexError, struct.error, ValueError):
                reply = None
            if reply is None:
                self.owner.stats["mismatched"] += 1
                continue
            if task.sends == 1:  # Karn: only unambiguous samples
                sample = time.monotonic() - task.last_send
                self.srtt = sample if self.srtt is None else 0.875 * self.srtt + 0.125 * sample
            self._drop_ids(task)
            if reply.truncated:
                self.tcp_pending.append(task)
                task.server = self.servers.index(server)
                continue
            task.answer.resolver = server.spec
            classify_reply(reply, task.answer)
            if task.answer.error in _ASK_ELSEWHERE and self._retry_elsewhere(task):
                continue
            self._finish(task)

    def _drop_ids(self, task: _Task) -> None:
        """Forget every outstanding message id of ``task`` (its answer came, or its attempt expired)."""
        for server, wrapped, qid in task.ids:
            if wrapped.inflight.get(qid) is task:
                del wrapped.inflight[qid]
                server.inflight -= 1
        task.ids.clear()
        self.outstanding.pop(task.index, None)

    def _hedge(self, now: float) -> float:
        """At the tail of a batch (nothing left to send) one lost datagram would hold the whole batch for
        a full timeout. So a question still unanswered after ``max(50 ms, 4 x smoothed RTT)`` is sent once
        more, to the next server, with a new id; whichever reply comes first is taken. A hedge is not an
        attempt: the timeout and retries budget stay as configured. Returns the time to the next hedge."""
        if self.fresh or any(server.retry for server in self.servers):
            return 1.0
        after = min(self.owner.timeout / 2, max(HEDGE_MIN, 4 * (self.srtt or 0.0)))
        wait = 1.0
        for task in list(self.outstanding.values()):
            if task.hedged:
                continue
            due = task.last_send + after - now
            if due > 0:
                wait = min(wait, due)
                continue
            server_index = (task.server + 1) % len(self.servers)
            server = self.servers[server_index]
            wrapped = server.free_socket()
            if server.tokens < 1.0 or server.inflight >= server.capacity or wrapped is None:
                return min(wait, 0.01)
            self._transmit(server, wrapped, task, now, hedge=True)
            self.owner.stats["hedged"] += 1
        return wait

    def _retry_elsewhere(self, task: _Task) -> bool:
        """Ask a server not yet tried (a SERVFAIL/REFUSED/lame from one server says little of the others)."""
        for step in range(1, len(self.servers)):
            candidate = (task.server + step) % len(self.servers)
            if candidate not in task.tried:
                task.server = candidate
                task.answer = DnsAnswer(task.answer.qname, task.answer.qtype, at=task.answer.at)
                self.servers[candidate].retry.append(task)
                return True
        return False

    # timeouts ------------------------------------------------------------------------------------
    def _expire(self, now: float) -> None:
        timers = self.timers
        while timers and timers[0][0] <= now:
            _deadline, task, attempt = timers.popleft()
            if task.attempts != attempt or not task.ids:
                continue  # answered, or already retried
            self._drop_ids(task)
            server = self.servers[task.server]
            self.owner.stats["timeouts"] += 1
            if task.attempts <= self.owner.retries:
                task.server = (task.server + 1) % len(self.servers)
                self.servers[task.server].retry.append(task)
            else:
                kind = ErrorKind.UNREACHABLE if server.unreachable else ErrorKind.TIMEOUT
                self._finish(
                    task, error=kind, detail=f"no reply after {task.attempts} attempt(s)", server=server
                )

    def _finish(
        self, task: _Task, *, error: ErrorKind | None = None, detail: str = "", server: _Server | None = None
    ) -> None:
        answer = task.answer
        if error is not None:
            answer.error = error
            answer.detail = detail
            if server is not None:
                answer.resolver = server.spec
        answer.attempts = max(task.attempts, 1)
        answer.hedged = task.hedged
        answer.elapsed_ms = (time.monotonic() - task.sent) * 1000 if task.sent else 0.0
        if self.results[task.index] is None:
            self.results[task.index] = answer
            self.remaining -= 1

    # TCP fallback --------------------------------------------------------------------------------
    def _start_tcp(self, executor: concurrent.futures.ThreadPoolExecutor) -> None:
        while self.tcp_pending:
            task = self.tcp_pending.pop()
            server = self.servers[task.server]
            query = dns.message.make_query(task.answer.qname, task.answer.qtype)
            if not self.owner.recursion_desired:
                query.flags &= ~dns.flags.RD
            future = executor.submit(
                dns.query.tcp, query, server.host, port=server.port, timeout=self.owner.timeout * 2
            )
            self.tcp[future] = task

    def _collect_tcp(self) -> None:
        for future in [f for f in self.tcp if f.done()]:
            task = self.tcp.pop(future)
            server = self.servers[task.server]
            task.answer.transport = "tcp"
            task.answer.resolver = server.spec
            try:
                msg = future.result()
            except dns.exception.Timeout:
                self._finish(task, error=ErrorKind.TIMEOUT, detail="TCP retry after truncation timed out")
                continue
            except (OSError, dns.exception.DNSException) as exc:
                self._finish(task, error=ErrorKind.NETWORK, detail=f"TCP retry after truncation: {exc}")
                continue
            classify_reply(reply_from_message(msg), task.answer)
            self._finish(task)


# --- answers from data: zone files and the in-memory fake -----------------------------------------


@dataclass
class StaticDns:
    """Authoritative answers from in-memory data, with Knot's semantics.

    A name inside one of ``zones`` that has records of the asked type: NOERROR with them (CNAMEs are
    followed inside the data, as an authoritative server does); a name that exists with other types:
    NODATA; otherwise NXDOMAIN; a name outside every zone: REFUSED.
    """

    zones: dict[str, int] = field(default_factory=dict)  # origin -> negative TTL
    data: dict[str, dict[str, list[tuple[int, str]]]] = field(default_factory=dict)
    label: str = "static"
    follow_cnames: bool = True  # False: answer a CNAME alone, like a server without the target zone
    _names: set[str] | None = field(default=None, repr=False)

    def add_zone(self, origin: str, negative_ttl: int = 60) -> None:
        self.zones[absolute(origin)] = negative_ttl

    def add(self, name: str, rdtype: str, value: str, ttl: int = 300) -> None:
        value = absolute(value) if rdtype in ("PTR", "CNAME", "NS") else value
        self.data.setdefault(absolute(name), {}).setdefault(rdtype, []).append((ttl, value))
        self._names = None

    def remove(self, name: str, rdtype: str | None = None) -> None:
        node = self.data.get(absolute(name))
        if node is None:
            return
        self._names = None
        if rdtype is None:
            node.clear()
        else:
            node.pop(rdtype, None)

    def _zone_of(self, name: str) -> str | None:
        best = None
        for origin in self.zones:
            if (name == origin or name.endswith("." + origin) or origin == ".") and (
                best is None or len(origin) > len(best)
            ):
                best = origin
        return best

    def _exists(self, name: str) -> bool:
        """The name owns records or is an empty non-terminal above names that do (NODATA, not NXDOMAIN)."""
        if self._names is None:
            names: set[str] = set()
            for key, node in self.data.items():
                if any(node.values()):
                    labels = key.split(".")
                    names.update(".".join(labels[i:]) for i in range(len(labels)))
            self._names = names
        return name in self._names

    def answer(self, qname: str, qtype: str) -> DnsAnswer:
        qname, qtype = absolute(qname), qtype.upper()
        answer = DnsAnswer(qname, qtype, resolver=self.label, at=time.time(), attempts=1, authoritative=True)
        zone = self._zone_of(qname)
        if zone is None:
            answer.rcode, answer.error, answer.authoritative = "REFUSED", ErrorKind.REFUSED, False
            return answer
        records: list[DnsRecord] = []
        owner = qname
        for _ in range(8):
            node = self.data.get(owner, {})
            if qtype in node:
                records += [DnsRecord(owner, qtype, ttl, value) for ttl, value in node[qtype]]
                break
            if "CNAME" in node and qtype != "CNAME":
                ttl, target = node["CNAME"][0]
                records.append(DnsRecord(owner, "CNAME", ttl, target))
                owner = target
                if self._zone_of(owner) is None or not self.follow_cnames:
                    break
                continue
            if not records:
                answer.negative_ttl = self.zones[zone]
                answer.rcode = "NOERROR" if self._exists(owner) else "NXDOMAIN"
                return answer
            break
        answer.rcode = "NOERROR"
        answer.records = tuple(records)
        return answer


class ZoneFileResolver:
    """Answers from master files (``dns.zone``): the offline demo and tests; never touches the network."""

    def __init__(self, paths: Iterable[str | Path]) -> None:
        self.static = StaticDns(label="zonefile")
        for path in paths:
            guess = Path(path).name.removesuffix(".zone")  # used only when the file has no $ORIGIN
            zone = dns.zone.from_file(str(path), origin=guess, relativize=False, check_origin=False)
            origin = zone.origin.to_text() if zone.origin else ""
            soa_ttl = 300
            for name, node in zone.nodes.items():
                for rdataset in node.rdatasets:
                    kind = dns.rdatatype.to_text(rdataset.rdtype)
                    for rdata in rdataset:
                        if kind == "SOA":
                            soa_ttl = min(rdataset.ttl, rdata.minimum)
                        self.static.add(name.to_text(), kind, rdata.to_text(), rdataset.ttl)
            self.static.add_zone(origin, soa_ttl)

    @classmethod
    def from_settings(cls, settings: Any) -> ZoneFileResolver:
        return cls(settings.resolver_zone_files)

    def resolve_many(self, queries: Sequence[Question]) -> list[DnsAnswer]:
        return [self.static.answer(name, rdtype) for name, rdtype in queries]


_FAKE_RCODES = {ErrorKind.SERVFAIL: "SERVFAIL", ErrorKind.REFUSED: "REFUSED", ErrorKind.FORMERR: "FORMERR"}


class FakeResolver:
    """In-memory resolver for unit tests: records, injected errors per (name, type), and a query log."""

    def __init__(self, zones: Iterable[str] = ("in-addr.arpa", "ip6.arpa", "example", "test")) -> None:
        self.static = StaticDns(label="fake")
        for zone in zones:
            self.static.add_zone(zone)
        self.errors: dict[Question, ErrorKind] = {}
        self.log: list[Question] = []

    def ptr(self, address: str, *names: str, ttl: int = 300) -> FakeResolver:
        import dns.reversename

        owner = dns.reversename.from_address(address).to_text()
        self.static.remove(owner, "PTR")
        for name in names:
            self.static.add(owner, "PTR", name, ttl)
        return self

    def forward(self, name: str, *addresses: str, ttl: int = 300) -> FakeResolver:
        for address in addresses:
            kind = "AAAA" if ipaddress.ip_address(address).version == 6 else "A"
            self.static.add(name, kind, address, ttl)
        return self

    def host(self, address: str, name: str, ttl: int = 300) -> FakeResolver:
        """PTR and the matching A/AAAA: an address that is forward-confirmed."""
        return self.ptr(address, name, ttl=ttl).forward(name, address, ttl=ttl)

    def fail(self, name: str, rdtype: str, kind: ErrorKind) -> FakeResolver:
        self.errors[(absolute(name), rdtype.upper())] = kind
        return self

    def resolve_many(self, queries: Sequence[Question]) -> list[DnsAnswer]:
        out = []
        for name, rdtype in queries:
            key = (absolute(name), rdtype.upper())
            self.log.append(key)
            kind = self.errors.get(key)
            if kind is not None:
                rcode = {
                    ErrorKind.SERVFAIL: "SERVFAIL",
                    ErrorKind.REFUSED: "REFUSED",
                    ErrorKind.FORMERR: "FORMERR",
                }
                out.append(
                    DnsAnswer(key[0], key[1], resolver="fake", rcode=rcode.get(kind), error=kind, attempts=1)
                )
            else:
                out.append(self.static.answer(name, rdtype))
        return out


def make_resolver(settings: Any) -> Resolver:
    """The resolver the settings ask for (``resolver_kind``: dns or zonefile)."""
    if settings.resolver_kind == "zonefile":
        return ZoneFileResolver.from_settings(settings)
    return DnsResolver.from_settings(settings)
