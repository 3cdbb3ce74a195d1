"""Listings (what the DNSBL serves) and their history of listing, splitting and delisting."""

from __future__ import annotations

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from tmsi.db import Base, enum_column, intpk, ipkey, jsondict, str255, timestamp, timestamp_opt
from tmsi.enums import ListingEventKind


class Listing(Base):
    """One listed CIDR. Active rows are served; removed rows stay as history.

    ``start_key``/``end_key`` are the fixed-width big-endian first/last addresses, so containment and
    overlap queries are index range scans on ``(version, start_key)`` on both databases.
    """

    __tablename__ = "listings"
    __table_args__ = (
        CheckConstraint("version IN (4, 6)", name="version"),
        CheckConstraint("prefixlen >= 0 AND prefixlen <= 128", name="prefixlen"),
        Index("ix_listings_active_start", "version", "start_key", "prefixlen"),
        # The shortest active prefix per version (one index probe): the case page probes for a target's
        # covering CIDRs only from that length on (see tmsi.web.ui._TARGET_LISTINGS).
        Index(
            "ix_listings_active_prefixlen",
            "version",
            "prefixlen",
            sqlite_where=text("active"),
            postgresql_where=text("active"),
        ),
        Index(
            "uq_listings_active_network",
            "network",
            unique=True,
            sqlite_where=text("active"),
            postgresql_where=text("active"),
        ),
    )

    id: Mapped[intpk]
    network: Mapped[str] = mapped_column(String(49))
    version: Mapped[int]
    prefixlen: Mapped[int]
    start_key: Mapped[ipkey]
    end_key: Mapped[ipkey]
    reason: Mapped[str255] = mapped_column(default="")
    listed_at: Mapped[timestamp]
    source: Mapped[str] = mapped_column(String(64), default="import")
    evidence: Mapped[jsondict]
    active: Mapped[bool] = mapped_column(default=True)
    removed_at: Mapped[timestamp_opt]
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("listings.id"), index=True)
    created_at: Mapped[timestamp]

    events: Mapped[list[ListingEvent]] = relationship(back_populates="listing", order_by="ListingEvent.id")

    def __repr__(self) -> str:
        return f"<Listing {self.network} {'active' if self.active else 'removed'}>"


class ListingEvent(Base):
    """Append-only history: listed, split (into children), delisted (by whom, for which case)."""

    __tablename__ = "listing_events"

    id: Mapped[intpk]
    listing_id: Mapped[int] = mapped_column(ForeignKey("listings.id"), index=True)
    kind: Mapped[ListingEventKind] = enum_column(ListingEventKind, "kind")
    at: Mapped[timestamp]
    actor: Mapped[str255] = mapped_column(default="system")
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    removed_network: Mapped[str | None] = mapped_column(String(49))
    detail: Mapped[jsondict]

    listing: Mapped[Listing] = relationship(back_populates="events")


class ExportRun(Base):
    """A request for, and the result of, one zone export (debounced: many requests → one run)."""

    __tablename__ = "export_runs"

    id: Mapped[intpk]
    requested_at: Mapped[timestamp]
    started_at: Mapped[timestamp_opt]
    finished_at: Mapped[timestamp_opt]
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    serial: Mapped[int | None]
    path: Mapped[str | None] = mapped_column(String(1024))
    count_v4: Mapped[int] = mapped_column(default=0)
    count_v6: Mapped[int] = mapped_column(default=0)
    reason: Mapped[str255] = mapped_column(default="")
    error: Mapped[str | None] = mapped_column(String(4000))


class Delisting(Base):
    """One delisted network for a case: the closed loop (propagation) and the regression watch."""

    __tablename__ = "delistings"

    id: Mapped[intpk]
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    target_id: Mapped[int | None] = mapped_column(ForeignKey("case_targets.id"), index=True)
    network: Mapped[str] = mapped_column(String(49))
    actor: Mapped[str255] = mapped_column(default="system")
    at: Mapped[timestamp]
    export_id: Mapped[int | None] = mapped_column(ForeignKey("export_runs.id"))
    propagation_status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    propagation_deadline: Mapped[timestamp_opt]
    propagated_at: Mapped[timestamp_opt]
    propagation_detail: Mapped[jsondict]
    next_regression_check_at: Mapped[timestamp_opt] = mapped_column(index=True)
    regression_status: Mapped[str] = mapped_column(String(16), default="ok")
    regression_evidence: Mapped[jsondict]


class PolicySetting(Base):
    """Deployment policy a lead may change at run time (auto-delisting, schedules, per-ISP rules)."""

    __tablename__ = "policy_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[jsondict]
    updated_at: Mapped[timestamp]
    updated_by: Mapped[str255] = mapped_column(default="system")
