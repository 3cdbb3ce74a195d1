"""Templated replies: lead-editable templates rendered in a sandbox, threaded, rate-limited, queued.

Templates see plain dicts and lists only (never ORM objects), through Jinja's immutable sandbox, so a
template author can format data but not reach into the application.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import resources
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tmsi.config import Settings
from tmsi.db import utcnow
from tmsi.models import Case, Direction, Message, OutboxMessage, ReplyTemplate
from tmsi.services import audit, outbox, policy, propagation

# What one reply may grow to. Replies are a few kilobytes; a template that builds more is a mistake,
# and in a live preview it would tie up a web worker (memory, CPU) while the lead types.
MAX_REPLY_CHARS = 200_000
_MAX_POWER_BITS = 4_096


class _ReplySandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox (no internals, no mutation) that also refuses ``*`` and ``**`` building
    values beyond a reply's size: ``'x' * 10**9`` or ``2 ** 100000`` would otherwise run unchecked."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and _power_too_big(left, right):
            raise SecurityError("the power is too large for a reply")
        if operator == "*" and _repeat_too_long(left, right):
            raise SecurityError(f"the repetition is longer than a reply ({MAX_REPLY_CHARS} characters)")
        return super().call_binop(context, operator, left, right)


def _power_too_big(base: Any, exponent: Any) -> bool:
    if not (isinstance(base, int) and isinstance(exponent, int)) or exponent <= 1 or abs(base) <= 1:
        return False
    return abs(base).bit_length() * exponent > _MAX_POWER_BITS


def _repeat_too_long(left: Any, right: Any) -> bool:
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, str | list | tuple) and isinstance(times, int) and not isinstance(times, bool):
            return len(seq) * times > MAX_REPLY_CHARS
    return False


_ENV = _ReplySandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


class TemplateRenderError(ValueError):
    pass


@dataclass(frozen=True)
class Rendered:
    subject: str
    body: str


def default_templates() -> dict[str, dict[str, str]]:
    text = resources.files("tmsi.data").joinpath("reply_templates.toml").read_text("utf-8")
    return tomllib.loads(text)


def ensure_templates(session: Session) -> None:
    """Seed the default templates that are not in the database yet (never overwrites a lead's edit)."""
    existing = set(session.scalars(select(ReplyTemplate.key)))
    for key, spec in default_templates().items():
        if key not in existing:
            session.add(
                ReplyTemplate(key=key, title=spec["title"], subject=spec["subject"], body=spec["body"])
            )
    session.flush()


@dataclass
class _BatchCache:
    templates: dict[str, ReplyTemplate] = field(default_factory=dict)
    autoreply_limit: int | None = None
    automatic_sent: dict[str, int] = field(default_factory=dict)


_CACHE = "tmsi.replies.batch"


@contextmanager
def batch_cache(session: Session) -> Iterator[None]:
    """Within the block, templates, the effective reply limit and each recipient's count of automatic
    replies are read once and then kept (counted up as replies are queued), so that queueing replies for a
    batch of mail needs no flush and no query per reply. For one transaction that alone queues replies.
    """
    if session.info.get(_CACHE) is not None:
        yield
        return
    session.info[_CACHE] = _BatchCache()
    try:
        yield
    finally:
        session.info.pop(_CACHE, None)


def get_template(session: Session, key: str) -> ReplyTemplate:
    cache: _BatchCache | None = session.info.get(_CACHE)
    if cache is not None and key in cache.templates:
        return cache.templates[key]
    tpl = _load_template(session, key)
    if cache is not None:
        cache.templates[key] = tpl
    return tpl


def _load_template(session: Session, key: str) -> ReplyTemplate:
    tpl = session.scalar(select(ReplyTemplate).where(ReplyTemplate.key == key))
    if tpl is None:
        ensure_templates(session)
        tpl = session.scalar(select(ReplyTemplate).where(ReplyTemplate.key == key))
    if tpl is None:
        raise TemplateRenderError(f"no reply template {key!r}")
    return tpl


def case_context(case: Case, settings: Settings, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    targets = [
        {
            "network": t.network,
            "status": t.status.value,
            "coverage": t.coverage.value,
            "reasons": list((t.summary or {}).get("reasons", [])),
            "failing": list((t.summary or {}).get("failing", [])),
        }
        for t in case.targets
    ]
    return {
        "case": {
            "reference": case.reference,
            "subject": case.subject,
            "status": case.status.value,
            "requester_email": case.requester_email,
            "requester_name": case.requester_name,
        },
        "targets": targets,
        "mailbox_address": settings.mailbox_address,
        "base_url": settings.base_url,
        "lookup_url": f"{settings.base_url.rstrip('/')}/lookup",
        "signature": "Kind regards,\nThe spam investigation team",
        "extra": dict(extra or {}),
    }


@functools.lru_cache(maxsize=64)
def _compiled(source: str) -> Template:
    # Compiling is most of the cost of a reply; the cache is keyed by the text, so an edit takes effect.
    return _ENV.from_string(source)


def render_text(subject_tpl: str, body_tpl: str, context: dict[str, Any]) -> Rendered:
    """Render a reply; any failure of the template (a Jinja error, a sandbox refusal, or an error of the
    template's own arithmetic such as ``1/0``) is a :class:`TemplateRenderError` naming it."""
    try:
        subject = _bounded(_compiled(subject_tpl), context)
        body = _bounded(_compiled(body_tpl), context)
    except TemplateRenderError:
        raise
    except TemplateError as exc:  # includes SecurityError and UndefinedError
        raise TemplateRenderError(f"template error: {exc}") from None
    except (ArithmeticError, TypeError, ValueError, LookupError, RecursionError) as exc:
        raise TemplateRenderError(f"template error: {type(exc).__name__}: {exc}") from None
    return Rendered(subject=" ".join(subject.split()), body=body)


def _bounded(template: Template, context: dict[str, Any]) -> str:
    parts: list[str] = []
    size = 0
    for chunk in template.generate(context):
        size += len(chunk)
        if size > MAX_REPLY_CHARS:
            raise TemplateRenderError(f"template error: the reply is over {MAX_REPLY_CHARS} characters")
        parts.append(chunk)
    return "".join(parts)


def render_reply(
    session: Session, case: Case, key: str, settings: Settings, extra: dict[str, Any] | None = None
) -> Rendered:
    tpl = get_template(session, key)
    rendered = render_text(tpl.subject, tpl.body, case_context(case, settings, extra))
    return Rendered(outbox.with_reference(rendered.subject, case.reference), rendered.body)


def _last_inbound(session: Session, case: Case) -> Message | None:
    return session.scalar(
        select(Message)
        .where(Message.case_id == case.id, Message.direction == Direction.IN)
        .order_by(Message.received_at.desc(), Message.id.desc())
        .limit(1)
    )


def automatic_replies_last_hour(session: Session, recipient: str, now: datetime) -> int:
    cache: _BatchCache | None = session.info.get(_CACHE)
    if cache is not None:
        key = recipient.lower()
        if key not in cache.automatic_sent:
            cache.automatic_sent[key] = _count_automatic(session, key, now)
        return cache.automatic_sent[key]
    return _count_automatic(session, recipient, now)


def prefetch_automatic_counts(session: Session, recipients: Iterable[str], now: datetime) -> None:
    """Inside :func:`batch_cache`: count the last hour's automatic replies to all ``recipients`` in one
    query (a batch of mail answers many senders once each)."""
    cache: _BatchCache | None = session.info.get(_CACHE)
    if cache is None:
        return
    wanted = sorted({r.strip().lower() for r in recipients if r.strip()} - set(cache.automatic_sent))
    for first in range(0, len(wanted), 500):
        chunk = wanted[first : first + 500]
        counts = dict(
            session.execute(
                select(OutboxMessage.recipient, func.count())
                .where(
                    OutboxMessage.recipient.in_(chunk),
                    OutboxMessage.automatic.is_(True),
                    OutboxMessage.created_at >= now - timedelta(hours=1),
                )
                .group_by(OutboxMessage.recipient)
            ).all()
        )
        for recipient in chunk:
            cache.automatic_sent[recipient] = counts.get(recipient, 0)


def _autoreply_limit(session: Session, settings: Settings) -> int:
    cache: _BatchCache | None = session.info.get(_CACHE)
    if cache is None:
        return policy.effective(session, settings).autoreply_per_sender_per_hour
    if cache.autoreply_limit is None:
        cache.autoreply_limit = policy.effective(session, settings).autoreply_per_sender_per_hour
    return cache.autoreply_limit


def _count_automatic(session: Session, recipient: str, now: datetime) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(
                OutboxMessage.recipient == recipient.lower(),
                OutboxMessage.automatic.is_(True),
                OutboxMessage.created_at >= now - timedelta(hours=1),
            )
        )
        or 0
    )


def queue_reply(
    session: Session,
    case: Case,
    key: str,
    settings: Settings,
    *,
    actor: str = audit.SYSTEM,
    actor_id: int | None = None,
    to: str | None = None,
    extra: dict[str, Any] | None = None,
    subject: str | None = None,
    body: str | None = None,
    hold_reason: str | None = None,
    reply_to: Message | None = None,
    now: datetime | None = None,
) -> OutboxMessage | None:
    """Render template ``key`` for ``case`` (or send the analyst's edited subject/body) via the outbox.

    Automatic replies (actor ``system``) are never sent to auto-generated mail or our own address, and
    at most ``autoreply_per_sender_per_hour`` per recipient; a suppressed reply is an audit event.
    The reply threads under ``reply_to`` (the message being answered), by default the case's latest
    received message.
    """
    now = now or utcnow()
    automatic = actor == audit.SYSTEM
    if hold_reason is None and key == propagation.CLOSING_TEMPLATE and settings.dnsbl_nameservers:
        # "Delisted, effective now" must not leave before our DNSBL servers stop listing the addresses;
        # the propagation check releases the row (see tmsi.services.propagation).
        hold_reason = propagation.hold_reason_for(session, case)
    recipient = (to or case.requester_email).strip()
    rendered = render_reply(session, case, key, settings, extra)
    if subject is not None:
        outbox.check_header("subject", subject)
    final_subject = outbox.with_reference(subject, case.reference) if subject else rendered.subject
    final_body = body if body is not None else rendered.body

    suppressed = ""
    if not recipient:
        suppressed = "no recipient"
    elif recipient.lower() == settings.mailbox_address.lower():
        suppressed = "recipient is our own mailbox"
    elif automatic and (case.flags or {}).get("auto_generated"):
        suppressed = "the case's last message was auto-generated"
    elif automatic and automatic_replies_last_hour(session, recipient, now) >= (
        limit := _autoreply_limit(session, settings)
    ):
        suppressed = f"rate limit: {limit} automatic replies per hour"
    if suppressed:
        audit.record(
            session,
            action="reply.suppressed",
            actor=actor,
            actor_id=actor_id,
            case=case,
            detail={"template": key, "to": recipient, "reason": suppressed},
        )
        return None

    last = reply_to if reply_to is not None else _last_inbound(session, case)
    in_reply_to = last.message_id_header if last is not None else ""
    references = [*(last.references or []), in_reply_to] if last is not None else []
    row = outbox.enqueue(
        session,
        case=case,
        mail_from=settings.mailbox_address,
        to=[recipient],
        subject=final_subject,
        body=final_body,
        mail_domain=settings.mail_domain,
        template_key=key,
        in_reply_to=in_reply_to,
        references=references,
        automatic=automatic,
        hold_reason=hold_reason,
        created_by=actor,
        now=now,
    )
    cache: _BatchCache | None = session.info.get(_CACHE)
    if cache is not None and automatic:
        key = recipient.lower()
        cache.automatic_sent[key] = cache.automatic_sent.get(key, 0) + 1
    audit.record(
        session,
        action="reply.queued",
        actor=actor,
        actor_id=actor_id,
        case=case,
        object_type="outbox",
        object_id=row,
        detail={
            "template": key,
            "to": recipient,
            "subject": final_subject,
            "message_id": row.message_id_header,
            "held": hold_reason or "",
        },
    )
    if hold_reason:
        audit.record(
            session,
            action="reply.held",
            actor=actor,
            actor_id=actor_id,
            case=case,
            object_type="outbox",
            object_id=row,
            after={"status": "held", "hold_reason": hold_reason},
        )
    return row
