"""Cases (one delisting request thread), their targets, and the listings each target touches."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from tmsi.db import Base, enum_column, intpk, ipkey, jsondict, str255, timestamp, timestamp_opt
from tmsi.enums import CaseStatus, CheckResult, Coverage, Resolution, TargetStatus

if TYPE_CHECKING:
    from tmsi.models.listing import Listing
    from tmsi.models.mail import Message


class CaseCounter(Base):
    """Per-year sequence behind human references like ``TMSI-2026-000123``."""

    __tablename__ = "case_counters"

    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    value: Mapped[int] = mapped_column(default=0)


class Case(Base):
    __tablename__ = "cases"
    __table_args__ = (
        Index("ix_cases_status_waiting", "status", "waiting_since"),
        # The queue over every status (or a search across them) in waiting order: read in index order and
        # stop at the page's end, instead of sorting every case.
        Index("ix_cases_waiting", "waiting_since", "id"),
    )

    id: Mapped[intpk]
    reference: Mapped[str] = mapped_column(String(32), unique=True)
    status: Mapped[CaseStatus] = enum_column(CaseStatus, "status", default=CaseStatus.NEW, index=True)
    resolution: Mapped[Resolution | None] = enum_column(Resolution, "resolution", nullable=True)
    subject: Mapped[str] = mapped_column(String(998), default="")
    requester_email: Mapped[str255] = mapped_column(default="", index=True)
    requester_name: Mapped[str255] = mapped_column(default="")
    requester_domain: Mapped[str255] = mapped_column(default="", index=True)
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    authority_result: Mapped[CheckResult] = enum_column(
        CheckResult, "authority_result", default=CheckResult.PENDING
    )
    authority_evidence: Mapped[jsondict]
    verification_result: Mapped[CheckResult] = enum_column(
        CheckResult, "verification_result", default=CheckResult.PENDING
    )
    flags: Mapped[jsondict]
    search_text: Mapped[str] = mapped_column(Text, default="")
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    created_at: Mapped[timestamp]
    updated_at: Mapped[timestamp]
    waiting_since: Mapped[timestamp_opt]
    last_inbound_at: Mapped[timestamp_opt]
    first_response_at: Mapped[timestamp_opt]
    decided_at: Mapped[timestamp_opt]
    closed_at: Mapped[timestamp_opt]
    # Optimistic lock: a form carries the version it was rendered from, so a double submit fails cleanly.
    lock_version: Mapped[int] = mapped_column(default=1)

    __mapper_args__ = {"version_id_col": lock_version}

    targets: Mapped[list[CaseTarget]] = relationship(
        back_populates="case", order_by="CaseTarget.id", cascade="all, delete-orphan"
    )
    messages: Mapped[list[Message]] = relationship(back_populates="case", order_by="Message.id")

    def __repr__(self) -> str:
        return f"<Case {self.reference} {self.status}>"


class CaseTarget(Base):
    """An address or CIDR a case asks about, its coverage by listings and its latest verification."""

    __tablename__ = "case_targets"
    __table_args__ = (
        UniqueConstraint("case_id", "network", name="case_network"),
        CheckConstraint("version IN (4, 6)", name="version"),
        Index("ix_case_targets_start", "version", "start_key", "prefixlen"),
    )

    id: Mapped[intpk]
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    network: Mapped[str] = mapped_column(String(49))
    version: Mapped[int]
    prefixlen: Mapped[int]
    start_key: Mapped[ipkey]
    end_key: Mapped[ipkey]
    source_text: Mapped[str] = mapped_column(String(255), default="")
    oversized: Mapped[bool] = mapped_column(default=False)
    coverage: Mapped[Coverage] = enum_column(Coverage, "coverage", default=Coverage.NOT_LISTED)
    status: Mapped[TargetStatus] = enum_column(
        TargetStatus, "status", default=TargetStatus.PENDING, index=True
    )
    summary: Mapped[jsondict]
    authority_result: Mapped[CheckResult] = enum_column(
        CheckResult, "authority_result", default=CheckResult.PENDING
    )
    authority_evidence: Mapped[jsondict]
    check_attempts: Mapped[int] = mapped_column(default=0)
    next_check_at: Mapped[timestamp_opt] = mapped_column(index=True)
    last_checked_at: Mapped[timestamp_opt]
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[timestamp_opt]
    created_at: Mapped[timestamp]

    case: Mapped[Case] = relationship(back_populates="targets")
    listing_links: Mapped[list[TargetListing]] = relationship(
        back_populates="target", cascade="all, delete-orphan"
    )


class TargetListing(Base):
    """Which listing covers (or lies inside) which target, as found when the target was linked."""

    __tablename__ = "target_listings"

    target_id: Mapped[int] = mapped_column(
        ForeignKey("case_targets.id", ondelete="CASCADE"), primary_key=True
    )
    listing_id: Mapped[int] = mapped_column(ForeignKey("listings.id"), primary_key=True, index=True)
    relation: Mapped[str] = mapped_column(String(16), default="covers")

    target: Mapped[CaseTarget] = relationship(back_populates="listing_links")
    listing: Mapped[Listing] = relationship()


class CaseNote(Base):
    __tablename__ = "case_notes"

    id: Mapped[intpk]
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[timestamp]
