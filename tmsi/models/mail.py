"""Mail as received and as sent: raw RFC 822 bytes kept whole, parsed headers, mailbox cursors, outbox."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, deferred, mapped_column, relationship

from tmsi.db import Base, enum_column, intpk, jsondict, jsonlist, str255, timestamp, timestamp_opt
from tmsi.enums import Direction, MessageKind, MessageStatus, OutboxStatus

if TYPE_CHECKING:
    from tmsi.models.case import Case


class Message(Base):
    """One distinct message, in or out. ``raw`` is written before anything is parsed."""

    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_case_received", "case_id", "received_at"),)

    id: Mapped[intpk]
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    direction: Mapped[Direction] = enum_column(Direction, "direction", default=Direction.IN)
    kind: Mapped[MessageKind | None] = enum_column(MessageKind, "kind", nullable=True)
    status: Mapped[MessageStatus] = enum_column(
        MessageStatus, "status", default=MessageStatus.STORED, index=True
    )
    # Message-ID plus content hash: the same message delivered twice is one row.
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    message_id_header: Mapped[str] = mapped_column(String(998), default="", index=True)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    raw: Mapped[bytes | None] = deferred(mapped_column(LargeBinary))
    raw_size: Mapped[int] = mapped_column(default=0)
    raw_purged_at: Mapped[timestamp_opt]
    from_addr: Mapped[str255] = mapped_column(default="")
    from_name: Mapped[str255] = mapped_column(default="")
    to_addrs: Mapped[jsonlist]
    envelope_from: Mapped[str255] = mapped_column(default="")
    subject: Mapped[str] = mapped_column(String(998), default="")
    date_header: Mapped[timestamp_opt]
    in_reply_to: Mapped[str] = mapped_column(String(998), default="")
    references: Mapped[jsonlist]
    headers: Mapped[jsonlist]
    body_text: Mapped[str] = deferred(mapped_column(Text, default=""))
    body_html: Mapped[str] = deferred(mapped_column(Text, default=""))
    attachments: Mapped[jsonlist]
    explain: Mapped[jsondict]
    parse_error: Mapped[str | None] = mapped_column(Text)
    quarantine_reason: Mapped[str | None] = mapped_column(Text)
    delivery_count: Mapped[int] = mapped_column(default=1)
    received_at: Mapped[timestamp]
    processed_at: Mapped[timestamp_opt]

    case: Mapped[Case | None] = relationship(back_populates="messages")
    deliveries: Mapped[list[MessageDelivery]] = relationship(back_populates="message")


class MessageDelivery(Base):
    """Each time a message was seen in a mailbox (folder, UIDVALIDITY, UID): the exactly-once key."""

    __tablename__ = "message_deliveries"
    __table_args__ = (UniqueConstraint("mailbox", "folder", "uidvalidity", "uid", name="mailbox_uid"),)

    id: Mapped[intpk]
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    mailbox: Mapped[str255]
    folder: Mapped[str255]
    uidvalidity: Mapped[int]
    uid: Mapped[int]
    moved_to: Mapped[str | None] = mapped_column(String(255))
    seen_at: Mapped[timestamp]

    message: Mapped[Message] = relationship(back_populates="deliveries")


class MailboxCursor(Base):
    """Where the poller stopped: UIDVALIDITY and last UID handled, per mailbox and folder."""

    __tablename__ = "mailbox_cursors"
    __table_args__ = (UniqueConstraint("mailbox", "folder", name="mailbox_folder"),)

    id: Mapped[intpk]
    mailbox: Mapped[str255]
    folder: Mapped[str255]
    uidvalidity: Mapped[int] = mapped_column(default=0)
    last_uid: Mapped[int] = mapped_column(default=0)
    updated_at: Mapped[timestamp]


class OutboxMessage(Base):
    """Mail to send, written in the same transaction as the decision that causes it.

    ``raw`` is the complete message with its final Message-ID, so a retry resends identical bytes.
    """

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),)

    id: Mapped[intpk]
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    message_id_header: Mapped[str] = mapped_column(String(255), unique=True)
    template_key: Mapped[str] = mapped_column(String(64), default="")
    mail_from: Mapped[str255]
    rcpt_to: Mapped[jsonlist]
    # First recipient, lower-cased: the per-requester auto-reply rate limit counts on it.
    recipient: Mapped[str] = mapped_column(String(255), default="", index=True)
    automatic: Mapped[bool] = mapped_column(default=False)
    subject: Mapped[str] = mapped_column(String(998), default="")
    raw: Mapped[bytes] = deferred(mapped_column(LargeBinary))
    status: Mapped[OutboxStatus] = enum_column(
        OutboxStatus, "status", default=OutboxStatus.PENDING, index=True
    )
    hold_reason: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[timestamp_opt]
    last_error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[timestamp_opt]
    created_at: Mapped[timestamp]
    sent_at: Mapped[timestamp_opt]
    created_by: Mapped[str255] = mapped_column(default="system")

    case: Mapped[Case | None] = relationship()


class ReplyTemplate(Base):
    """A reply a lead can edit (rendered in a sandboxed Jinja environment)."""

    __tablename__ = "reply_templates"

    id: Mapped[intpk]
    key: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str255] = mapped_column(default="")
    subject: Mapped[str] = mapped_column(String(998))
    body: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[timestamp]
    updated_by: Mapped[str255] = mapped_column(default="system")
