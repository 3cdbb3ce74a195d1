"""Mail outside cases (``/mail``): the quarantine, spam and automatic mail that threaded to no case, each
downloadable as stored, and a quarantined message can be run through ingest again (audited)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import Select, or_, select

from tmsi.app import get_db, get_settings
from tmsi.db import unit_of_work
from tmsi.domain.ids import parse_page
from tmsi.models import Case, Direction, Message, MessageKind, MessageStatus
from tmsi.services.ingest import IngestResult, reprocess_message
from tmsi.web.auth import ACT_ROLES, ALL_ROLES, request_session, require_user, role_required
from tmsi.web.ui import send_raw

bp = Blueprint("mailbox", __name__)

MAIL_PAGE = 50
STATUSES = ("quarantined", "processed", "stored", "all")
KINDS = tuple(kind.value for kind in MessageKind)
FILTER_KEYS = ("status", "kind", "q")


@dataclass(frozen=True)
class MailFilter:
    status: str = "quarantined"
    kind: str = ""
    text: str = ""
    page: int = 1

    def args(self, page: int | None = None) -> dict[str, Any]:
        """The query string of this filter (and ``page``): for links, the form, and the redirect back."""
        args: dict[str, Any] = {"status": self.status, "kind": self.kind or None, "q": self.text or None}
        chosen = page if page is not None else self.page
        if chosen > 1:
            args["page"] = chosen
        return {key: value for key, value in args.items() if value is not None}


def _mail_filter(values: Any) -> tuple[MailFilter, str]:
    """The filter asked for, and an error text for a value we do not know (that filter is dropped)."""
    status = values.get("status") or "quarantined"
    kind = values.get("kind") or ""
    errors = []
    if status not in STATUSES:
        errors.append(f"status: one of {', '.join(STATUSES)}")
        status = "quarantined"
    if kind and kind not in KINDS:
        errors.append(f"kind: one of {', '.join(KINDS)}")
        kind = ""
    try:
        page = parse_page(values.get("page"))
    except ValueError:
        page = 1
    text = (values.get("q") or "").strip()[:200]
    return MailFilter(status, kind, text, page), "; ".join(errors)


def _outside_cases() -> Any:
    return (Message.direction == Direction.IN) & Message.case_id.is_(None)


def _listing(flt: MailFilter) -> Select[*tuple[Any, ...]]:
    stmt = select(
        Message.id,
        Message.received_at,
        Message.from_addr,
        Message.from_name,
        Message.subject,
        Message.kind,
        Message.status,
        Message.quarantine_reason,
        Message.parse_error,
        Message.raw_purged_at,
    ).where(_outside_cases())
    if flt.status != "all":
        stmt = stmt.where(Message.status == MessageStatus(flt.status))
    if flt.kind:
        stmt = stmt.where(Message.kind == MessageKind(flt.kind))
    if flt.text:
        stmt = stmt.where(
            or_(
                Message.from_addr.icontains(flt.text, autoescape=True),
                Message.from_name.icontains(flt.text, autoescape=True),
                Message.subject.icontains(flt.text, autoescape=True),
            )
        )
    return (
        stmt.order_by(Message.received_at.desc(), Message.id.desc())
        .limit(MAIL_PAGE + 1)
        .offset((flt.page - 1) * MAIL_PAGE)
    )


@bp.get("/mail")
@role_required(ALL_ROLES)
def mail_list() -> Any:
    flt, error = _mail_filter(request.args)
    rows = request_session().execute(_listing(flt)).all()
    page = {"rows": rows[:MAIL_PAGE], "more": len(rows) > MAIL_PAGE}  # one row more than shown: a next page
    html = render_template("ui/mail.html", flt=flt, statuses=STATUSES, kinds=KINDS, error=error, **page)
    return html, 400 if error else 200


@bp.get("/mail/<int:message_id>/raw")
@role_required(ALL_ROLES)
def mail_raw(message_id: int) -> Any:
    found = (
        request_session()
        .execute(select(Message.id, Message.raw).where(Message.id == message_id, _outside_cases()))
        .first()
    )
    if found is None:
        abort(404, description="There is no such message outside cases.")
    return send_raw(found.raw, f"message-{message_id}.eml")


def _outcome(result: IngestResult) -> tuple[str, str]:
    """The flash text and category of one reprocessing."""
    if result.duplicate:
        where = f" (case {result.case_reference})" if result.case_reference else ""
        return f"duplicate of a message already stored{where}; marked duplicate", "info"
    if result.status == MessageStatus.QUARANTINED.value:
        return f"still quarantined: {result.error or 'see the reason below'}", "error"
    if result.new_case:
        return f"processed: opened case {result.case_reference}", "success"
    if result.case_reference:
        return f"processed: added to case {result.case_reference}", "success"
    return f"processed as {result.kind or 'unknown kind'}: no case", "success"


@bp.post("/mail/<int:message_id>/reprocess")
@role_required(ACT_ROLES)
def mail_reprocess(message_id: int) -> Any:
    user = require_user()
    flt, _ = _mail_filter(request.form)
    back = redirect(url_for("mailbox.mail_list", **flt.args()))
    with unit_of_work(get_db().factory) as db:
        # The row lock makes a double submit wait for the first one, then find the message processed.
        found = db.execute(
            select(Message.status, Message.case_id)
            .where(Message.id == message_id, Message.direction == Direction.IN)
            .with_for_update()
        ).first()
        if found is None:
            abort(404, description="There is no such received message.")
        if found.status != MessageStatus.QUARANTINED:
            reference = db.scalar(select(Case.reference).where(Case.id == found.case_id))
            where = f" (case {reference})" if reference else ""
            flash(f"Message {message_id} is already {found.status.value}{where}: nothing done.", "info")
            return back
        try:
            result = reprocess_message(db, message_id, get_settings(), actor=user.email, actor_id=user.id)
        except ValueError as exc:  # the raw bytes were purged
            flash(f"Not done: {exc}", "error")
            return back
    text, category = _outcome(result)
    flash(f"Message {message_id}: {text}", category)
    return back
