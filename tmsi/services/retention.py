"""Retention: the raw bytes of mail on cases closed more than N days ago are purged, with an audit event.

Parsed headers and text stay (the thread remains readable); only ``Message.raw`` becomes NULL and
``raw_purged_at`` records when. ``job_purge_raw_mail`` is the scheduled entry point.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from tmsi.db import unit_of_work, utcnow
from tmsi.models import Case, CaseStatus, Message
from tmsi.services import audit

if TYPE_CHECKING:
    from tmsi.config import Settings

BATCH_CASES = 200


@dataclass
class PurgeReport:
    cases: int = 0
    messages: int = 0
    bytes: int = 0


def purge_raw_mail(
    session: Session, *, older_than_days: int, now: datetime | None = None, limit: int = BATCH_CASES
) -> PurgeReport:
    """Purge raw mail of up to ``limit`` closed cases whose ``closed_at`` is older than the cut-off."""
    now = now or utcnow()
    cutoff = now - timedelta(days=older_than_days)
    pending = (
        select(Message.case_id)
        .where(Message.case_id == Case.id, Message.raw.is_not(None), Message.raw_purged_at.is_(None))
        .exists()
    )
    stmt = (
        select(Case)
        .where(
            Case.status == CaseStatus.CLOSED, Case.closed_at.is_not(None), Case.closed_at < cutoff, pending
        )
        .order_by(Case.closed_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        # Two workers sweeping at once each take different cases; neither waits for the other.
        stmt = stmt.with_for_update(skip_locked=True, of=Case)
    report = PurgeReport()
    for case in session.scalars(stmt).all():
        where = (Message.case_id == case.id, Message.raw.is_not(None), Message.raw_purged_at.is_(None))
        count, size = session.execute(
            select(func.count(Message.id), func.coalesce(func.sum(Message.raw_size), 0)).where(*where)
        ).one()
        if not count:
            continue
        session.execute(
            update(Message)
            .where(*where)
            .values(raw=None, raw_purged_at=now)
            .execution_options(synchronize_session=False)
        )
        audit.record(
            session,
            action="mail.raw_purged",
            case=case,
            detail={
                "messages": int(count),
                "bytes": int(size),
                "retention_days": older_than_days,
                "closed_at": case.closed_at.isoformat() if case.closed_at else None,
            },
        )
        report.cases += 1
        report.messages += int(count)
        report.bytes += int(size)
    return report


def job_purge_raw_mail(settings: Settings, factory: sessionmaker[Session]) -> PurgeReport:
    """Purge in batches until nothing is due; ``retention_days = 0`` keeps raw mail forever."""
    total = PurgeReport()
    if settings.retention_days <= 0:
        return total
    while True:
        with unit_of_work(factory) as session:
            batch = purge_raw_mail(session, older_than_days=settings.retention_days)
        total.cases += batch.cases
        total.messages += batch.messages
        total.bytes += batch.bytes
        if batch.cases < BATCH_CASES:
            return total
