"""DNS verification: runs over a target (progress, summary) and per-address checks with evidence."""

from __future__ import annotations

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from tmsi.db import Base, enum_column, intpk, ipkey, jsondict, jsonlist, timestamp, timestamp_opt
from tmsi.enums import CheckResult, NameVerdict, RunStatus


class VerificationRun(Base):
    """One verification of one target (possibly a /16): progress while it runs, summary when done."""

    __tablename__ = "verification_runs"

    id: Mapped[intpk]
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    target_id: Mapped[int | None] = mapped_column(
        ForeignKey("case_targets.id", ondelete="CASCADE"), index=True
    )
    network: Mapped[str] = mapped_column(String(49))
    trigger: Mapped[str] = mapped_column(String(16), default="auto")
    status: Mapped[RunStatus] = enum_column(RunStatus, "status", default=RunStatus.PENDING, index=True)
    result: Mapped[CheckResult] = enum_column(CheckResult, "result", default=CheckResult.PENDING)
    total: Mapped[int] = mapped_column(default=0)
    done: Mapped[int] = mapped_column(default=0)
    passed: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    unverifiable: Mapped[int] = mapped_column(default=0)
    summary: Mapped[jsondict]
    min_ttl: Mapped[int | None]
    started_at: Mapped[timestamp]
    finished_at: Mapped[timestamp_opt]
    requested_by: Mapped[str] = mapped_column(String(255), default="system")


class DnsCheck(Base):
    """The verdict for one address at one time, with every query and answer that led to it."""

    __tablename__ = "dns_checks"
    __table_args__ = (Index("ix_dns_checks_addr", "version", "address_key", "checked_at"),)

    id: Mapped[intpk]
    run_id: Mapped[int | None] = mapped_column(
        ForeignKey("verification_runs.id", ondelete="CASCADE"), index=True
    )
    target_id: Mapped[int | None] = mapped_column(
        ForeignKey("case_targets.id", ondelete="CASCADE"), index=True
    )
    address: Mapped[str] = mapped_column(String(45))
    version: Mapped[int]
    address_key: Mapped[ipkey]
    result: Mapped[CheckResult] = enum_column(CheckResult, "result")
    name_verdict: Mapped[NameVerdict] = enum_column(NameVerdict, "name_verdict", default=NameVerdict.NONE)
    ptr_names: Mapped[jsonlist]
    reasons: Mapped[jsonlist]
    evidence: Mapped[jsondict]
    min_ttl: Mapped[int | None]
    checked_at: Mapped[timestamp]


class RdapCache(Base):
    """RDAP answers cached with an expiry (per network/query URL)."""

    __tablename__ = "rdap_cache"

    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    data: Mapped[jsondict]
    fetched_at: Mapped[timestamp]
    expires_at: Mapped[timestamp_opt]
