"""The audit log: every state change, decision and outgoing mail is one appended event."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from tmsi.db import utcnow
from tmsi.models import AuditEvent, Case

SYSTEM = "system"


def record(
    session: Session,
    *,
    action: str,
    actor: str = SYSTEM,
    actor_id: int | None = None,
    case: Case | None = None,
    case_id: int | None = None,
    object_type: str = "",
    object_id: str | int = "",
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    detail: dict[str, Any] | None = None,
    request_id: str = "",
) -> AuditEvent:
    """Append one audit event (flushed, never committed here)."""
    if case is not None and case.id is None:
        session.flush()
    event = AuditEvent(
        at=utcnow(),
        actor=actor,
        actor_id=actor_id,
        action=action,
        case_id=case.id if case is not None else case_id,
        object_type=object_type or ("case" if case is not None else ""),
        object_id=str(object_id or (case.reference if case is not None else "")),
        before=before or {},
        after=after or {},
        detail=detail or {},
        request_id=request_id or _current_request_id(),
    )
    session.add(event)
    session.flush()
    return event


def _current_request_id() -> str:
    try:
        from flask import g, has_request_context

        if has_request_context():
            return str(getattr(g, "request_id", ""))
    except ImportError:  # pragma: no cover
        pass
    return ""
