"""The JSON API for automation, mirroring the pages: the queue, a case, and the case actions.

Authenticated by per-user API tokens (``Authorization: Bearer tmsi_…``); reads also accept a signed-in
browser session. Actions (POST) need a token and a role that may act; the optional ``version`` field is
the optimistic lock and the ``Idempotency-Key`` header makes a retried POST safe.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, jsonify, request
from sqlalchemy import select
from sqlalchemy.orm import Session, undefer
from sqlalchemy.orm.exc import StaleDataError

from tmsi.app import get_db, get_settings
from tmsi.db import unit_of_work
from tmsi.models import AuditEvent, Case, DnsCheck, Message, OutboxMessage, User
from tmsi.services import cases, decide, replies
from tmsi.services import queue as queue_svc
from tmsi.services.outbox import HeaderInjection
from tmsi.web import actions
from tmsi.web.auth import ACT_ROLES, ALL_ROLES, current_user, request_db, request_session, role_required
from tmsi.web.openapi import openapi_document

bp = Blueprint("api_cases", __name__, url_prefix="/api/v1")


def _error(status: int, error: str, message: str, **extra: Any) -> Any:
    return jsonify(error=error, message=message, **extra), status


def case_summary(case: Case, assignee: str = "") -> dict[str, Any]:
    return {
        "reference": case.reference,
        "status": case.status.value,
        "resolution": case.resolution.value if case.resolution else None,
        "subject": case.subject,
        "requester_email": case.requester_email,
        "requester_name": case.requester_name,
        "requester_domain": case.requester_domain,
        "assignee": assignee or None,
        "authority_result": case.authority_result.value,
        "verification_result": case.verification_result.value,
        "created_at": case.created_at.isoformat(),
        "updated_at": case.updated_at.isoformat(),
        "waiting_since": case.waiting_since.isoformat() if case.waiting_since else None,
        "version": case.lock_version,
    }


def _case_detail(db: Session, case: Case) -> dict[str, Any]:
    assignee = db.get(User, case.assignee_id) if case.assignee_id else None
    out = case_summary(case, assignee.email if assignee else "")
    targets = []
    for t in case.targets:
        latest = db.scalars(
            select(DnsCheck)
            .where(DnsCheck.target_id == t.id)
            .order_by(DnsCheck.checked_at.desc(), DnsCheck.id.desc())
            .limit(50)
        ).all()
        targets.append(
            {
                "id": t.id,
                "network": t.network,
                "source_text": t.source_text,
                "coverage": t.coverage.value,
                "status": t.status.value,
                "summary": t.summary or {},
                "checks": [
                    {
                        "address": c.address,
                        "result": c.result.value,
                        "name_verdict": c.name_verdict.value,
                        "ptr_names": c.ptr_names,
                        "reasons": c.reasons,
                        "checked_at": c.checked_at.isoformat(),
                    }
                    for c in latest
                ],
            }
        )
    messages = db.scalars(
        select(Message)
        .where(Message.case_id == case.id)
        .options(undefer(Message.body_text))
        .order_by(Message.received_at, Message.id)
    ).all()
    outbox = db.scalars(
        select(OutboxMessage).where(OutboxMessage.case_id == case.id).order_by(OutboxMessage.id)
    )
    timeline = db.scalars(
        select(AuditEvent).where(AuditEvent.case_id == case.id).order_by(AuditEvent.at, AuditEvent.id)
    )
    out.update(
        {
            "authority_evidence": case.authority_evidence or {},
            "merged_into": None,
            "targets": targets,
            "messages": [
                {
                    "id": m.id,
                    "direction": m.direction.value,
                    "kind": m.kind.value if m.kind else None,
                    "from": m.from_addr,
                    "to": m.to_addrs,
                    "subject": m.subject,
                    "received_at": m.received_at.isoformat(),
                    "body_text": m.body_text,
                }
                for m in messages
            ],
            "outbox": [
                {
                    "id": o.id,
                    "status": o.status.value,
                    "to": o.rcpt_to,
                    "subject": o.subject,
                    "attempts": o.attempts,
                    "last_error": o.last_error,
                    "sent_at": o.sent_at.isoformat() if o.sent_at else None,
                }
                for o in outbox
            ],
            "timeline": [
                {
                    "at": e.at.isoformat(),
                    "actor": e.actor,
                    "action": e.action,
                    "before": e.before,
                    "after": e.after,
                    "detail": e.detail,
                }
                for e in timeline
            ],
        }
    )
    if case.merged_into_id:
        target = db.get(Case, case.merged_into_id)
        out["merged_into"] = target.reference if target else None
    return out


@bp.get("/openapi.json")
def openapi() -> Any:
    return jsonify(openapi_document())


@bp.get("/cases")
@role_required(ALL_ROLES)
def list_cases() -> Any:
    user = current_user()
    try:
        flt = queue_svc.parse_filter(request.args)
    except queue_svc.FilterError as exc:
        return _error(400, "invalid_filter", str(exc))
    page = queue_svc.search(
        request_db(),
        flt,
        user_id=user.id if user else None,
        counts_ttl=0.0 if current_app.testing else 5.0,
    )
    return jsonify(
        total=page.total,
        page=flt.page,
        per_page=flt.per_page,
        pages=page.pages,
        counts=page.counts,
        cases=[
            case_summary(r.case, r.assignee_email) | {"networks": r.networks, "target_count": r.target_count}
            for r in page.rows
        ],
    )


@bp.get("/cases/<reference>")
@role_required(ALL_ROLES)
def get_case(reference: str) -> Any:
    db = request_session()
    case = cases.get_by_reference(db, reference)
    if case is None:
        return _error(404, "not_found", f"there is no case {reference}")
    return jsonify(_case_detail(db, case))


@bp.post("/cases/<reference>/<action>")
@role_required(ACT_ROLES)
def case_action(reference: str, action: str) -> Any:
    user = current_user()
    assert user is not None
    if not user.via_token:
        # Cookies are not accepted for writes here (no CSRF token on the API): use an API token.
        return _error(401, "token_required", "API actions need 'Authorization: Bearer <token>'")
    handler = actions.ACTIONS.get(action)
    if handler is None:
        return _error(
            404, "unknown_action", f"there is no action {action!r}", actions=sorted(actions.ACTIONS)
        )
    body = request.get_json(silent=True)
    if body is None and request.content_length:
        return _error(400, "invalid_json", "the request body must be a JSON object")
    if body is not None and not isinstance(body, dict):
        return _error(400, "invalid_json", "the request body must be a JSON object")
    params = actions.Params(body or {})
    token = actions.idempotency_token(request.headers.get("Idempotency-Key", ""))
    settings = get_settings()
    factory = get_db().factory
    try:
        with actions.idempotency_scope(token), unit_of_work(factory) as db:
            case = cases.get_by_reference(db, reference)
            if case is None:
                abort(404, description=f"there is no case {reference}")
            outcome = handler(db, settings, case, params, user.actor, token)
    except decide.AlreadyDone as exc:
        return _error(409, "already_done", str(exc))
    except decide.StaleCase as exc:
        return _error(409, "stale", str(exc))
    except StaleDataError:
        return _error(409, "stale", "the case changed at the same moment; read it again and retry")
    except HeaderInjection as exc:
        return _error(400, "header_injection", str(exc))
    except replies.TemplateRenderError as exc:
        return _error(400, "template_error", str(exc))
    except decide.DecisionError as exc:
        return _error(400, "not_done", str(exc))
    how = actions.after_commit(outcome, settings, factory, user.actor)
    case = cases.get_by_reference(request_session(), outcome.reference)
    assert case is not None
    return jsonify(
        ok=True,
        message=outcome.message,
        verification=how or None,
        data=outcome.data,
        case=case_summary(case),
    )
