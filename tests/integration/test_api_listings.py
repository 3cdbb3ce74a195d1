import ipaddress

import pytest

from tests.integration.ui_support import make_user, token_for
from tmsi.db import unit_of_work
from tmsi.domain.listfile import Entry
from tmsi.domain.networks import parse_network
from tmsi.services.listings import LOOKUP_LIMIT, import_entries, lookup


@pytest.fixture
def bot(factory):
    make_user(factory, "bot@example.test", "auditor")
    return {"Authorization": f"Bearer {token_for(factory, 'bot@example.test')}"}


def test_healthz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_listings_api_returns_covering_listings(client, factory, bot):
    with unit_of_work(factory) as s:
        import_entries(s, [Entry(1, parse_network("203.0.113.0/24"), "generic rDNS", None)])
    body = client.get("/api/v1/listings?ip=203.0.113.9", headers=bot).get_json()
    assert body["listed"] is True and body["truncated"] is False
    assert body["listings"][0]["network"] == "203.0.113.0/24"
    assert body["listings"][0]["relation"] == "covers"
    assert client.get("/api/v1/listings?ip=198.51.100.1", headers=bot).get_json()["listed"] is False


def test_listings_api_needs_a_token_or_a_session(client):
    # the anonymous look-up of one address is /api/v1/lookup (rate-limited)
    answer = client.get("/api/v1/listings?ip=203.0.113.9")
    assert answer.status_code == 401 and answer.get_json()["error"] == "unauthorized"


def test_listings_api_bad_input_is_400_json(client, bot):
    for query, error in [("", "missing_ip"), ("nope", "invalid_ip"), ("203.0.113.7/24", "invalid_ip")]:
        resp = client.get(f"/api/v1/listings?ip={query}", headers=bot)
        assert resp.status_code == 400
        assert resp.get_json()["error"] == error
    message = client.get("/api/v1/listings?ip=203.0.113.7/24", headers=bot).get_json()["message"]
    assert "host bits" in message


def test_a_wide_look_up_stops_at_the_limit_and_keeps_the_covering_listing(factory, session):
    inside = list(ipaddress.ip_network("198.51.100.0/24").subnets(new_prefix=30))  # 64 listings
    with unit_of_work(factory) as s:
        import_entries(s, [Entry(i, net, "dynamic", None) for i, net in enumerate(inside)])
        import_entries(s, [Entry(99, parse_network("2001:db8::/32"), "dynamic", None)])
    wide = lookup(session, parse_network("198.51.100.0/24"), limit=10)
    assert wide["truncated"] is True and len(wide["listings"]) == 10
    assert wide["listed"] is True and wide["coverage"] == "partly_listed"
    whole = lookup(session, parse_network("198.51.100.0/24"), limit=64)
    assert whole["truncated"] is False and whole["coverage"] == "listed" and len(whole["listings"]) == 64
    # a listing covering the query is found with the smallest limit (active listings never nest)
    covered = lookup(session, parse_network("2001:db8:1::/48"), limit=1)
    assert [item["network"] for item in covered["listings"]] == ["2001:db8::/32"]
    assert covered["coverage"] == "listed"
    assert LOOKUP_LIMIT == 1000
