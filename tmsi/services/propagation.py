"""The closed loop after a delisting, and the regression watch.

Propagation: after an export, each delisted network is looked up on our DNSBL name servers
(``dnsbl_nameservers``) until every one answers NXDOMAIN; only then is the case's closing reply, held in
the outbox with ``hold_reason='propagation'``, released. Past ``propagation_deadline`` the delisting is
marked ``failed`` with an audit event and a case flag, and the reply stays held for the analyst.

Regression watch: every ``regression_interval_days`` the delisted addresses are verified again (through
a check function, the verification service by default); an address whose rDNS went back to generic or
dynamic is flagged to the analysts with the evidence. Nothing is ever relisted automatically.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import exists, select
from sqlalchemy.orm import Session, sessionmaker

from tmsi.config import Settings
from tmsi.db import unit_of_work, utcnow
from tmsi.domain.networks import IPAddress, IPNetwork
from tmsi.models import (
    Case,
    CheckResult,
    Delisting,
    ExportRun,
    OutboxMessage,
    OutboxStatus,
    RunStatus,
)
from tmsi.services import audit

log = logging.getLogger(__name__)

HOLD_REASON = "propagation"
CLOSING_TEMPLATE = "delisted"
# pending: not yet confirmed; confirmed: NXDOMAIN everywhere; failed: deadline passed;
# unchecked: no DNSBL servers configured, nothing to wait for.
DONE_STATUSES = frozenset({"confirmed", "unchecked"})
BATCH = 200
PROBE_THREADS = 32
UNVERIFIABLE_RETRY = timedelta(days=1)

Answer = Literal["listed", "not_listed", "error"]
Probe = Callable[[str, IPAddress, str, float], tuple[Answer, str]]
CheckFunc = Callable[[Settings, list[IPAddress]], Sequence[Any]]


# --- DNSBL probes ----------------------------------------------------------------------------------
def dnsbl_name(address: IPAddress, zone: str) -> str:
    """``7.113.0.203.dul.example.test`` / nibble-reversed for IPv6."""
    suffix = ".in-addr.arpa" if address.version == 4 else ".ip6.arpa"
    return address.reverse_pointer[: -len(suffix)] + "." + zone.rstrip(".")


def _server_address(host: str, port: int) -> str:
    """An IP literal for ``host`` (a server may be named, e.g. ``rbldnsd:53`` in a compose network)."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        return str(infos[0][4][0])


def probe_dnsbl(nameserver: str, address: IPAddress, zone: str, timeout: float) -> tuple[Answer, str]:
    """Ask one of our DNSBL servers whether ``address`` is listed: (answer, detail)."""
    import dns.exception
    import dns.flags
    import dns.message
    import dns.query
    import dns.rcode

    from tmsi.adapters.resolver import parse_server

    host, port = parse_server(nameserver)
    query = dns.message.make_query(dnsbl_name(address, zone), "A")
    query.flags &= ~dns.flags.RD
    try:
        where = _server_address(host, port)
        response = dns.query.udp(query, where, port=port, timeout=timeout)
    except (dns.exception.DNSException, OSError, ValueError) as exc:
        return "error", f"{type(exc).__name__}: {exc}"
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return "not_listed", "NXDOMAIN"
    if rcode != dns.rcode.NOERROR:
        return "error", dns.rcode.to_text(rcode)
    values = [rdata.to_text() for rrset in response.answer for rdata in rrset]
    if values:
        return "listed", " ".join(values)
    return "not_listed", "NOERROR, no A record"


def sample_addresses(network: IPNetwork) -> list[IPAddress]:
    """Addresses that stand for a delisted network in the probe: first, middle and last."""
    first, last = int(network.network_address), int(network.broadcast_address)
    picks = [first, first + (last - first) // 2, last]
    return [ipaddress.ip_address(value) for value in dict.fromkeys(picks)]


@dataclass
class PropagationReport:
    confirmed: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    unchecked: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) for k, v in self.__dict__.items()}

    @property
    def waiting(self) -> bool:
        return bool(self.pending)


def _due_delistings(session: Session, limit: int) -> list[Delisting]:
    """Pending delistings whose export has written the zone (done, or done with a failed hook)."""
    written = select(ExportRun.id).where(
        ExportRun.id == Delisting.export_id,
        ExportRun.status.in_([RunStatus.DONE.value, RunStatus.FAILED.value]),
        ExportRun.serial.is_not(None),
    )
    return list(
        session.scalars(
            select(Delisting)
            .where(Delisting.propagation_status == "pending", exists(written))
            .order_by(Delisting.id)
            .limit(limit)
        )
    )


def probe_all(
    settings: Settings, delistings: Sequence[Delisting], probe: Probe
) -> dict[int, tuple[bool, dict[str, dict[str, str]]]]:
    """Probe every (delisting, server, sample address) at once, in a thread pool: a dead server costs
    one timeout per pass, not one per question. Returns {delisting id: (gone everywhere?, answers)}."""
    questions = [
        (row.id, nameserver, address)
        for row in delistings
        for nameserver in settings.dnsbl_nameservers
        for address in sample_addresses(ipaddress.ip_network(row.network))
    ]

    def ask(question: tuple[int, str, IPAddress]) -> tuple[Answer, str]:
        _id, nameserver, address = question
        return probe(nameserver, address, settings.dnsbl_zone, settings.dns_timeout)

    with ThreadPoolExecutor(max_workers=max(1, min(PROBE_THREADS, len(questions)))) as pool:
        answers = list(pool.map(ask, questions))
    out: dict[int, tuple[bool, dict[str, dict[str, str]]]] = {
        row.id: (True, {ns: {} for ns in settings.dnsbl_nameservers}) for row in delistings
    }
    for (row_id, nameserver, address), (answer, detail) in zip(questions, answers, strict=True):
        gone, seen = out[row_id]
        seen[nameserver][str(address)] = f"{answer}: {detail}"
        out[row_id] = (gone and answer == "not_listed", seen)
    return out


def check_propagation(
    session: Session,
    settings: Settings,
    *,
    probe: Probe | None = None,
    now: datetime | None = None,
    limit: int = BATCH,
) -> PropagationReport:
    """One pass of the closed loop over the delistings an export has carried."""
    probe = probe or probe_dnsbl
    report = PropagationReport()
    cases: set[int] = set()
    due = _due_delistings(session, limit)
    probed = probe_all(settings, due, probe) if settings.dnsbl_nameservers and due else {}
    for delisting in due:
        now_i = now or utcnow()
        detail = dict(delisting.propagation_detail or {})
        detail["attempts"] = int(detail.get("attempts", 0)) + 1
        detail["checked_at"] = now_i.isoformat()
        if not settings.dnsbl_nameservers:
            delisting.propagation_status = "unchecked"
            detail["note"] = "no DNSBL name servers configured (TMSI_DNSBL_NAMESERVERS): not confirmed by DNS"
            delisting.propagation_detail = detail
            delisting.next_regression_check_at = now_i + timedelta(days=settings.regression_interval_days)
            report.unchecked.append(delisting.id)
        else:
            gone, seen = probed[delisting.id]
            detail["answers"] = seen
            delisting.propagation_detail = detail
            if gone:
                _confirm(session, settings, delisting, now_i)
                report.confirmed.append(delisting.id)
            elif delisting.propagation_deadline is not None and now_i >= delisting.propagation_deadline:
                _fail(session, delisting, seen)
                report.failed.append(delisting.id)
            else:
                report.pending.append(delisting.id)
                continue
        if delisting.case_id is not None:
            cases.add(delisting.case_id)
    for delisting in _never_exported(session, settings, now or utcnow(), limit):
        _fail(session, delisting, {}, why="no zone export carried it before the deadline")
        report.failed.append(delisting.id)
    for case_id in sorted(cases):
        case = session.get(Case, case_id)
        if case is not None:
            report.released += release_held_replies(session, case, settings, now=now)
    session.flush()
    return report


def _confirm(session: Session, settings: Settings, delisting: Delisting, now: datetime) -> None:
    delisting.propagation_status = "confirmed"
    delisting.propagated_at = now
    delisting.next_regression_check_at = now + timedelta(days=settings.regression_interval_days)
    audit.record(
        session,
        action="delisting.propagated",
        case_id=delisting.case_id,
        object_type="delisting",
        object_id=delisting.id,
        after={"propagation_status": "confirmed"},
        detail={"network": delisting.network, "servers": list(settings.dnsbl_nameservers)},
    )


def _never_exported(session: Session, settings: Settings, now: datetime, limit: int) -> list[Delisting]:
    """Pending delistings no export has carried within the deadline (the export job is not running)."""
    cutoff = now - timedelta(seconds=settings.propagation_deadline_seconds)
    return list(
        session.scalars(
            select(Delisting)
            .where(
                Delisting.propagation_status == "pending",
                Delisting.export_id.is_(None),
                Delisting.at < cutoff,
            )
            .order_by(Delisting.id)
            .limit(limit)
        )
    )


def _fail(
    session: Session,
    delisting: Delisting,
    seen: dict[str, dict[str, str]],
    why: str = "our DNSBL servers still list it after the deadline",
) -> None:
    delisting.propagation_status = "failed"
    audit.record(
        session,
        action="delisting.propagation_failed",
        case_id=delisting.case_id,
        object_type="delisting",
        object_id=delisting.id,
        before={"propagation_status": "pending"},
        after={"propagation_status": "failed"},
        detail={
            "network": delisting.network,
            "why": why,
            "deadline": delisting.propagation_deadline.isoformat()
            if delisting.propagation_deadline
            else None,
            "answers": seen,
        },
    )
    if delisting.case_id is not None:
        case = session.get(Case, delisting.case_id)
        if case is not None:
            _flag(case, "propagation_failed", delisting.network)
    log.error("delisting %s of %s failed to propagate: %s", delisting.id, delisting.network, why)


def _flag(case: Case, key: str, network: str) -> None:
    flags = dict(case.flags or {})
    flags[key] = sorted({*flags.get(key, []), network})
    case.flags = flags


# --- the held closing reply ------------------------------------------------------------------------
def hold_reason_for(session: Session, case: Case) -> str | None:
    """``'propagation'`` while any delisting of ``case`` is not yet confirmed by our DNSBL servers."""
    waiting = session.scalar(
        select(Delisting.id)
        .where(Delisting.case_id == case.id, Delisting.propagation_status.not_in(DONE_STATUSES))
        .limit(1)
    )
    return HOLD_REASON if waiting is not None else None


def queue_closing_reply(
    session: Session,
    case: Case,
    settings: Settings,
    *,
    actor: str = audit.SYSTEM,
    actor_id: int | None = None,
    extra: dict[str, Any] | None = None,
) -> OutboxMessage | None:
    """Queue the "delisted, effective now" reply: held until the delistings have propagated."""
    from tmsi.services import decide, replies

    return replies.queue_reply(
        session,
        case,
        CLOSING_TEMPLATE,
        settings,
        actor=actor,
        actor_id=actor_id,
        extra=decide.reply_extra(session, case, **(extra or {})),
        hold_reason=hold_reason_for(session, case),
    )


def release_held_replies(
    session: Session, case: Case, settings: Settings, *, now: datetime | None = None
) -> list[int]:
    """When every delisting of ``case`` is confirmed, HELD(propagation) → PENDING; returns outbox ids.

    An automatic delisting (``case.flags['closing_reply']``) gets its closing reply queued here.
    """
    if hold_reason_for(session, case) is not None:
        return []
    now = now or utcnow()
    rows = list(
        session.scalars(
            select(OutboxMessage).where(
                OutboxMessage.case_id == case.id,
                OutboxMessage.status == OutboxStatus.HELD,
                OutboxMessage.hold_reason == HOLD_REASON,
            )
        )
    )
    for row in rows:
        row.status = OutboxStatus.PENDING
        row.hold_reason = None
        row.next_attempt_at = now
        audit.record(
            session,
            action="reply.released",
            case=case,
            object_type="outbox",
            object_id=row.id,
            before={"status": "held", "hold_reason": HOLD_REASON},
            after={"status": "pending"},
            detail={"why": "every delisting of the case answers NXDOMAIN on our DNSBL servers"},
        )
    released = [row.id for row in rows]
    flags = dict(case.flags or {})
    if flags.get("closing_reply") == "after_propagation":
        flags.pop("closing_reply")
        case.flags = flags
        already = session.scalar(
            select(OutboxMessage.id)
            .where(OutboxMessage.case_id == case.id, OutboxMessage.template_key == CLOSING_TEMPLATE)
            .limit(1)
        )
        if already is None:
            closing = queue_closing_reply(session, case, settings)
            if closing is not None:
                released.append(closing.id)
    session.flush()
    return released


# --- jobs ------------------------------------------------------------------------------------------
def job_check_propagation(settings: Settings, factory: sessionmaker[Session]) -> dict[str, Any]:
    with unit_of_work(factory) as session:
        return check_propagation(session, settings).as_dict()


def wait_for_propagation(
    settings: Settings,
    factory: sessionmaker[Session],
    *,
    timeout: float,
    interval: float = 0.2,
    probe: Probe | None = None,
) -> dict[str, Any]:
    """Run the check until nothing carried by an export is pending, or ``timeout`` seconds pass (the
    periodic job carries on after that, up to each delisting's deadline)."""
    deadline = time.monotonic() + timeout
    total = PropagationReport()
    while True:
        with unit_of_work(factory) as session:
            report = check_propagation(session, settings, probe=probe)
        for key in ("confirmed", "failed", "unchecked", "released"):
            getattr(total, key).extend(getattr(report, key))
        total.pending = report.pending
        if not report.waiting or time.monotonic() >= deadline:
            return total.as_dict()
        time.sleep(interval)


# --- regression watch ------------------------------------------------------------------------------
def verification_check(settings: Settings, addresses: list[IPAddress]) -> Sequence[Any]:
    """The live verification (PTR, FCrDNS, naming verdict) of ``tmsi.services.verify``."""
    from tmsi.adapters.resolver import make_resolver
    from tmsi.services import verify

    return verify.check_addresses(make_resolver(settings), addresses, rules=verify.rules_for(settings))


def regression_addresses(settings: Settings, network: IPNetwork) -> list[IPAddress]:
    from tmsi.services import verify

    addresses, _sampled, _note = verify.addresses_to_check(network, sample_v6=settings.ipv6_sample_size)
    return addresses


def _result_value(item: Any) -> str:
    value = getattr(item, "result", "")
    return str(getattr(value, "value", value))


def _as_evidence(item: Any) -> dict[str, Any]:
    as_dict = getattr(item, "as_dict", None)
    return (
        as_dict()
        if callable(as_dict)
        else {"ip": str(getattr(item, "address", "")), "result": _result_value(item)}
    )


def regression_watch(
    session: Session,
    settings: Settings,
    *,
    check: CheckFunc | None = None,
    now: datetime | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    """Re-verify delisted networks whose check is due; flag regressions (never relist)."""
    check = check or verification_check
    now = now or utcnow()
    interval = timedelta(days=settings.regression_interval_days)
    due = list(
        session.scalars(
            select(Delisting)
            .where(
                Delisting.propagation_status.in_(DONE_STATUSES),
                Delisting.next_regression_check_at.is_not(None),
                Delisting.next_regression_check_at <= now,
            )
            .order_by(Delisting.next_regression_check_at)
            .limit(limit)
        )
    )
    summary: dict[str, list[int]] = {"ok": [], "regressed": [], "unverifiable": []}
    for delisting in due:
        network = ipaddress.ip_network(delisting.network)
        results = list(check(settings, regression_addresses(settings, network)))
        failing = [r for r in results if _result_value(r) == CheckResult.FAIL.value]
        unsure = [r for r in results if _result_value(r) == CheckResult.UNVERIFIABLE.value]
        evidence = {
            "checked_at": now.isoformat(),
            "checked": len(results),
            "failing": [_as_evidence(r) for r in failing[:50]],
            "failing_count": len(failing),
            "unverifiable_count": len(unsure),
        }
        previous = delisting.regression_status
        if failing:
            delisting.regression_status = "regressed"
            delisting.regression_evidence = evidence
            delisting.next_regression_check_at = now + interval
            summary["regressed"].append(delisting.id)
            if previous != "regressed":
                _record_regression(session, delisting, evidence)
        elif unsure:
            # "could not check" is neither a pass nor a regression: try again soon, keep the status
            delisting.regression_evidence = {**evidence, "note": "could not check; retrying"}
            delisting.next_regression_check_at = now + min(UNVERIFIABLE_RETRY, interval)
            summary["unverifiable"].append(delisting.id)
        else:
            delisting.regression_status = "ok"
            delisting.regression_evidence = evidence
            delisting.next_regression_check_at = now + interval
            summary["ok"].append(delisting.id)
            if previous == "regressed":
                audit.record(
                    session,
                    action="delisting.regression_cleared",
                    case_id=delisting.case_id,
                    object_type="delisting",
                    object_id=delisting.id,
                    before={"regression_status": previous},
                    after={"regression_status": "ok"},
                    detail={"network": delisting.network},
                )
    session.flush()
    return summary


def _record_regression(session: Session, delisting: Delisting, evidence: dict[str, Any]) -> None:
    audit.record(
        session,
        action="delisting.regressed",
        case_id=delisting.case_id,
        object_type="delisting",
        object_id=delisting.id,
        before={"regression_status": "ok"},
        after={"regression_status": "regressed"},
        detail={"network": delisting.network, **evidence, "relisted": False},
    )
    if delisting.case_id is not None:
        case = session.get(Case, delisting.case_id)
        if case is not None:
            _flag(case, "regressed", delisting.network)
    log.warning(
        "delisted %s regressed: %s address(es) fail again", delisting.network, evidence["failing_count"]
    )


def job_regression_watch(settings: Settings, factory: sessionmaker[Session]) -> dict[str, Any]:
    with unit_of_work(factory) as session:
        return regression_watch(session, settings)
