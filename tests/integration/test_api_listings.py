from tmsi.db import unit_of_work
from tmsi.domain.listfile import Entry
from tmsi.domain.networks import parse_network
from tmsi.services.listings import import_entries


def test_healthz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_listings_api_returns_covering_listings(client, factory):
    with unit_of_work(factory) as s:
        import_entries(s, [Entry(1, parse_network("203.0.113.0/24"), "generic rDNS", None)])
    body = client.get("/api/v1/listings?ip=203.0.113.9").get_json()
    assert body["listed"] is True
    assert body["listings"][0]["network"] == "203.0.113.0/24"
    assert body["listings"][0]["relation"] == "covers"
    assert client.get("/api/v1/listings?ip=198.51.100.1").get_json()["listed"] is False


def test_listings_api_bad_input_is_400_json(client):
    for query, error in [("", "missing_ip"), ("nope", "invalid_ip"), ("203.0.113.7/24", "invalid_ip")]:
        resp = client.get(f"/api/v1/listings?ip={query}")
        assert resp.status_code == 400
        assert resp.get_json()["error"] == error
    assert "host bits" in client.get("/api/v1/listings?ip=203.0.113.7/24").get_json()["message"]
