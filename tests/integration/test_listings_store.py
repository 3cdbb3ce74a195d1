"""The listings store on the real test database (SQLite or PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import func, select

from tmsi.domain.listfile import Entry
from tmsi.domain.networks import parse_network
from tmsi.models import Listing
from tmsi.services.listings import find_overlapping, find_overlapping_rows, import_entries, lookup


def entries(*nets: str) -> list[Entry]:
    return [Entry(i, parse_network(n), f"reason {n}", None) for i, n in enumerate(nets, 1)]


def test_import_is_idempotent_and_handles_nesting(session):
    first = import_entries(
        session, entries("203.0.113.0/24", "203.0.113.7", "198.51.100.0/25", "198.51.100.128/25")
    )
    assert first.as_dict() == {"added": 3, "unchanged": 0, "covered": 1, "superseded": 0, "errors": 0}
    again = import_entries(
        session, entries("203.0.113.0/24", "203.0.113.7", "198.51.100.0/25", "198.51.100.128/25")
    )
    assert again.added == 0 and again.unchanged == 3 and again.covered == 1
    assert session.scalar(select(func.count()).select_from(Listing)) == 3


def test_wider_import_supersedes_narrower_listings(session):
    import_entries(session, entries("198.51.100.0/25", "198.51.100.128/26"))
    report = import_entries(session, entries("198.51.100.0/24"))
    assert report.added == 1 and report.superseded == 2
    active = session.scalars(select(Listing.network).where(Listing.active.is_(True))).all()
    assert active == ["198.51.100.0/24"]


def test_overlap_lookup_finds_supernets_and_subnets_only(session):
    import_entries(
        session, entries("203.0.113.0/24", "198.51.100.64/26", "198.51.100.200", "2001:db8:1::/48")
    )
    assert [x.network for x in find_overlapping(session, parse_network("203.0.113.7"))] == ["203.0.113.0/24"]
    assert [x.network for x in find_overlapping(session, parse_network("198.51.100.0/24"))] == [
        "198.51.100.64/26",
        "198.51.100.200/32",
    ]
    assert find_overlapping(session, parse_network("198.51.100.0/26")) == []
    assert [x.network for x in find_overlapping(session, parse_network("2001:db8:1:2::/64"))] == [
        "2001:db8:1::/48"
    ]
    assert find_overlapping(session, parse_network("2001:db8:2::1")) == []
    result = lookup(session, parse_network("198.51.100.0/25"))
    assert result["coverage"] == "partly_listed"
    assert lookup(session, parse_network("203.0.113.128/25"))["coverage"] == "listed"


def test_rows_and_objects_agree(session):
    import_entries(
        session, entries("203.0.113.0/24", "198.51.100.64/26", "198.51.100.200", "2001:db8:1::/48")
    )
    for query in ("203.0.113.7", "198.51.100.0/24", "198.51.100.0/26", "2001:db8:1:2::/64", "192.0.2.1"):
        net = parse_network(query)
        objects = [(x.id, x.network, x.reason) for x in find_overlapping(session, net)]
        rows = [(x.id, x.network, x.reason) for x in find_overlapping_rows(session, net)]
        assert objects == rows, query
