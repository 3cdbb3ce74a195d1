"""Named operations on cases: open (with a human reference), transition (checked, audited), reopen."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from tmsi.db import utcnow
from tmsi.models import Case, CaseCounter, CaseStatus, Resolution
from tmsi.services import audit

S = CaseStatus
OPEN_STATES = frozenset({S.NEW, S.VERIFYING, S.AWAITING_REQUESTER, S.READY_FOR_DECISION})
DECIDED_STATES = frozenset({S.DELISTED, S.REJECTED})

# Which state may follow which (DOMAIN.md lifecycle, refined): decisions need an open case;
# a closed case is reopened by a new message or an analyst; a decision can be revisited.
ALLOWED: dict[CaseStatus, frozenset[CaseStatus]] = {
    S.NEW: frozenset(
        {S.VERIFYING, S.AWAITING_REQUESTER, S.READY_FOR_DECISION, S.DELISTED, S.REJECTED, S.CLOSED}
    ),
    S.VERIFYING: frozenset({S.AWAITING_REQUESTER, S.READY_FOR_DECISION, S.DELISTED, S.REJECTED, S.CLOSED}),
    S.AWAITING_REQUESTER: frozenset({S.VERIFYING, S.READY_FOR_DECISION, S.DELISTED, S.REJECTED, S.CLOSED}),
    S.READY_FOR_DECISION: frozenset({S.VERIFYING, S.AWAITING_REQUESTER, S.DELISTED, S.REJECTED, S.CLOSED}),
    S.DELISTED: frozenset({S.CLOSED, S.VERIFYING, S.AWAITING_REQUESTER}),
    S.REJECTED: frozenset({S.CLOSED, S.VERIFYING, S.AWAITING_REQUESTER}),
    S.CLOSED: frozenset({S.NEW, S.VERIFYING, S.AWAITING_REQUESTER, S.READY_FOR_DECISION}),
}


class InvalidTransition(ValueError):
    pass


def format_reference(year: int, number: int) -> str:
    return f"TMSI-{year}-{number:06d}"


_NUMBERS = "tmsi.cases.numbers"


@contextmanager
def batch_references(session: Session) -> Iterator[None]:
    """Within the block, only the first new reference of a year is an upsert of the counter; the next
    ones count on in memory, and the block's end writes the last number back (one statement).

    Still gap-free and safe for concurrent workers: the upsert locks the year's counter row until the
    transaction ends, exactly as allocating one at a time does. Nothing is written if the block raises.
    """
    if session.info.get(_NUMBERS) is not None:
        yield
        return
    numbers: dict[int, list[int]] = {}  # year -> [first allocated, last allocated]
    session.info[_NUMBERS] = numbers
    try:
        yield
    finally:
        session.info.pop(_NUMBERS, None)
    for year, (first, last) in numbers.items():
        if last != first:
            session.execute(update(CaseCounter).where(CaseCounter.year == year).values(value=last))


def next_reference(session: Session, now: datetime | None = None) -> str:
    """Allocate the next ``TMSI-YYYY-NNNNNN`` atomically (one upsert; safe for concurrent workers)."""
    year = (now or utcnow()).year
    numbers: dict[int, list[int]] | None = session.info.get(_NUMBERS)
    if numbers is not None and year in numbers:
        numbers[year][1] += 1
        return format_reference(year, numbers[year][1])
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = (
        insert(CaseCounter)
        .values(year=year, value=1)
        .on_conflict_do_update(index_elements=[CaseCounter.year], set_={"value": CaseCounter.value + 1})
        .returning(CaseCounter.value)
    )
    number = session.execute(stmt).scalar_one()
    if numbers is not None:
        numbers[year] = [number, number]
    return format_reference(year, number)


def open_case(
    session: Session,
    *,
    subject: str,
    requester_email: str,
    requester_name: str = "",
    actor: str = audit.SYSTEM,
    now: datetime | None = None,
) -> Case:
    now = now or utcnow()
    email = requester_email.strip().lower()
    case = Case(
        reference=next_reference(session, now),
        status=CaseStatus.NEW,
        subject=subject[:998],
        requester_email=email,
        requester_name=requester_name[:255],
        requester_domain=email.rpartition("@")[2],
        created_at=now,
        updated_at=now,
        waiting_since=now,
        last_inbound_at=now,
        flags={},
        authority_evidence={},
    )
    session.add(case)
    audit.record(session, action="case.opened", actor=actor, case=case, after={"status": case.status.value})
    return case


def transition(
    session: Session,
    case: Case,
    new_status: CaseStatus,
    *,
    actor: str = audit.SYSTEM,
    actor_id: int | None = None,
    reason: str = "",
    resolution: Resolution | None = None,
    now: datetime | None = None,
) -> bool:
    """Move ``case`` to ``new_status`` if allowed; record the audit event. Returns False if unchanged."""
    old = case.status
    if new_status == old and resolution is None:
        return False
    if new_status != old and new_status not in ALLOWED[old]:
        raise InvalidTransition(f"{case.reference}: {old.value} → {new_status.value} is not allowed")
    now = now or utcnow()
    before = {"status": old.value, "resolution": case.resolution.value if case.resolution else None}
    case.status = new_status
    case.updated_at = now
    if resolution is not None:
        case.resolution = resolution
    if new_status in DECIDED_STATES:
        case.decided_at = now
    if new_status == S.CLOSED:
        case.closed_at = now
    elif old == S.CLOSED:
        case.closed_at = None
        case.resolution = None
    if new_status in {S.READY_FOR_DECISION, S.NEW} or (old == S.CLOSED and new_status in OPEN_STATES):
        case.waiting_since = now
    elif new_status in {S.AWAITING_REQUESTER, S.CLOSED} | DECIDED_STATES:
        case.waiting_since = None
    after = {"status": new_status.value, "resolution": case.resolution.value if case.resolution else None}
    audit.record(
        session,
        action="case.status",
        actor=actor,
        actor_id=actor_id,
        case=case,
        before=before,
        after=after,
        detail={"reason": reason} if reason else {},
    )
    return True


def reopen_on_message(session: Session, case: Case, *, now: datetime | None = None) -> bool:
    """A new message from the requester on a closed (or decided/awaiting) case puts it back to work."""
    now = now or utcnow()
    case.last_inbound_at = now
    if case.status in {S.CLOSED, S.AWAITING_REQUESTER, S.DELISTED, S.REJECTED}:
        return transition(session, case, S.VERIFYING, reason="new message from the requester", now=now)
    return False


def get_by_reference(session: Session, reference: str) -> Case | None:
    return session.scalar(select(Case).where(Case.reference == reference.upper()))
