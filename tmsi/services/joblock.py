"""Leases on named jobs (``job_locks`` rows): at most one holder per name until the lease expires.

A worker that dies keeps its lease only until ``expires_at``; the next worker then takes it over.
Each function takes a session and never commits: the caller owns the (short) transaction.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from tmsi.db import utcnow
from tmsi.models import JobLock


def new_holder() -> str:
    """A holder id naming the host and process, unique per call."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def try_acquire(
    session: Session, name: str, holder: str, ttl_seconds: float, now: datetime | None = None
) -> bool:
    """Take the lease ``name`` for ``holder`` if it is free, expired, or already ours (one upsert)."""
    now = now or utcnow()
    expires = now + timedelta(seconds=ttl_seconds)
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    upsert = insert(JobLock).values(name=name, holder=holder, expires_at=expires)
    stmt = upsert.on_conflict_do_update(
        index_elements=[JobLock.name],
        set_={"holder": holder, "expires_at": expires},
        where=(JobLock.expires_at < now) | (JobLock.holder == holder),
    ).returning(JobLock.holder)
    return session.execute(stmt).scalar_one_or_none() == holder


def renew(session: Session, name: str, holder: str, ttl_seconds: float, now: datetime | None = None) -> bool:
    """Extend our lease; False when it was lost (expired and taken by another holder)."""
    now = now or utcnow()
    result = session.execute(
        update(JobLock)
        .where(JobLock.name == name, JobLock.holder == holder)
        .values(expires_at=now + timedelta(seconds=ttl_seconds))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def release(session: Session, name: str, holder: str) -> None:
    session.execute(delete(JobLock).where(JobLock.name == name, JobLock.holder == holder))
