"""Mail intake: store every received message, then classify, thread, extract and link it into a case.

``process_message`` is the one pipeline step (a service: it never commits); ``process_batch`` does a
whole part of a poll pass in one unit of work. The mailbox edge that feeds them is
:mod:`tmsi.services.poller`; deliveries (mailbox, folder, UIDVALIDITY, UID), recorded here, make a
restart after a crash exactly-once.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from tmsi.config import Settings
from tmsi.db import unit_of_work, utcnow
from tmsi.domain import classify
from tmsi.domain.classify import Classification, classify_message, find_thread_ref, target_reasons
from tmsi.domain.extract import ExtractedTargets, extract_targets
from tmsi.domain.mail import MailParseError, ParsedMessage, dedupe_key, glimpse, parse_message
from tmsi.domain.networks import IPNetwork, network_keys
from tmsi.models import (
    Case,
    CaseStatus,
    CaseTarget,
    CheckResult,
    Coverage,
    Direction,
    Message,
    MessageDelivery,
    MessageKind,
    MessageStatus,
    TargetListing,
    TargetStatus,
)
from tmsi.services import audit, cases, listings, outbox, replies

log = logging.getLogger(__name__)

HUMAN_KINDS = frozenset({MessageKind.REQUEST, MessageKind.REPLY})
# Targets that still need work when the requester writes again ("I fixed the PTR"): re-check them now.
RECHECK_STATUSES = frozenset({TargetStatus.PENDING, TargetStatus.FAIL, TargetStatus.UNVERIFIABLE})
MAX_BODY_CHARS = 2_000_000
MAX_SEARCH_TEXT = 20_000
MAX_MERGE_HOPS = 10


@dataclass(frozen=True)
class Delivery:
    """Where a message was found: the exactly-once key of the poller."""

    mailbox: str
    folder: str
    uidvalidity: int
    uid: int


@dataclass
class IngestResult:
    message_id: int
    status: str
    kind: str | None = None
    case_reference: str | None = None
    new_case: bool = False
    duplicate: bool = False
    targets: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def quarantined(self) -> bool:
        return self.status == MessageStatus.QUARANTINED.value

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# text hygiene: PostgreSQL refuses NUL in text and JSON, and enforces VARCHAR lengths


def _clean(value: str | None, limit: int | None = None) -> str:
    if not value:
        return ""
    text = value.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (undecodable bytes kept by the parser)
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text[:limit] if limit is not None else text


def _clean_json(value: Any) -> Any:
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, dict):
        return {_clean(str(k)): _clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_json(v) for v in value]
    return value


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


# --------------------------------------------------------------------------------------------------
# store


def _record_delivery(
    session: Session, message: Message, delivery: Delivery | None, now: datetime, batch: Batch | None = None
) -> None:
    if delivery is None:
        return
    values = {
        "mailbox": delivery.mailbox[:255],
        "folder": delivery.folder[:255],
        "uidvalidity": delivery.uidvalidity,
        "uid": delivery.uid,
        "seen_at": now,
    }
    if batch is not None:
        batch.deliveries.append((message, values))
    else:
        session.add(MessageDelivery(message=message, **values))


def _duplicate(
    session: Session, existing: Message, delivery: Delivery | None, now: datetime, batch: Batch | None
) -> IngestResult:
    """The same message again: one more delivery of the stored row, never processed twice."""
    renumbered = seen_before = False
    if delivery is not None:
        # The stored deliveries and those recorded earlier in the same batch (not written yet).
        known = (
            [(d.mailbox, d.folder, d.uidvalidity, d.uid) for d in existing.deliveries] if existing.id else []
        )
        if batch is not None:
            known += [
                (v["mailbox"], v["folder"], v["uidvalidity"], v["uid"])
                for m, v in batch.deliveries
                if m is existing
            ]
        earlier = [
            (validity, uid)
            for mailbox, folder, validity, uid in known
            if mailbox == delivery.mailbox[:255] and folder == delivery.folder[:255]
        ]
        validities = {validity for validity, _ in earlier}
        # Seen in this folder under another UIDVALIDITY: the server renumbered the folder, it is the same
        # delivery (left in the folder by a crash before the move), not a second one.
        renumbered = bool(validities) and delivery.uidvalidity not in validities
        seen_before = (delivery.uidvalidity, delivery.uid) in set(earlier)
        if not seen_before:
            _record_delivery(session, existing, delivery, now, batch)
    if not (renumbered or seen_before):
        existing.delivery_count = (existing.delivery_count or 1) + 1
    if batch is None:
        session.flush()
    log.info("message %s (%s) delivered again; not processed twice", existing.id, existing.message_id_header)
    return _track(
        batch,
        existing,
        IngestResult(
            message_id=existing.id,
            status=existing.status.value,
            kind=existing.kind.value if existing.kind else None,
            case_reference=existing.case.reference if existing.case is not None else None,
            duplicate=True,
        ),
    )


def _parse(raw: bytes, settings: Settings) -> tuple[ParsedMessage | None, str | None]:
    try:
        return parse_message(raw, max_bytes=settings.max_message_bytes), None
    except MailParseError as exc:
        log.info("cannot parse a message (%d bytes): %s", len(raw), exc.reason)
        return None, exc.reason
    except Exception as exc:  # a parser bug on odd input: keep the mail, quarantine it, tell us
        log.exception("mail parser crashed on a %d-byte message", len(raw))
        return None, f"parser crashed: {type(exc).__name__}: {exc}"


@dataclass
class Batch:
    """Several messages processed in one transaction (a fetched IMAP batch) with one flush at the end.

    The database does not see the batch's new rows until then, so what later messages of the batch must
    find is kept here: dedupe keys, Message-IDs and case references of the messages and cases it created.
    The audit events and replies are collected (``audit.deferred``, ``replies.batch_cache``).
    """

    by_key: dict[str, Message] = field(default_factory=dict)
    by_header: dict[str, Message] = field(default_factory=dict)
    cases_by_reference: dict[str, Case] = field(default_factory=dict)
    results: list[tuple[IngestResult, Message]] = field(default_factory=list)
    # The listings overlapping each target of the batch (by CIDR): one query per 16 targets.
    listings: dict[str, list[Any]] = field(default_factory=dict)
    # Rows nothing reads before the commit, written after the flush as bulk INSERTs of plain rows:
    # deliveries (message, values) and target-listing links (target, listing id, relation).
    deliveries: list[tuple[Message, dict[str, Any]]] = field(default_factory=list)
    links: list[tuple[CaseTarget, int, str]] = field(default_factory=list)

    def prefetch(self, session: Session, keys: Iterable[str]) -> None:
        """The stored messages with any of ``keys``: one query for the batch instead of one per message."""
        wanted = list(dict.fromkeys(keys))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            for message in session.scalars(select(Message).where(Message.dedupe_key.in_(chunk))):
                self.by_key.setdefault(message.dedupe_key, message)

    def prefetch_cases(self, session: Session, items: Iterable[Prepared]) -> None:
        """The cases named by a reference in a subject, with their targets: one query for the batch."""
        refs = {
            ref for item in items if item.parsed is not None and (ref := find_thread_ref(item.parsed.subject))
        }
        wanted = sorted({ref.upper() for ref in refs})
        for first in range(0, len(wanted), 500):
            stmt = (
                select(Case)
                .where(Case.reference.in_(wanted[first : first + 500]))
                .options(selectinload(Case.targets))
            )
            for case in session.scalars(stmt):
                self.cases_by_reference[case.reference] = case

    def prefetch_listings(self, session: Session, items: Iterable[Prepared]) -> None:
        networks = [net for item in items if item.targets is not None for net in item.targets.networks]
        self.listings = listings.find_overlapping_rows_many(session, networks)

    def finish(self, session: Session) -> None:
        """After the flush: the deferred rows, and every result gets its message's id."""
        if self.deliveries:
            session.execute(
                insert(MessageDelivery), [{**values, "message_id": m.id} for m, values in self.deliveries]
            )
        if self.links:
            session.execute(
                insert(TargetListing),
                [{"target_id": t.id, "listing_id": lid, "relation": rel} for t, lid, rel in self.links],
            )
        for result, message in self.results:
            result.message_id = message.id


def _track(batch: Batch | None, message: Message, result: IngestResult) -> IngestResult:
    if batch is not None:
        batch.results.append((result, message))
    return result


@dataclass
class Prepared:
    """A received message, parsed (or not): everything decided before touching the database."""

    raw: bytes
    content_hash: str
    parsed: ParsedMessage | None
    error: str | None
    key: str
    targets: ExtractedTargets | None = None


def prepare(raw: bytes, settings: Settings) -> Prepared:
    """Parse and extract: a pure function of the bytes and the settings (runs in a parser process)."""
    raw = bytes(raw)
    content_hash = hashlib.sha256(raw).hexdigest()
    parsed, error = _parse(raw, settings)
    key = dedupe_key(parsed) if parsed is not None else f"raw:{content_hash}"
    targets = None
    if parsed is not None:
        try:
            targets = _extract(parsed, settings)
        except Exception:  # an extractor bug: processing extracts again and quarantines with the reason
            log.exception("extracting addresses from a %d-byte message failed", len(raw))
    return Prepared(raw, content_hash, parsed, error, key, targets)


def process_message(
    session: Session,
    raw: bytes,
    settings: Settings,
    *,
    source: str,
    delivery: Delivery | None = None,
    defer: bool = False,
    now: datetime | None = None,
) -> IngestResult:
    """Store ``raw`` (a Message row, before anything else is decided), then process it.

    A message that cannot be parsed, or whose processing fails, stays stored and is quarantined with
    the reason; a message already stored (same dedupe key) only gets one more delivery recorded.
    With ``defer`` it stays ``stored`` for :func:`process_stored` (workers, in parallel).
    """
    return store_and_process(
        session, prepare(raw, settings), settings, source=source, delivery=delivery, defer=defer, now=now
    )


def store_and_process(
    session: Session,
    item: Prepared,
    settings: Settings,
    *,
    source: str,
    delivery: Delivery | None = None,
    defer: bool = False,
    now: datetime | None = None,
    batch: Batch | None = None,
) -> IngestResult:
    """:func:`process_message` on a prepared message; inside a :class:`Batch` (see :func:`process_batch`)
    nothing is flushed and a processing error propagates (the batch is redone one message at a time)."""
    now = now or utcnow()
    parsed, key = item.parsed, item.key
    if batch is not None:
        existing = batch.by_key.get(key)
    else:
        existing = session.scalar(select(Message).where(Message.dedupe_key == key))
    if existing is not None:
        return _duplicate(session, existing, delivery, now, batch)

    message = Message(
        direction=Direction.IN,
        status=MessageStatus.STORED,
        dedupe_key=key,
        message_id_header=_clean(parsed.message_id if parsed else "", 998),
        content_hash=item.content_hash,
        raw=item.raw,
        raw_size=len(item.raw),
        # Every column given (here and for outgoing mail): rows with the same columns are inserted
        # together, one statement per table for a whole batch.
        from_addr="",
        from_name="",
        envelope_from="",
        subject="",
        in_reply_to="",
        to_addrs=[],
        references=[],
        headers=[],
        attachments=[],
        body_text="",
        body_html="",
        explain={"source": _clean(source, 500)},
        received_at=now,
        delivery_count=1,
    )
    session.add(message)
    if batch is None:
        session.flush()
    else:
        batch.by_key[key] = message
        if message.message_id_header:
            batch.by_header.setdefault(message.message_id_header, message)
    _record_delivery(session, message, delivery, now, batch)

    if parsed is None:
        _quarantine(message, f"cannot parse: {item.error}", parse_error=item.error, now=now)
        return _track(batch, message, IngestResult(message.id, message.status.value, error=item.error))
    if defer:
        if batch is None:
            session.flush()
        return _track(batch, message, IngestResult(message_id=message.id, status=message.status.value))
    if batch is not None:
        return _track(batch, message, _process(session, message, parsed, settings, now, batch, item.targets))
    return _process_guarded(session, message, parsed, settings, now, item.targets)


def process_batch(
    session: Session,
    items: list[tuple[Prepared, Delivery | None]],
    settings: Settings,
    *,
    source: str,
    defer: bool = False,
    now: datetime | None = None,
) -> list[IngestResult]:
    """Store and process several messages in the caller's transaction, with one flush at the end.

    All or nothing: if processing any message raises, the exception propagates and the caller rolls the
    batch back and processes its messages one per transaction (where a failure quarantines just that
    message). This is the fast path of the poller; the outcome is the same as one message at a time.
    """
    now = now or utcnow()
    batch = Batch()
    batch.prefetch(session, (item.key for item, _ in items))
    if not defer:
        batch.prefetch_cases(session, (item for item, _ in items))
        batch.prefetch_listings(session, (item for item, _ in items))
    results = []
    with (
        session.no_autoflush,
        audit.deferred(session),
        replies.batch_cache(session),
        cases.batch_references(session),
        outbox.deferred_copies(session),
    ):
        if not defer:
            senders = [item.parsed.from_addr for item, _ in items if item.parsed is not None]
            replies.prefetch_automatic_counts(session, senders, now)
        for item, delivery in items:
            results.append(
                store_and_process(
                    session,
                    item,
                    settings,
                    source=source,
                    delivery=delivery,
                    defer=defer,
                    now=now,
                    batch=batch,
                )
            )
    session.flush()
    batch.finish(session)
    return results


def _quarantine(message: Message, reason: str, *, parse_error: str | None = None, now: datetime) -> None:
    message.status = MessageStatus.QUARANTINED
    message.quarantine_reason = _clean(reason)
    if parse_error is not None:
        message.parse_error = _clean(parse_error)
        if message.raw:  # the parser refused it: a lenient look at From and Subject, for the list
            sender_name, sender_addr, subject = glimpse(message.raw)
            message.from_name = _clean(sender_name, 255)
            message.from_addr = _clean(sender_addr, 255)
            message.subject = _clean(subject, 998)
    message.processed_at = now


def _process_guarded(
    session: Session,
    message: Message,
    parsed: ParsedMessage,
    settings: Settings,
    now: datetime,
    targets: ExtractedTargets | None = None,
) -> IngestResult:
    """Run the processing in a savepoint: if any step fails, the stored raw message survives, quarantined."""
    try:
        with session.begin_nested():
            return _process(session, message, parsed, settings, now, targets=targets)
    except Exception as exc:
        log.exception("processing message %s failed; quarantined", message.id)
        session.refresh(message)
        # What the list shows of it, lost with the savepoint (short, clipped strings: safe to set again).
        message.from_name = _clean(parsed.from_name, 255)
        message.from_addr = _clean(parsed.from_addr, 255)
        message.subject = _clean(parsed.subject, 998)
        reason = f"processing failed: {type(exc).__name__}: {exc}"
        _quarantine(message, reason, now=now)
        session.flush()
        return IngestResult(message_id=message.id, status=message.status.value, error=reason)


# --------------------------------------------------------------------------------------------------
# process


def _fill(message: Message, parsed: ParsedMessage) -> None:
    message.message_id_header = _clean(parsed.message_id, 998)
    message.from_addr = _clean(parsed.from_addr, 255)
    message.from_name = _clean(parsed.from_name, 255)
    message.to_addrs = _clean_json([*parsed.to_addrs, *parsed.cc_addrs])
    message.envelope_from = _clean(parsed.return_path or "", 255)
    message.subject = _clean(parsed.subject, 998)
    message.date_header = _aware(parsed.date)
    message.in_reply_to = _clean(parsed.in_reply_to, 998)
    message.references = _clean_json(parsed.references[-50:])
    message.headers = _clean_json([[name, value[:4000]] for name, value in parsed.headers[:500]])
    message.body_text = _clean(parsed.text, MAX_BODY_CHARS)
    message.body_html = _clean(parsed.html, MAX_BODY_CHARS)
    message.attachments = _clean_json(
        [
            {
                "filename": a.filename,
                "content_type": a.content_type,
                "size": a.size,
                "sha256": a.sha256,
                "scanned": a.scanned,
            }
            for a in parsed.attachments
        ]
    )


def _follow_merges(session: Session, case: Case | None) -> Case | None:
    for _ in range(MAX_MERGE_HOPS):
        if case is None or case.merged_into_id is None:
            return case
        case = session.get(Case, case.merged_into_id)
    return case


@dataclass
class Thread:
    case: Case | None = None
    how: str = ""
    known_ids: bool = False
    # A referenced received message is still ``stored`` (deferred, not processed yet): its case is unknown.
    waiting_for: int | None = None


def find_thread(
    session: Session, parsed: ParsedMessage, *, exclude_id: int | None = None, batch: Batch | None = None
) -> Thread:
    """The case a message belongs to: reference in the subject, then In-Reply-To/References."""
    ref = find_thread_ref(parsed.subject)
    if ref:
        case = batch.cases_by_reference.get(ref.upper()) if batch is not None else None
        case = case or cases.get_by_reference(session, ref)
        if case is not None:
            return Thread(_follow_merges(session, case), f"reference {ref} in the subject", True)
    ids = [mid for mid in dict.fromkeys([parsed.in_reply_to, *reversed(parsed.references)]) if mid]
    ids = [mid for mid in ids if mid != parsed.message_id][:50]
    if not ids:
        return Thread()
    if batch is not None:  # the batch's own messages are not in the database yet
        for mid in ids:
            earlier = batch.by_header.get(mid)
            if earlier is not None and earlier.case is not None:
                return Thread(_follow_merges(session, earlier.case), f"In-Reply-To/References {mid}", True)
    stmt = select(Message.message_id_header, Message.case_id, Message.status, Message.id).where(
        Message.message_id_header.in_(ids)
    )
    if exclude_id is not None:
        stmt = stmt.where(Message.id != exclude_id)
    rows = session.execute(stmt).all()
    if not rows:
        return Thread()
    by_id: dict[str, int | None] = {}
    waiting: int | None = None
    for mid, case_id, status, row_id in rows:
        if case_id is not None or mid not in by_id:
            by_id[mid] = case_id
        if status == MessageStatus.STORED and case_id is None:
            waiting = row_id
    for mid in ids:  # In-Reply-To first, then the newest reference
        case_id = by_id.get(mid)
        if case_id is not None:
            case = _follow_merges(session, session.get(Case, case_id))
            return Thread(case, f"In-Reply-To/References {mid}", True)
    return Thread(None, "", True, waiting)


def _extract(parsed: ParsedMessage, settings: Settings) -> ExtractedTargets:
    return extract_targets(
        parsed.extraction_text,
        own_networks=settings.own_networks,
        dnsbl_zone=settings.dnsbl_zone,
        max_prefix_v4=settings.max_target_prefix_v4,
        max_prefix_v6=settings.max_target_prefix_v6,
    )


def _process(
    session: Session,
    message: Message,
    parsed: ParsedMessage,
    settings: Settings,
    now: datetime,
    batch: Batch | None = None,
    targets: ExtractedTargets | None = None,
) -> IngestResult:
    _fill(message, parsed)
    targets = targets if targets is not None else _extract(parsed, settings)
    thread = find_thread(session, parsed, exclude_id=message.id, batch=batch)
    verdict = classify_message(
        parsed,
        mailbox_address=settings.mailbox_address,
        authserv_ids=settings.authserv_ids,
        own_domain=settings.mail_domain,
        sent_message_ids_known=thread.known_ids,
        targets=targets,
        own_networks=settings.own_networks,
    )
    kind = MessageKind(verdict.kind)
    message.kind = kind
    result = IngestResult(message_id=message.id, status=MessageStatus.PROCESSED.value, kind=kind.value)
    result.reasons = list(verdict.reasons)
    notes: dict[str, Any] = {}

    if kind == MessageKind.BOUNCE:
        case = _handle_bounce(session, message, parsed, verdict, thread, notes, now)
    elif kind in HUMAN_KINDS:
        result.reasons += target_reasons(targets)
        case = _handle_human(
            session, message, parsed, verdict, thread, targets, settings, result, notes, now, batch
        )
    else:
        case = _handle_automatic(session, message, kind, thread, notes, now)

    if case is not None:
        result.case_reference = case.reference
    message.status = MessageStatus.PROCESSED
    message.processed_at = now
    message.explain = _clean_json(
        {
            **(message.explain or {}),
            "kind": kind.value,
            "should_autoreply": verdict.should_autoreply,
            "authentic": verdict.authentic,
            "thread_ref": verdict.thread_ref,
            "thread": thread.how,
            "case": result.case_reference,
            "new_case": result.new_case,
            "targets": result.targets,
            "masked": bool(targets.masked and kind in HUMAN_KINDS),
            "replies": result.replies,
            "reasons": result.reasons,
            **notes,
        }
    )
    log.info(
        "message %s %s: %s%s",
        message.id or message.message_id_header,
        kind.value,
        result.case_reference or "no case",
        " (new case)" if result.new_case else "",
    )
    return result


def _set_flags(case: Case, **changes: Any) -> None:
    """Replace the JSON dict (an in-place change would not be seen by the ORM); None removes a flag."""
    flags = dict(case.flags or {})
    for key, value in changes.items():
        if value is None:
            flags.pop(key, None)
        else:
            flags[key] = value
    case.flags = _clean_json(flags)


def _attach(message: Message, case: Case) -> None:
    message.case = case  # case_id follows at the flush (a new case has no id before it)


def _handle_automatic(
    session: Session,
    message: Message,
    kind: MessageKind,
    thread: Thread,
    notes: dict[str, Any],
    now: datetime,
) -> Case | None:
    """Auto-replies, list mail and other mail: kept, attached when they thread, never answered or opened.

    Mail that threads but is neither (a copy of our own mail, spam quoting a reference) is attached
    without marking the requester's side of the thread as automatic.
    """
    case = thread.case
    if case is None:
        notes["unassigned"] = True
        return None
    _attach(message, case)
    if kind in (MessageKind.AUTO_REPLY, MessageKind.LIST):
        _set_flags(case, auto_generated=True)
    case.updated_at = now
    return case


def _handle_bounce(
    session: Session,
    message: Message,
    parsed: ParsedMessage,
    verdict: Classification,
    thread: Thread,
    notes: dict[str, Any],
    now: datetime,
) -> Case | None:
    """A DSN: find which of our messages bounced and flag their cases; a bounce never opens a case."""
    bounced = [mid for mid in verdict.bounced_message_ids if mid][:50]
    found: list[tuple[str, int]] = []
    if bounced:
        rows = session.execute(
            select(Message.message_id_header, Message.case_id).where(
                Message.message_id_header.in_(bounced), Message.direction == Direction.OUT
            )
        ).all()
        found = [(mid, cid) for mid, cid in rows if cid is not None]
    case_ids = list(dict.fromkeys(cid for _, cid in found))
    if not case_ids and thread.case is not None:
        case_ids = [thread.case.id]
    notes["bounced_message_ids"] = bounced
    notes["bounced_ours"] = [mid for mid, _ in found]
    status = [
        {
            k: v[:300]
            for k, v in entry.items()
            if k in ("final-recipient", "action", "status", "diagnostic-code")
        }
        for entry in parsed.delivery_status[:10]
    ]
    first: Case | None = None
    for case_id in case_ids:
        case = _follow_merges(session, session.get(Case, case_id))
        if case is None:
            continue
        first = first or case
        _set_flags(
            case,
            bounced={
                "at": now.isoformat(),
                "message_ids": [mid for mid, cid in found if cid == case_id] or bounced,
                "status": status,
                "dsn_message_id": message.message_id_header,
            },
            auto_generated=True,
        )
        case.updated_at = now
        audit.record(
            session,
            action="mail.bounced",
            case=case,
            object_type="message",
            object_id=message,
            detail=_clean_json({"bounced": bounced, "status": status}),
        )
    if first is None:
        notes["unassigned"] = True
        return None
    _attach(message, first)
    return first


def _handle_human(
    session: Session,
    message: Message,
    parsed: ParsedMessage,
    verdict: Classification,
    thread: Thread,
    targets: ExtractedTargets,
    settings: Settings,
    result: IngestResult,
    notes: dict[str, Any],
    now: datetime,
    batch: Batch | None = None,
) -> Case:
    case = thread.case
    if case is None:
        case = cases.open_case(
            session,
            subject=_clean(parsed.subject, 998) or "(no subject)",
            requester_email=_clean(parsed.from_addr, 255),
            requester_name=_clean(parsed.from_name, 255),
            now=now,
        )
        result.new_case = True
        set_committed_value(case, "targets", [])  # a new case has none: spare the lazy load
        set_committed_value(case, "messages", [])
        if batch is not None:
            batch.cases_by_reference[case.reference] = case
        if verdict.kind == classify.REPLY:
            notes["thread_not_found"] = "looks like a reply, but no case matches; opened a new one"
    else:
        cases.reopen_on_message(session, case, now=now)
        # A new message (perhaps from another sender, or naming other networks): the authority job
        # evaluates who is asking again.
        case.authority_result = CheckResult.PENDING
    _attach(message, case)

    added = add_targets(
        session,
        case,
        targets.networks,
        sources=targets.sources,
        oversized=targets.oversized,
        now=now,
        found=batch.listings if batch is not None else None,
        links=batch.links if batch is not None else None,
    )
    result.targets = [t.network for t in added]
    all_targets = list(case.targets)
    masked = bool(targets.masked)
    # "masked": the case still waits for full addresses; a message that brings addresses clears it.
    old_flags = case.flags or {}
    if masked:
        still_masked, samples = True, list(targets.masked_samples)[:20]
    elif added:
        still_masked, samples = None, None
    else:
        still_masked, samples = old_flags.get("masked"), old_flags.get("masked_samples")
    _set_flags(
        case,
        auto_generated=False,
        masked=still_masked,
        masked_samples=samples,
        oversized=sorted({t.network for t in all_targets if t.oversized}) or None,
        nothing_listed=True if all(t.coverage == Coverage.NOT_LISTED for t in all_targets) else None,
        no_targets=True if not all_targets else None,
    )
    case.updated_at = now
    if result.targets:
        case.search_text = _clean(
            f"{case.search_text or ''} {' '.join(result.targets)}".strip(), MAX_SEARCH_TEXT
        )
    if result.new_case:
        case.search_text = _clean(
            f"{case.reference} {case.requester_email} {case.requester_name} {case.subject} "
            f"{case.search_text or ''}",
            MAX_SEARCH_TEXT,
        )
    else:
        _recheck_now(case, now)

    reply_key = _reply_for(verdict, result.new_case, masked, bool(all_targets), bool(added))
    if reply_key:
        extra = {"masked": list(targets.masked_samples)} if masked else {}
        row = replies.queue_reply(session, case, reply_key, settings, extra=extra, reply_to=message, now=now)
        if row is not None:
            result.replies.append(reply_key)

    if (
        all_targets
        and case.status in (CaseStatus.NEW, CaseStatus.READY_FOR_DECISION)
        and (result.new_case or added or case.status == CaseStatus.NEW)
    ):
        cases.transition(session, case, CaseStatus.VERIFYING, reason="targets to verify", now=now)
    elif (
        not all_targets
        and masked
        and result.replies
        and case.status in (CaseStatus.NEW, CaseStatus.VERIFYING)
    ):
        cases.transition(
            session, case, CaseStatus.AWAITING_REQUESTER, reason="asked for the full address", now=now
        )
    return case


def _reply_for(
    verdict: Classification, new_case: bool, masked: bool, has_targets: bool, added: bool
) -> str | None:
    """One automatic reply at most per inbound message (queue_reply still applies its own limits)."""
    if new_case:
        if not verdict.should_autoreply:
            return None
        return "need_full_address" if masked and not has_targets else "acknowledgement"
    # A human reply in a thread is never acknowledged (that would be a ping-pong), but a masked address
    # with nothing usable still gets the request for the full address.
    if (
        masked
        and not added
        and verdict.kind == classify.REPLY
        and not verdict.ticket_system
        and verdict.authentic is not False
    ):
        return "need_full_address"
    return None


def _recheck_now(case: Case, now: datetime) -> None:
    for target in case.targets:
        if target.status in RECHECK_STATUSES and (target.next_check_at is None or target.next_check_at > now):
            target.next_check_at = now


def add_targets(
    session: Session,
    case: Case,
    networks: Iterable[IPNetwork],
    *,
    sources: dict[str, str] | None = None,
    oversized: Iterable[str] = (),
    now: datetime | None = None,
    found: dict[str, list[Any]] | None = None,
    links: list[tuple[CaseTarget, int, str]] | None = None,
) -> list[CaseTarget]:
    """Add the networks the case does not have yet, each linked to the listings it overlaps.

    Oversized ranges are flagged, not expanded. ``next_check_at`` = now hands them to verification.
    """
    now = now or utcnow()
    sources = sources or {}
    too_big = set(oversized)
    have = {t.network for t in case.targets}
    added: list[CaseTarget] = []
    for network in networks:
        cidr = str(network)
        if cidr in have:
            continue
        have.add(cidr)
        version, start, end = network_keys(network)
        overlapping = (
            found[cidr]
            if found is not None and cidr in found
            else listings.find_overlapping_rows(session, network)
        )
        target = CaseTarget(
            network=cidr,
            version=version,
            prefixlen=network.prefixlen,
            start_key=start,
            end_key=end,
            source_text=_clean(sources.get(cidr, ""), 255),
            oversized=cidr in too_big,
            coverage=listings.coverage_of(network, overlapping),
            status=TargetStatus.PENDING,
            summary={"listings": len(overlapping)},
            authority_evidence={},
            next_check_at=now,
            created_at=now,
        )
        for listing in overlapping:
            listed = ipaddress.ip_network(listing.network)
            inside = listed.network_address <= network.network_address  # type: ignore[operator]
            covers = inside and network.broadcast_address <= listed.broadcast_address  # type: ignore[operator]
            relation = "covers" if covers else "inside"
            if links is not None:  # a batch writes the links after its flush
                links.append((target, listing.id, relation))
            else:
                target.listing_links.append(TargetListing(listing_id=listing.id, relation=relation))
        case.targets.append(target)
        added.append(target)
    return added


class NotReady(RuntimeError):
    """The message refers to a message that is itself still waiting to be processed."""


def process_stored(
    session: Session, message: Message, settings: Settings, *, now: datetime | None = None
) -> IngestResult:
    """Process a message the poller stored with ``defer`` (status ``stored``).

    Raises :class:`NotReady` (nothing changed) when it replies to a message not processed yet, so that
    a reply never opens a case of its own because a parallel worker has not finished the request.
    """
    now = now or utcnow()
    raw = message.raw
    if raw is None:
        _quarantine(message, "no raw bytes", now=now)
        session.flush()
        return IngestResult(message_id=message.id, status=message.status.value, error="no raw bytes")
    parsed, error = _parse(raw, settings)
    if parsed is None:
        _quarantine(message, f"cannot parse: {error}", parse_error=error, now=now)
        session.flush()
        return IngestResult(message_id=message.id, status=message.status.value, error=error)
    if not find_thread_ref(parsed.subject):
        thread = find_thread(session, parsed, exclude_id=message.id)
        if thread.case is None and thread.waiting_for is not None and thread.waiting_for < message.id:
            raise NotReady(f"message {message.id} waits for message {thread.waiting_for}")
    return _process_guarded(session, message, parsed, settings, now)


@dataclass
class ProcessReport:
    processed: int = 0
    quarantined: int = 0
    new_cases: int = 0
    replies: int = 0
    waiting: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def process_stored_batch(
    settings: Settings, factory: sessionmaker[Session], *, limit: int = 500
) -> ProcessReport:
    """Process up to ``limit`` stored messages, oldest first, each in its own unit of work.

    On PostgreSQL each message is claimed with ``FOR UPDATE SKIP LOCKED`` for the length of its
    transaction, so several workers run this at once without sharing a message.
    """
    report = ProcessReport()
    skipped: list[int] = []
    for _ in range(limit):
        current: int | None = None
        try:
            with unit_of_work(factory) as session:
                stmt = (
                    select(Message)
                    .where(Message.status == MessageStatus.STORED, Message.direction == Direction.IN)
                    .order_by(Message.id)
                    .limit(1)
                )
                if skipped:
                    stmt = stmt.where(Message.id.not_in(skipped))
                if session.get_bind().dialect.name == "postgresql":
                    stmt = stmt.with_for_update(skip_locked=True)
                message = session.scalar(stmt)
                if message is None:
                    break
                current = message.id
                # The claim: a conditional write. On SQLite (no row locks) it waits for a concurrent
                # worker's commit and then matches nothing if that worker took the message.
                claimed = session.execute(
                    update(Message)
                    .where(Message.id == current, Message.status == MessageStatus.STORED)
                    .values(status=MessageStatus.STORED)
                    .execution_options(synchronize_session=False)
                )
                if claimed.rowcount != 1:  # type: ignore[attr-defined]
                    skipped.append(current)
                    continue
                try:
                    result = process_stored(session, message, settings)
                except NotReady:
                    skipped.append(message.id)
                    report.waiting += 1
                    continue
        except Exception as exc:  # a system failure: leave it stored, report, go on with the others
            log.exception("processing a stored message failed")
            report.errors.append(f"{type(exc).__name__}: {exc}")
            if current is not None:
                skipped.append(current)
            continue
        if result.quarantined:
            report.quarantined += 1
        else:
            report.processed += 1
        report.new_cases += int(result.new_case)
        report.replies += len(result.replies)
    return report


def job_process_stored(settings: Settings, factory: sessionmaker[Session]) -> dict[str, Any]:
    """Scheduled job (any number of workers): process mail the poller stored with ``TMSI_INGEST_DEFER``."""
    return process_stored_batch(settings, factory).as_dict()


def reprocess_message(
    session: Session,
    message_id: int,
    settings: Settings,
    *,
    actor: str = audit.SYSTEM,
    actor_id: int | None = None,
    now: datetime | None = None,
) -> IngestResult:
    """Run a quarantined message through the pipeline again (after a fix, or a person's decision);
    ``actor_id`` is the signed-in user's id when a person asked for it."""
    now = now or utcnow()
    message = session.get(Message, message_id)
    if message is None:
        raise LookupError(f"no message {message_id}")
    if message.direction != Direction.IN or message.status != MessageStatus.QUARANTINED:
        raise ValueError(
            f"message {message_id} is {message.direction.value}/{message.status.value}, not a quarantined "
            "received message"
        )
    raw = message.raw
    if raw is None:
        raise ValueError(f"message {message_id} has no raw bytes any more (purged)")
    audit.record(
        session,
        action="message.reprocessed",
        actor=actor,
        actor_id=actor_id,
        object_type="message",
        object_id=message.id,
        detail={"previous_reason": message.quarantine_reason or ""},
    )
    parsed, error = _parse(raw, settings)
    if parsed is None:
        _quarantine(message, f"cannot parse: {error}", parse_error=error, now=now)
        session.flush()
        return IngestResult(message_id=message.id, status=message.status.value, error=error)
    key = dedupe_key(parsed)
    if key != message.dedupe_key:
        other = session.scalar(select(Message).where(Message.dedupe_key == key, Message.id != message.id))
        if other is not None:
            other.delivery_count = (other.delivery_count or 1) + (message.delivery_count or 1)
            message.status = MessageStatus.DUPLICATE
            message.quarantine_reason = None
            message.processed_at = now
            session.flush()
            return IngestResult(
                message_id=message.id,
                status=message.status.value,
                duplicate=True,
                case_reference=other.case.reference if other.case is not None else None,
            )
        message.dedupe_key = key
    message.parse_error = None
    message.quarantine_reason = None
    message.status = MessageStatus.STORED
    session.flush()
    return _process_guarded(session, message, parsed, settings, now)


def store_failed(
    session: Session,
    raw: bytes,
    error: str,
    *,
    source: str,
    delivery: Delivery | None,
    now: datetime | None = None,
) -> Message:
    """Last resort after a system failure: keep the raw bytes, quarantined with the error."""
    now = now or utcnow()
    content_hash = hashlib.sha256(raw).hexdigest()
    key = f"failed:{content_hash}"
    existing = session.scalar(select(Message).where(Message.dedupe_key == key))
    if existing is not None:
        _record_delivery(session, existing, delivery, now)
        session.flush()
        return existing
    message = Message(
        direction=Direction.IN,
        status=MessageStatus.QUARANTINED,
        dedupe_key=key,
        content_hash=content_hash,
        raw=raw,
        raw_size=len(raw),
        to_addrs=[],
        references=[],
        headers=[],
        attachments=[],
        body_text="",
        body_html="",
        explain={"source": _clean(source, 500)},
        received_at=now,
        processed_at=now,
        quarantine_reason=_clean(f"system failure: {error}"),
    )
    session.add(message)
    session.flush()
    _record_delivery(session, message, delivery, now)
    session.flush()
    return message
