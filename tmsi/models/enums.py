"""Re-export of :mod:`tmsi.enums` (the enums live outside the models so the pure domain can use them
without importing the ORM)."""

from tmsi.enums import (
    CaseStatus,
    CheckResult,
    Coverage,
    Direction,
    ListingEventKind,
    MessageKind,
    MessageStatus,
    NameVerdict,
    OutboxStatus,
    Resolution,
    Role,
    RunStatus,
    TargetStatus,
)

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
