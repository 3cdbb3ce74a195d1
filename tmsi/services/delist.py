"""Delisting: removing an address or range from the active listings, splitting wider listings into the
minimal remaining CIDRs, with the history of every listing (listed, split, delisted: who, which case).

Idempotent: delisting what is no longer listed changes nothing and records nothing twice.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tmsi.db import utcnow
from tmsi.domain.networks import IPAddress, IPNetwork, exclude, network_keys, parse_network
from tmsi.models import Case, CaseTarget, Delisting, Listing, ListingEvent, ListingEventKind


@dataclass
class DelistResult:
    """What one delisting did: removed networks, listings split (parent → children), the Delisting row."""

    network: str
    removed: list[str] = field(default_factory=list)
    splits: dict[str, list[str]] = field(default_factory=dict)
    delisting: Delisting | None = None

    @property
    def changed(self) -> bool:
        return bool(self.removed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "removed": self.removed,
            "splits": self.splits,
            "delisting_id": self.delisting.id if self.delisting is not None else None,
        }


def _actor_text(actor: Any) -> str:
    return str(getattr(actor, "email", actor) or "system")


def _child(parent: Listing, network: IPNetwork, now: datetime) -> Listing:
    version, start, end = network_keys(network)
    return Listing(
        network=str(network),
        version=version,
        prefixlen=network.prefixlen,
        start_key=start,
        end_key=end,
        reason=parent.reason,
        listed_at=parent.listed_at,  # "listed since" stays the original date
        source=parent.source,
        evidence=dict(parent.evidence or {}),
        active=True,
        parent_id=parent.id,
        created_at=now,
    )


def remove_network(
    session: Session,
    network: IPNetwork,
    *,
    actor: Any = "system",
    case_id: int | None = None,
    reason: str = "",
    now: datetime | None = None,
) -> DelistResult:
    """Take ``network`` out of the active listings; listings wider than it are split into what remains.

    Returns what was removed; nothing overlapping means nothing changes (idempotent).
    """
    from tmsi.services.listings import find_overlapping

    now = now or utcnow()
    who = _actor_text(actor)
    result = DelistResult(network=str(network))
    for listing in find_overlapping(session, network):
        net = ipaddress.ip_network(listing.network)
        listing.active = False
        listing.removed_at = now
        detail: dict[str, Any] = {"requested": str(network)}
        if reason:
            detail["reason"] = reason
        if net.subnet_of(network):  # type: ignore[arg-type]
            result.removed.append(listing.network)
            session.add(
                ListingEvent(
                    listing_id=listing.id,
                    kind=ListingEventKind.DELISTED,
                    at=now,
                    actor=who,
                    case_id=case_id,
                    removed_network=listing.network,
                    detail=detail,
                )
            )
            continue
        # the unique index covers active rows only: the parent must be inactive before its children exist
        session.flush()
        children = exclude(net, network)
        rows = [_child(listing, child, now) for child in children]
        session.add_all(rows)
        session.flush()
        result.removed.append(str(network))
        result.splits[listing.network] = [str(c) for c in children]
        session.add(
            ListingEvent(
                listing_id=listing.id,
                kind=ListingEventKind.SPLIT,
                at=now,
                actor=who,
                case_id=case_id,
                removed_network=str(network),
                detail={**detail, "children": [str(c) for c in children]},
            )
        )
        for row in rows:
            session.add(
                ListingEvent(
                    listing_id=row.id,
                    kind=ListingEventKind.LISTED,
                    at=now,
                    actor=who,
                    case_id=case_id,
                    detail={"split_from": listing.network, "removed": str(network)},
                )
            )
    session.flush()
    return result


def delist(
    session: Session,
    network: IPNetwork | str,
    *,
    actor: Any = "system",
    case: Case | None = None,
    target: CaseTarget | None = None,
    reason: str = "",
    request_export: bool = True,
    now: datetime | None = None,
) -> DelistResult:
    """Delist ``network`` (for ``case``): split/remove listings, record a Delisting row for the closed loop
    (propagation check, then regression watch) and ask for a debounced zone export.

    Idempotent: a network no longer listed adds no history and no second Delisting for the same case.
    """
    net = parse_network(network) if isinstance(network, str) else network
    now = now or utcnow()
    case_id = case.id if case is not None else None
    result = remove_network(session, net, actor=actor, case_id=case_id, reason=reason, now=now)
    if not result.changed:
        same_case = Delisting.case_id.is_(None) if case_id is None else Delisting.case_id == case_id
        result.delisting = session.scalar(
            select(Delisting)
            .where(Delisting.network == str(net), same_case)
            .order_by(Delisting.id.desc())
            .limit(1)
        )
        return result
    row = Delisting(
        case_id=case_id,
        target_id=target.id if target is not None else None,
        network=str(net),
        actor=_actor_text(actor),
        at=now,
        propagation_status="pending",
        propagation_detail={"removed": result.removed, "splits": result.splits},
    )
    session.add(row)
    session.flush()
    result.delisting = row
    if request_export:
        from tmsi.services.export import request_export as ask_export

        ask_export(session, f"delisted {net}" + (f" ({case.reference})" if case is not None else ""), now=now)
    return result


def delist_network(
    session: Session, *, case: Case, target: CaseTarget, network: IPNetwork, actor: Any
) -> list[str]:
    """The delisting engine of :func:`tmsi.services.decide.delist` (its ``Delister`` signature)."""
    return delist(session, network, actor=actor, case=case, target=target).removed


def delist_targets(
    session: Session, case: Case, targets: list[CaseTarget], *, actor: str = "system", reason: str = ""
) -> list[str]:
    """Automatic delisting of whole targets (verification policy): the analyst's verb, by the system.

    The closing reply is sent by the propagation check once our DNSBL servers stop listing the addresses.
    """
    from tmsi.services import decide
    from tmsi.services.users import Actor

    selection = [(t, ipaddress.ip_network(t.network)) for t in targets]
    removed = decide.delist(session, case, Actor(id=None, email=actor), selection, reason=reason)
    flags = dict(case.flags or {})
    flags["closing_reply"] = "after_propagation"
    case.flags = flags
    session.flush()
    return removed


def listing_history(session: Session, address: IPAddress | IPNetwork | str) -> list[dict[str, Any]]:
    """Every listing (active or not) that ever covered ``address``, oldest first, each with its events."""
    from tmsi.services.listings import find_overlapping

    net = (
        parse_network(str(address))
        if not isinstance(address, ipaddress.IPv4Network | ipaddress.IPv6Network)
        else address
    )
    listings = find_overlapping(session, net, active_only=False)
    listings.sort(key=lambda item: (item.created_at, item.id))
    out: list[dict[str, Any]] = []
    for listing in listings:
        out.append(
            {
                "id": listing.id,
                "network": listing.network,
                "reason": listing.reason,
                "listed_at": listing.listed_at.isoformat(),
                "source": listing.source,
                "active": listing.active,
                "removed_at": listing.removed_at.isoformat() if listing.removed_at else None,
                "parent_id": listing.parent_id,
                "events": [
                    {
                        "kind": event.kind.value,
                        "at": event.at.isoformat(),
                        "actor": event.actor,
                        "case_id": event.case_id,
                        "removed_network": event.removed_network,
                        "detail": event.detail,
                    }
                    for event in listing.events
                ],
            }
        )
    return out
