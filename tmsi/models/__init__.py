"""Typed tables of the whole domain; import from here."""

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
from tmsi.models.case import Case, CaseCounter, CaseNote, CaseTarget, TargetListing
from tmsi.models.dns import DnsCheck, RdapCache, VerificationRun
from tmsi.models.listing import Delisting, ExportRun, Listing, ListingEvent, PolicySetting
from tmsi.models.mail import MailboxCursor, Message, MessageDelivery, OutboxMessage, ReplyTemplate
from tmsi.models.user import ApiToken, AuditEvent, JobLock, User

__all__ = [
    "ApiToken",
    "AuditEvent",
    "Case",
    "CaseCounter",
    "CaseNote",
    "CaseStatus",
    "CaseTarget",
    "CheckResult",
    "Coverage",
    "Delisting",
    "Direction",
    "DnsCheck",
    "ExportRun",
    "JobLock",
    "Listing",
    "ListingEvent",
    "ListingEventKind",
    "MailboxCursor",
    "Message",
    "MessageDelivery",
    "MessageKind",
    "MessageStatus",
    "NameVerdict",
    "OutboxMessage",
    "OutboxStatus",
    "PolicySetting",
    "RdapCache",
    "ReplyTemplate",
    "Resolution",
    "Role",
    "RunStatus",
    "TargetListing",
    "TargetStatus",
    "User",
    "VerificationRun",
]
