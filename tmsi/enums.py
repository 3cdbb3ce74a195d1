"""Enumerations stored by value; the state names analysts see and the API returns (no imports: the
pure domain uses them too)."""

from __future__ import annotations

import enum


class CaseStatus(enum.StrEnum):
    NEW = "new"
    VERIFYING = "verifying"
    AWAITING_REQUESTER = "awaiting_requester"
    READY_FOR_DECISION = "ready_for_decision"
    DELISTED = "delisted"
    REJECTED = "rejected"
    CLOSED = "closed"


class Resolution(enum.StrEnum):
    DELISTED = "delisted"
    PARTIALLY_DELISTED = "partially_delisted"
    REJECTED = "rejected"
    SPAM = "spam"
    MERGED = "merged"
    NO_ACTION = "no_action"


class CheckResult(enum.StrEnum):
    """Outcome of a check: verification of a target/address, or the authority of a sender."""

    PENDING = "pending"
    PASS = "pass"
    FAIL = "fail"
    PARTIAL = "partial"
    NONE = "none"
    UNVERIFIABLE = "unverifiable"


class NameVerdict(enum.StrEnum):
    STATIC = "static"
    CUSTOM = "custom"
    GENERIC = "generic"
    DYNAMIC = "dynamic"
    NONE = "none"


class Coverage(enum.StrEnum):
    LISTED = "listed"
    PARTLY_LISTED = "partly_listed"
    NOT_LISTED = "not_listed"


class TargetStatus(enum.StrEnum):
    PENDING = "pending"
    PASS = "pass"
    FAIL = "fail"
    UNVERIFIABLE = "unverifiable"
    DELISTED = "delisted"
    REJECTED = "rejected"
    EXCLUDED = "excluded"


class Direction(enum.StrEnum):
    IN = "in"
    OUT = "out"


class MessageKind(enum.StrEnum):
    REQUEST = "request"
    REPLY = "reply"
    AUTO_REPLY = "auto_reply"
    BOUNCE = "bounce"
    LIST = "list"
    SPAM_OR_OTHER = "spam_or_other"
    OUTGOING = "outgoing"


class MessageStatus(enum.StrEnum):
    STORED = "stored"
    PROCESSED = "processed"
    QUARANTINED = "quarantined"
    DUPLICATE = "duplicate"


class OutboxStatus(enum.StrEnum):
    PENDING = "pending"
    HELD = "held"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Role(enum.StrEnum):
    ANALYST = "analyst"
    LEAD = "lead"
    ADMIN = "admin"
    AUDITOR = "auditor"


class ListingEventKind(enum.StrEnum):
    LISTED = "listed"
    DELISTED = "delisted"
    SPLIT = "split"
    SUPERSEDED = "superseded"
    REGRESSED = "regressed"


class RunStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


__all__ = [
    "CaseStatus",
    "CheckResult",
    "Coverage",
    "Direction",
    "ListingEventKind",
    "MessageKind",
    "MessageStatus",
    "NameVerdict",
    "OutboxStatus",
    "Resolution",
    "Role",
    "RunStatus",
    "TargetStatus",
]
