"""The audit log: every state change, decision and outgoing mail is one appended event."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from sqlalchemy import insert
from sqlalchemy.orm import Session

from tmsi.db import utcnow
from tmsi.models import AuditEvent, Case

SYSTEM = "system"
_DEFERRED = "tmsi.audit.deferred"


class HasId(Protocol):
    id: Any


def record(
    session: Session,
    *,
    action: str,
    actor: str = SYSTEM,
    actor_id: int | None = None,
    case: Case | None = None,
    case_id: int | None = None,
    object_type: str = "",
    object_id: str | int | HasId = "",
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    detail: dict[str, Any] | None = None,
    request_id: str = "",
) -> None:
    """Append one audit event (flushed, never committed here).

    ``object_id`` may be the ORM object itself when it has no id yet. Inside :func:`deferred` the event is
    only written when the block ends, after one flush gave every new row its id.
    """
    spec = {
        "at": utcnow(),
        "actor": actor,
        "actor_id": actor_id,
        "action": action,
        "case": case,
        "case_id": case_id,
        "object_type": object_type,
        "object_id": object_id,
        "before": before,
        "after": after,
        "detail": detail,
        "request_id": request_id or _current_request_id(),
    }
    pending: list[dict[str, Any]] | None = session.info.get(_DEFERRED)
    if pending is not None:
        pending.append(spec)
        return
    unsaved = case is not None and case.id is None
    if unsaved or (not isinstance(object_id, str | int) and object_id.id is None):
        session.flush()
    session.add(_event(spec))
    session.flush()


def _event(spec: dict[str, Any]) -> AuditEvent:
    return AuditEvent(**_values(spec))


def _values(spec: dict[str, Any]) -> dict[str, Any]:
    case: Case | None = spec["case"]
    object_id = spec["object_id"]
    if not isinstance(object_id, str | int):
        object_id = object_id.id
    return {
        "at": spec["at"],
        "actor": spec["actor"],
        "actor_id": spec["actor_id"],
        "action": spec["action"],
        "case_id": case.id if case is not None else spec["case_id"],
        "object_type": spec["object_type"] or ("case" if case is not None else ""),
        "object_id": str(object_id or (case.reference if case is not None else "")),
        "before": spec["before"] or {},
        "after": spec["after"] or {},
        "detail": spec["detail"] or {},
        "request_id": spec["request_id"],
    }


@contextmanager
def deferred(session: Session) -> Iterator[None]:
    """Collect the audit events of a block and write them at its end, in order, after one flush.

    For bulk work (a batch of mail): the rows the events name get their ids in one flush instead of one
    flush per event. If the block raises, nothing is written (the caller rolls back).
    """
    if session.info.get(_DEFERRED) is not None:  # already collecting: the outer block writes
        yield
        return
    pending: list[dict[str, Any]] = []
    session.info[_DEFERRED] = pending
    try:
        yield
    finally:
        session.info.pop(_DEFERRED, None)
    if pending:
        session.flush()
        # A bulk INSERT of plain rows (no ORM objects): the events are never read back in this transaction.
        session.execute(insert(AuditEvent), [_values(spec) for spec in pending])


def _current_request_id() -> str:
    try:
        from flask import g, has_request_context

        if has_request_context():
            return str(getattr(g, "request_id", ""))
    except ImportError:  # pragma: no cover
        pass
    return ""
