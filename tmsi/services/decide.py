"""The analyst's verbs on a case: assign, note, verify, delist, reject, ask, reply, merge, split, close,
reopen. Each checks the optimistic lock and the form's idempotency token, writes audit events through
``cases.transition``/``audit.record``, and never commits.

Verification is started through ``dispatch_verification`` (a job queue when there is one); listings are
split by :mod:`tmsi.services.delist`.
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from tmsi.config import Settings
from tmsi.db import utcnow
from tmsi.domain.networks import IPNetwork, NetworkError, parse_network
from tmsi.models import (
    AuditEvent,
    Case,
    CaseNote,
    CaseStatus,
    CaseTarget,
    CheckResult,
    Coverage,
    Delisting,
    DnsCheck,
    Message,
    OutboxMessage,
    OutboxStatus,
    Resolution,
    Role,
    TargetStatus,
    User,
)
from tmsi.services import audit, cases, replies
from tmsi.services import delist as delist_engine
from tmsi.services.listings import coverage_of, find_overlapping
from tmsi.services.users import Actor

log = logging.getLogger(__name__)
S = CaseStatus
ASSIGNABLE_ROLES = frozenset({Role.ANALYST, Role.LEAD, Role.ADMIN})


class DecisionError(ValueError):
    """An action that cannot be done as asked; the message is shown to the analyst as is."""


class StaleCase(DecisionError):
    """The case changed since the form was rendered (another analyst, or a double submit)."""

    def __init__(self, case: Case, expected: int) -> None:
        super().__init__(
            f"{case.reference} was changed by someone else since you opened it (version {expected}, now "
            f"{case.lock_version}). Nothing was done: reload the page, check what changed, and submit again."
        )
        self.reference = case.reference


class AlreadyDone(DecisionError):
    """The same form (idempotency token) was already submitted and carried out."""

    def __init__(self, case: Case) -> None:
        super().__init__(f"This form was already submitted for {case.reference}; it was done once.")


# --- guards -------------------------------------------------------------------------------------
def already_done(session: Session, case_id: int, token: str) -> bool:
    """Whether an audit event of ``case_id`` was written under this form token (request id ``…~token``)."""
    if not token:
        return False
    return (
        session.scalar(
            select(AuditEvent.id)
            .where(
                AuditEvent.case_id == case_id, AuditEvent.request_id.endswith(f"~{token}", autoescape=True)
            )
            .limit(1)
        )
        is not None
    )


def guard(session: Session, case: Case, expected_version: int | None, token: str = "") -> None:
    """Refuse a repeated form (same token) and a form rendered from an older version of the case."""
    if token and already_done(session, case.id, token):
        raise AlreadyDone(case)
    if expected_version is not None and expected_version != case.lock_version:
        raise StaleCase(case, expected_version)


def _touch(case: Case, now: datetime) -> None:
    # Any action bumps updated_at and so the lock version: the next stale form is refused.
    case.updated_at = now


def _move(
    session: Session,
    case: Case,
    status: CaseStatus,
    actor: Actor,
    reason: str = "",
    resolution: Resolution | None = None,
    now: datetime | None = None,
) -> None:
    try:
        cases.transition(
            session,
            case,
            status,
            actor=actor.email,
            actor_id=actor.id,
            reason=reason,
            resolution=resolution,
            now=now,
        )
    except cases.InvalidTransition as exc:
        raise DecisionError(str(exc)) from None


# --- assign, note, close, reopen -------------------------------------------------------------------
def assign(
    session: Session,
    case: Case,
    assignee: User | None,
    actor: Actor,
    *,
    expected_version: int | None = None,
    token: str = "",
) -> None:
    guard(session, case, expected_version, token)
    if assignee is not None and (not assignee.active or assignee.role not in ASSIGNABLE_ROLES):
        raise DecisionError(f"{assignee.email} cannot be assigned cases (disabled or {assignee.role.value})")
    old = session.get(User, case.assignee_id) if case.assignee_id else None
    new_id = assignee.id if assignee is not None else None
    if case.assignee_id == new_id:
        return
    case.assignee_id = new_id
    _touch(case, utcnow())
    audit.record(
        session,
        action="case.assigned",
        actor=actor.email,
        actor_id=actor.id,
        case=case,
        before={"assignee": old.email if old else None},
        after={"assignee": assignee.email if assignee else None},
    )


def add_note(
    session: Session,
    case: Case,
    body: str,
    actor: Actor,
    *,
    expected_version: int | None = None,
    token: str = "",
) -> CaseNote:
    guard(session, case, expected_version, token)
    text = body.strip()
    if not text:
        raise DecisionError("the note is empty")
    note = CaseNote(case_id=case.id, author_id=actor.id, body=text[:20000])
    session.add(note)
    _touch(case, utcnow())
    session.flush()
    audit.record(
        session,
        action="case.note",
        actor=actor.email,
        actor_id=actor.id,
        case=case,
        object_type="note",
        object_id=note.id,
        detail={"excerpt": text[:200]},
    )
    return note


def close(
    session: Session,
    case: Case,
    actor: Actor,
    *,
    resolution: Resolution | None = None,
    reason: str = "",
    expected_version: int | None = None,
    token: str = "",
) -> None:
    guard(session, case, expected_version, token)
    if case.status == S.CLOSED:
        raise DecisionError(f"{case.reference} is already closed")
    final = resolution or case.resolution or Resolution.NO_ACTION
    now = utcnow()
    _touch(case, now)
    _move(session, case, S.CLOSED, actor, reason, final, now)


def close_as_spam(
    session: Session, case: Case, actor: Actor, *, expected_version: int | None = None, token: str = ""
) -> None:
    close(
        session,
        case,
        actor,
        resolution=Resolution.SPAM,
        reason="spam",
        expected_version=expected_version,
        token=token,
    )


def reopen(
    session: Session,
    case: Case,
    actor: Actor,
    *,
    reason: str = "",
    expected_version: int | None = None,
    token: str = "",
) -> None:
    guard(session, case, expected_version, token)
    if case.status != S.CLOSED:
        raise DecisionError(f"{case.reference} is not closed")
    now = utcnow()
    _touch(case, now)
    _move(session, case, S.NEW, actor, reason or "reopened", None, now)


# --- verification -------------------------------------------------------------------------------
def _select_targets(case: Case, target_ids: Sequence[int] | None) -> list[CaseTarget]:
    if not target_ids:
        return list(case.targets)
    wanted = set(target_ids)
    chosen = [t for t in case.targets if t.id in wanted]
    if len(chosen) != len(wanted):
        raise DecisionError("a selected target does not belong to this case")
    return chosen


def request_verification(
    session: Session,
    case: Case,
    actor: Actor,
    *,
    target_ids: Sequence[int] | None = None,
    expected_version: int | None = None,
    token: str = "",
) -> list[int]:
    """Mark the targets for checking now and move the case to verifying. The caller dispatches the
    returned target ids with :func:`dispatch_verification` after the commit."""
    guard(session, case, expected_version, token)
    targets = [t for t in _select_targets(case, target_ids) if t.status != TargetStatus.DELISTED]
    if not targets:
        raise DecisionError("no target to verify")
    now = utcnow()
    for target in targets:
        target.next_check_at = now
    _touch(case, now)
    audit.record(
        session,
        action="case.verify_requested",
        actor=actor.email,
        actor_id=actor.id,
        case=case,
        detail={"targets": [t.network for t in targets]},
    )
    if case.status != S.VERIFYING:
        _move(session, case, S.VERIFYING, actor, "verification requested", None, now)
    return [t.id for t in targets]


VerifyDispatcher = Callable[[Settings, "sessionmaker[Session]", list[int], str], str]


def dispatch_verification(
    settings: Settings, factory: sessionmaker[Session], target_ids: list[int], actor: str
) -> str:
    """Hand targets to the verification engine; returns how (for the flash message).

    With a real task queue (Huey on SQLite/Redis) the targets go to ``tmsi.jobs.request_verification``
    (long ranges fan out to many workers). Otherwise ``tmsi.services.verify.job_verify_target`` runs in a
    background thread; either way each run records its own progress, which the case page polls.
    """
    if settings.huey_storage != "memory":
        try:
            jobs = importlib.import_module("tmsi.jobs")
        except ImportError:
            jobs = None
        request = getattr(jobs, "request_verification", None)
        if request is not None:
            for target_id in target_ids:
                request(settings, target_id)
            return "queued for the workers"
    try:
        verify = importlib.import_module("tmsi.services.verify")
    except ImportError:
        return "left for the scheduler (the verification engine is not installed)"
    job = getattr(verify, "job_verify_target", None)
    if job is None:
        return "left for the scheduler"

    def run() -> None:
        for target_id in target_ids:
            try:
                job(settings, factory, target_id, "manual", actor)
            except Exception:  # a failed run is recorded by the engine; go on with the next target
                log.exception("verification of target %s failed", target_id)

    threading.Thread(target=run, name="tmsi-verify-now", daemon=True).start()
    return "started"


# --- delisting ----------------------------------------------------------------------------------
def _inside(net: IPNetwork, network_text: str) -> bool:
    outer = ipaddress.ip_network(network_text)
    return net.version == outer.version and net.subnet_of(outer)  # type: ignore[arg-type]


def parse_selection(case: Case, target_ids: Sequence[int], only: str) -> list[tuple[CaseTarget, IPNetwork]]:
    """Which networks to delist: whole selected targets, or the addresses/CIDRs in ``only`` (each must lie
    inside one of the case's targets)."""
    chosen = _select_targets(case, target_ids) if target_ids else []
    parts = [p for p in only.replace(",", " ").split() if p]
    if not parts:
        if not chosen:
            raise DecisionError("select at least one target")
        return [(t, ipaddress.ip_network(t.network)) for t in chosen]
    pool = chosen or list(case.targets)
    out: list[tuple[CaseTarget, IPNetwork]] = []
    for part in parts:
        try:
            net = parse_network(part)
        except NetworkError as exc:
            raise DecisionError(str(exc)) from None
        owner = next((t for t in pool if _inside(net, t.network)), None)
        if owner is None:
            raise DecisionError(f"{net} is not inside a selected target of this case")
        out.append((owner, net))
    return out


def delist(
    session: Session,
    case: Case,
    actor: Actor,
    selection: Sequence[tuple[CaseTarget, IPNetwork]],
    *,
    reason: str = "",
    expected_version: int | None = None,
    token: str = "",
) -> list[str]:
    """Delist whole targets or parts of them (a listing wider than the part is split)."""
    guard(session, case, expected_version, token)
    if not selection:
        raise DecisionError("nothing selected to delist")
    now = utcnow()
    removed: list[str] = []
    for target, network in selection:
        before = {"status": target.status.value, "coverage": target.coverage.value}
        removed.extend(
            delist_engine.delist_network(session, case=case, target=target, network=network, actor=actor)
        )
        target_net = ipaddress.ip_network(target.network)
        remaining = find_overlapping(session, target_net)
        target.coverage = coverage_of(target_net, remaining)
        summary = dict(target.summary or {})
        summary["delisted"] = sorted({*summary.get("delisted", []), str(network)})
        target.summary = summary
        if network == target_net or target.coverage == Coverage.NOT_LISTED:
            target.status = TargetStatus.DELISTED
        audit.record(
            session,
            action="target.delisted",
            actor=actor.email,
            actor_id=actor.id,
            case=case,
            object_type="target",
            object_id=target.network,
            before=before,
            after={"status": target.status.value, "coverage": target.coverage.value},
            detail={"network": str(network), "partial": network != target_net, "reason": reason},
        )
    whole = all(
        t.status in {TargetStatus.DELISTED, TargetStatus.EXCLUDED} or t.coverage == Coverage.NOT_LISTED
        for t in case.targets
    )
    _touch(case, now)
    _move(
        session,
        case,
        S.DELISTED,
        actor,
        reason or "delisted",
        Resolution.DELISTED if whole else Resolution.PARTIALLY_DELISTED,
        now,
    )
    return removed


# --- reject, ask, reply -----------------------------------------------------------------------------
def reply_extra(session: Session, case: Case, **given: Any) -> dict[str, Any]:
    """The values every default template may use (so a template never fails for a missing key)."""
    delisted = [
        {"network": n}
        for n in session.scalars(
            select(Delisting.network).where(Delisting.case_id == case.id).order_by(Delisting.id)
        )
    ]
    still = [
        {"network": t.network, "reason": t.coverage.value.replace("_", " ")}
        for t in case.targets
        if t.coverage != Coverage.NOT_LISTED and t.status != TargetStatus.DELISTED
    ]
    target_ids = [t.id for t in case.targets]
    failing: list[dict[str, str]] = []
    if target_ids:
        seen: set[str] = set()
        for check in session.scalars(
            select(DnsCheck)
            .where(DnsCheck.target_id.in_(target_ids))
            .order_by(DnsCheck.checked_at.desc())
            .limit(500)
        ):
            if check.address in seen:
                continue
            seen.add(check.address)
            if check.result == CheckResult.FAIL:
                failing.append(
                    {"address": check.address, "reason": "; ".join(map(str, check.reasons or [])) or "fail"}
                )
    extra: dict[str, Any] = {
        "delisted": delisted,
        "still_listed": still,
        "failing": failing,
        "checks": list((case.authority_evidence or {}).get("checks", [])),
        "reason": "",
        "question": "",
        "masked": list((case.flags or {}).get("masked", [])),
    }
    extra.update({k: v for k, v in given.items() if v is not None})
    return extra


def send_reply(
    session: Session,
    settings: Settings,
    case: Case,
    actor: Actor,
    *,
    template: str,
    subject: str | None = None,
    body: str | None = None,
    to: str | None = None,
    extra: dict[str, Any] | None = None,
    expected_version: int | None = None,
    token: str = "",
) -> OutboxMessage:
    """Queue the analyst's reply (template, possibly edited) through the outbox. Raises HeaderInjection
    for a CR/LF in the subject or address, TemplateRenderError for a broken template."""
    guard(session, case, expected_version, token)
    row = replies.queue_reply(
        session,
        case,
        template,
        settings,
        actor=actor.email,
        actor_id=actor.id,
        to=to or None,
        extra=reply_extra(session, case, **(extra or {})),
        subject=subject,
        body=body,
    )
    if row is None:
        raise DecisionError("the reply was not sent (see the timeline for the reason)")
    _touch(case, utcnow())
    return row


def reject(
    session: Session,
    settings: Settings,
    case: Case,
    actor: Actor,
    *,
    reason: str,
    send: bool = True,
    expected_version: int | None = None,
    token: str = "",
) -> OutboxMessage | None:
    guard(session, case, expected_version, token)
    text = reason.strip()
    if not text:
        raise DecisionError("give the reason for the rejection")
    now = utcnow()
    for target in case.targets:
        if target.status not in {TargetStatus.DELISTED, TargetStatus.EXCLUDED}:
            target.status = TargetStatus.REJECTED
    _touch(case, now)
    _move(session, case, S.REJECTED, actor, text, Resolution.REJECTED, now)
    if not send:
        return None
    return replies.queue_reply(
        session,
        case,
        "rejected",
        settings,
        actor=actor.email,
        actor_id=actor.id,
        extra=reply_extra(session, case, reason=text),
    )


def ask_information(
    session: Session,
    settings: Settings,
    case: Case,
    actor: Actor,
    *,
    question: str,
    expected_version: int | None = None,
    token: str = "",
) -> OutboxMessage | None:
    guard(session, case, expected_version, token)
    text = question.strip()
    if not text:
        raise DecisionError("write the question to ask")
    row = replies.queue_reply(
        session,
        case,
        "ask_information",
        settings,
        actor=actor.email,
        actor_id=actor.id,
        extra=reply_extra(session, case, question=text),
    )
    now = utcnow()
    _touch(case, now)
    if case.status != S.AWAITING_REQUESTER:
        _move(session, case, S.AWAITING_REQUESTER, actor, "asked for information", None, now)
    return row


def retry_outbox(
    session: Session, case: Case, outbox_id: int, actor: Actor, *, token: str = ""
) -> OutboxMessage:
    """Send a failed or held reply again at once."""
    guard(session, case, None, token)
    row = session.get(OutboxMessage, outbox_id)
    if row is None or row.case_id != case.id:
        raise DecisionError("no such outgoing message on this case")
    if row.status not in {OutboxStatus.FAILED, OutboxStatus.HELD, OutboxStatus.PENDING}:
        raise DecisionError(f"the message is {row.status.value}; only failed or held mail is retried")
    before = {"status": row.status.value, "attempts": row.attempts, "error": row.last_error}
    row.status = OutboxStatus.PENDING
    row.hold_reason = None
    row.next_attempt_at = utcnow()
    audit.record(
        session,
        action="reply.retry",
        actor=actor.email,
        actor_id=actor.id,
        case=case,
        object_type="outbox",
        object_id=row.id,
        before=before,
        after={"status": "pending"},
    )
    return row


# --- merge, split --------------------------------------------------------------------------------------
def merge(
    session: Session,
    into: Case,
    sources: Sequence[Case],
    actor: Actor,
    *,
    expected_version: int | None = None,
    token: str = "",
) -> None:
    """Move the messages, notes and new targets of ``sources`` into ``into``; close the sources as merged."""
    guard(session, into, expected_version, token)
    others = [c for c in sources if c.id != into.id]
    if not others:
        raise DecisionError("choose at least one other case to merge")
    now = utcnow()
    for source in others:
        if source.merged_into_id is not None:
            raise DecisionError(f"{source.reference} was already merged")
        have = {t.network for t in into.targets}
        moved = [t for t in source.targets if t.network not in have]
        with session.no_autoflush:  # a target between two cases is no orphan
            for target in moved:
                target.case = into
        session.execute(update(Message).where(Message.case_id == source.id).values(case_id=into.id))
        session.execute(update(CaseNote).where(CaseNote.case_id == source.id).values(case_id=into.id))
        source.merged_into_id = into.id
        into.search_text = (into.search_text + "\n" + source.search_text).strip()[:200000]
        _touch(source, now)
        audit.record(
            session,
            action="case.merged_into",
            actor=actor.email,
            actor_id=actor.id,
            case=source,
            after={"merged_into": into.reference},
            detail={"targets": [t.network for t in moved]},
        )
        if source.status != S.CLOSED:
            _move(session, source, S.CLOSED, actor, f"merged into {into.reference}", Resolution.MERGED, now)
        else:
            source.resolution = Resolution.MERGED
        audit.record(
            session,
            action="case.merged",
            actor=actor.email,
            actor_id=actor.id,
            case=into,
            detail={"from": source.reference, "targets": [t.network for t in moved]},
        )
    _touch(into, now)
    if into.status == S.CLOSED:
        _move(session, into, S.NEW, actor, "cases merged in", None, now)


def split(
    session: Session,
    case: Case,
    target_ids: Sequence[int],
    actor: Actor,
    *,
    expected_version: int | None = None,
    token: str = "",
) -> Case:
    """Move the selected targets to a new case of the same requester (the thread stays here)."""
    guard(session, case, expected_version, token)
    chosen = _select_targets(case, target_ids) if target_ids else []
    if not chosen or len(chosen) == len(case.targets):
        raise DecisionError("select some, but not all, of the targets to split off")
    now = utcnow()
    new = cases.open_case(
        session,
        subject=case.subject,
        requester_email=case.requester_email,
        requester_name=case.requester_name,
        actor=actor.email,
        now=now,
    )
    new.authority_result = case.authority_result
    new.authority_evidence = dict(case.authority_evidence or {})
    new.search_text = case.search_text
    with session.no_autoflush:
        for target in chosen:
            target.case = new
    _touch(case, now)
    session.flush()
    nets = [t.network for t in chosen]
    audit.record(
        session,
        action="case.split",
        actor=actor.email,
        actor_id=actor.id,
        case=case,
        detail={"to": new.reference, "targets": nets},
    )
    audit.record(
        session,
        action="case.split_from",
        actor=actor.email,
        actor_id=actor.id,
        case=new,
        detail={"from": case.reference, "targets": nets},
    )
    return new


@dataclass(frozen=True)
class BulkResult:
    done: list[str]
    failed: dict[str, str]
