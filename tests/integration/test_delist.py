"""Delisting semantics on the real test database: splits into minimal CIDRs, history, idempotency, and
(property-based) agreement with plain set arithmetic after any sequence of list/delist operations."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from tmsi.domain.listfile import Entry
from tmsi.domain.networks import collapse
from tmsi.models import Delisting, ExportRun, Listing, ListingEvent, ListingEventKind
from tmsi.services.delist import delist, listing_history, remove_network
from tmsi.services.listings import import_entries


def _list(session, *networks: str, reason: str = "generic rDNS") -> None:
    entries = [Entry(i, ipaddress.ip_network(n), reason, None) for i, n in enumerate(networks, 1)]
    import_entries(session, entries, actor="importer")


def _active(session) -> list[str]:
    rows = session.scalars(select(Listing).where(Listing.active.is_(True)).order_by(Listing.id))
    return sorted(
        (r.network for r in rows), key=lambda n: (ipaddress.ip_network(n).version, ipaddress.ip_network(n))
    )


def test_delisting_one_address_splits_a_slash_24_into_the_minimal_remaining_cidrs(session):
    _list(session, "198.51.100.0/24")
    result = delist(session, "198.51.100.77", actor="ana@example.test")
    assert result.removed == ["198.51.100.77/32"]
    expected = list(
        ipaddress.ip_network("198.51.100.0/24").address_exclude(ipaddress.ip_network("198.51.100.77/32"))
    )
    assert _active(session) == [str(n) for n in sorted(expected)]
    assert len(_active(session)) == 8  # /25 /26 /27 /28 /29 /30 /31 /32: one per prefix length below /24
    parent = session.scalar(select(Listing).where(Listing.network == "198.51.100.0/24"))
    assert parent is not None and not parent.active and parent.removed_at is not None
    children = session.scalars(select(Listing).where(Listing.parent_id == parent.id)).all()
    assert {c.listed_at for c in children} == {parent.listed_at}
    assert {c.reason for c in children} == {"generic rDNS"}
    split = [e for e in parent.events if e.kind == ListingEventKind.SPLIT]
    assert len(split) == 1 and split[0].actor == "ana@example.test"
    assert split[0].removed_network == "198.51.100.77/32"
    assert sorted(split[0].detail["children"]) == sorted(str(n) for n in expected)
    assert collapse(expected) == sorted(expected)  # already minimal: nothing left to merge


def test_delisting_is_idempotent(session):
    _list(session, "203.0.113.0/28")
    first = delist(session, "203.0.113.4/30", actor="ana@example.test")
    assert first.changed and first.delisting is not None
    events = session.scalars(select(ListingEvent)).all()
    delistings = session.scalars(select(Delisting)).all()
    again = delist(session, "203.0.113.4/30", actor="ana@example.test")
    assert not again.changed
    assert again.delisting is not None and again.delisting.id == first.delisting.id
    assert session.scalars(select(ListingEvent)).all() == events
    assert session.scalars(select(Delisting)).all() == delistings
    assert _active(session) == ["203.0.113.0/30", "203.0.113.8/29"]


def test_delisting_a_range_wider_than_several_listings_removes_each(session):
    _list(session, "192.0.2.8/29", "192.0.2.20", "192.0.2.200")
    result = delist(session, "192.0.2.0/27")
    assert sorted(result.removed) == ["192.0.2.20/32", "192.0.2.8/29"]
    assert _active(session) == ["192.0.2.200/32"]
    assert not result.splits


def test_ipv6_split(session):
    _list(session, "2001:db8:1::/48")
    delist(session, "2001:db8:1:2::/64")
    remaining = [ipaddress.ip_network(n) for n in _active(session)]
    assert len(remaining) == 16  # /49 ... /64
    assert all(ipaddress.ip_address("2001:db8:1:2::5") not in n for n in remaining)
    assert sum(n.num_addresses for n in remaining) == 2**80 - 2**64


def test_delisting_requests_one_debounced_export(session):
    _list(session, "192.0.2.0/24")
    delist(session, "192.0.2.1")
    delist(session, "192.0.2.2")
    delist(session, "192.0.2.9")
    runs = session.scalars(select(ExportRun)).all()
    assert len(runs) == 1 and runs[0].status == "pending"
    assert "192.0.2.9" in runs[0].reason


def test_listing_history_follows_an_address_through_splits(session):
    _list(session, "198.51.100.0/24", reason="dynamic token")
    delist(session, "198.51.100.128/25", actor="ana@example.test")
    delist(session, "198.51.100.7", actor="bob@example.test")
    history = listing_history(session, "198.51.100.7")
    assert [(h["network"], h["active"]) for h in history] == [
        ("198.51.100.0/24", False),
        ("198.51.100.0/25", False),
    ]
    top, half = history
    assert [(e["kind"], e["actor"], e["removed_network"]) for e in top["events"]] == [
        ("split", "ana@example.test", "198.51.100.128/25")
    ]
    assert [(e["kind"], e["actor"]) for e in half["events"]] == [
        ("listed", "ana@example.test"),
        ("split", "bob@example.test"),
    ]
    assert half["events"][0]["detail"]["split_from"] == "198.51.100.0/24"
    assert half["parent_id"] == top["id"]
    # a neighbour is still listed, with the original reason and date
    neighbour = [h for h in listing_history(session, "198.51.100.6") if h["active"]]
    assert [h["network"] for h in neighbour] == ["198.51.100.6/32"]
    assert neighbour[0]["reason"] == "dynamic token"
    assert neighbour[0]["listed_at"] == top["listed_at"]


# --- property: listed addresses == set arithmetic ------------------------------------------------
# 64 addresses per version keep the expectation enumerable; both versions share one sequence.
UNIVERSES = (ipaddress.ip_network("192.0.2.0/26"), ipaddress.ip_network("2001:db8::/122"))


@st.composite
def small_networks(draw):
    universe = draw(st.sampled_from(UNIVERSES))
    host = universe.max_prefixlen
    prefix = draw(st.integers(min_value=host - 6, max_value=host))
    size = 2 ** (host - prefix)
    index = draw(st.integers(min_value=0, max_value=64 // size - 1))
    return ipaddress.ip_network((int(universe.network_address) + index * size, prefix))


def _addresses(net) -> set[tuple[int, int]]:
    return {(net.version, a) for a in range(int(net.network_address), int(net.broadcast_address) + 1)}


operations = st.lists(
    st.tuples(st.sampled_from(["list", "delist"]), small_networks()), min_size=1, max_size=14
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_listed_addresses_equal_set_arithmetic(session, ops):
    savepoint = session.begin_nested()
    try:
        expected: set[tuple[int, int]] = set()
        for op, net in ops:
            if op == "list":
                _list(session, str(net))
                expected |= _addresses(net)
            else:
                delist(session, net, request_export=False)
                expected -= _addresses(net)
        active = [ipaddress.ip_network(n) for n in _active(session)]
        actual: set[tuple[int, int]] = set()
        for n in active:
            span = _addresses(n)
            assert not (actual & span), f"overlapping active listings: {active}"
            actual |= span
        assert actual == expected
        # every split produced the minimal CIDR cover of what remained of its parent
        for event in session.scalars(select(ListingEvent).where(ListingEvent.kind == ListingEventKind.SPLIT)):
            children = [ipaddress.ip_network(c) for c in event.detail["children"]]
            assert collapse(children) == sorted(children)
    finally:
        savepoint.rollback()


def test_remove_network_without_listings_changes_nothing(session):
    result = remove_network(session, ipaddress.ip_network("203.0.113.99/32"))
    assert result.removed == [] and result.splits == {}
    assert session.scalars(select(ListingEvent)).all() == []


@pytest.mark.parametrize("network", ["192.0.2.0/24", "2001:db8::/64"])
def test_delisting_the_whole_listing_marks_it_delisted(session, network):
    _list(session, network)
    result = delist(session, network, actor="ana@example.test")
    assert result.removed == [network] and _active(session) == []
    (event,) = session.scalars(
        select(ListingEvent).where(ListingEvent.kind == ListingEventKind.DELISTED)
    ).all()
    assert event.removed_network == network
