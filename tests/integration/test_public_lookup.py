"""The public lookup page and API: listed or not, since when, why, what to do; the live rDNS check;
rate limits per client; no case contents or requester addresses ever shown."""

from __future__ import annotations

import ipaddress
import re

import pytest

from tmsi.db import unit_of_work
from tmsi.domain.listfile import Entry
from tmsi.models import Case
from tmsi.services import cases, ingest
from tmsi.services.delist import delist
from tmsi.services.listings import import_entries

pytestmark = pytest.mark.integration


@pytest.fixture
def listed(factory):
    with unit_of_work(factory) as session:
        import_entries(
            session,
            [
                Entry(1, ipaddress.ip_network("198.51.100.0/24"), "generic rDNS", None),
                Entry(2, ipaddress.ip_network("2001:db8:1::/48"), "dynamic token in rDNS", None),
            ],
        )
        case = cases.open_case(
            session, subject="SECRET-SUBJECT delist", requester_email="private@isp.example"
        )
        ingest.add_targets(session, case, [ipaddress.ip_network("198.51.100.7")])
        delist(session, "198.51.100.7", actor="ana@example.test", case=case)
        return case.id


def test_api_says_listed_since_when_why_and_what_to_do(client, listed, settings):
    response = client.get("/api/v1/lookup?ip=198.51.100.77")
    assert response.status_code == 200
    data = response.get_json()
    assert data["listed"] is True and data["ip"] == "198.51.100.77"
    (entry,) = data["listings"]
    assert entry["network"] == "198.51.100.64/26"  # what remains of the /24 around .77 after .7 left
    assert entry["reason"] == "generic rDNS" and entry["listed_since"][:4].isdigit()
    steps = data["what_to_do"]
    assert len(steps) == 3 and settings.mailbox_address in steps[2]["text"]
    assert "outgoing mail server" in steps[0]["text"] and "static" in steps[1]["text"]

    v6 = client.get("/api/v1/lookup?ip=2001:db8:1::25").get_json()
    assert v6["listed"] and v6["listings"][0]["reason"] == "dynamic token in rDNS"


def test_api_for_a_delisted_address_says_not_listed_and_when_it_was_removed(client, listed):
    data = client.get("/api/v1/lookup?ip=198.51.100.7").get_json()
    assert data["listed"] is False and data["listings"] == [] and data["what_to_do"] == []
    assert data["delisted_at"] is not None
    never = client.get("/api/v1/lookup?ip=203.0.113.200").get_json()
    assert never["listed"] is False and never["delisted_at"] is None


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "Enter"),
        ("not-an-ip", "not an IPv4"),
        ("10.1.2.3", "private"),
        ("198.51.100.0/24", "not an IPv4"),
    ],
)
def test_api_rejects_bad_input(client, listed, query, message):
    response = client.get(f"/api/v1/lookup?ip={query}")
    assert response.status_code == 400 and message in response.get_json()["message"]


def test_page_shows_the_listing_and_never_case_contents(client, listed, settings):
    page = client.get("/lookup?ip=198.51.100.77")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "198.51.100.77 is listed" in html and "generic rDNS" in html
    assert settings.mailbox_address in html and "Check my rDNS now" in html
    for word in ("SECRET-SUBJECT", "private@isp.example", "ana@example.test", "TMSI-"):
        assert word not in html
    delisted = client.get("/lookup?ip=198.51.100.7").get_data(as_text=True)
    assert "198.51.100.7 is not listed" in delisted and "removed from the list on" in delisted
    for word in ("SECRET-SUBJECT", "private@isp.example", "ana@example.test", "TMSI-"):
        assert word not in delisted
    api = client.get("/api/v1/lookup?ip=198.51.100.7").get_data(as_text=True)
    assert "private@isp.example" not in api and "ana@example.test" not in api and "case" not in api


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the form"
    return match.group(1)


def test_check_button_runs_the_live_verification_against_real_dns(app, listed, knot):
    app.config["TMSI"].resolvers = [knot.nameserver]
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    knot.update_ptr("198.51.100.44", "static-44.isp.example")
    knot.update_a("static-44.isp.example", "198.51.100.44")
    html = client.get("/lookup?ip=198.51.100.44").get_data(as_text=True)
    token = _csrf(html)

    refused = client.post("/lookup/check", data={"ip": "198.51.100.44"})
    assert refused.status_code == 400  # no CSRF token

    response = client.post("/lookup/check", data={"ip": "198.51.100.44", "csrf_token": token})
    page = response.get_data(as_text=True)
    assert response.status_code == 200, page
    assert "44.100.51.198.in-addr.arpa" in page and "static-44.isp.example" in page
    assert "clearly static" in page

    knot.update_ptr("198.51.100.45", "dyn-198-51-100-45.pool.isp.example")
    knot.update_a("dyn-198-51-100-45.pool.isp.example", "198.51.100.45")
    page = client.post("/lookup/check", data={"ip": "198.51.100.45", "csrf_token": token}).get_data(
        as_text=True
    )
    assert "not clearly static" in page and "dyn-198-51-100-45.pool.isp.example" in page
    knot.delete("198.51.100.44")
    knot.delete("198.51.100.45")
    knot.delete("static-44.isp.example")
    knot.delete("dyn-198-51-100-45.pool.isp.example")


def test_check_uses_the_leads_per_isp_rules(app, listed, knot, tmp_path):
    """A lead's rules file (TMSI_RDNS_RULES_FILE) decides the public check too, not only the case work."""
    rules = tmp_path / "isp-rules.toml"
    rules.write_text(
        '[[isp]]\ndomain = "isp.example"\npattern = "^gw-"\nverdict = "dynamic"\n'
        'reason = "isp.example: gw- names are consumer gateways"\n'
    )
    knot.update_ptr("198.51.100.46", "gw-central.isp.example")
    knot.update_a("gw-central.isp.example", "198.51.100.46")
    try:
        app.config["TMSI"].resolvers = [knot.nameserver]
        client = app.test_client()
        form = {
            "ip": "198.51.100.46",
            "csrf_token": _csrf(client.get("/lookup?ip=198.51.100.46").get_data(as_text=True)),
        }
        before = client.post("/lookup/check", data=form).get_data(as_text=True)
        assert "clearly static" in before and "not clearly static" not in before  # a custom name passes
        app.config["TMSI"].rdns_rules_file = str(rules)
        after = client.post("/lookup/check", data=form).get_data(as_text=True)
        assert "not clearly static" in after and "consumer gateways" in after
    finally:
        knot.delete("198.51.100.46")
        knot.delete("gw-central.isp.example")


def test_lookup_is_rate_limited_per_client(app, listed):
    app.config["TMSI"].public_lookup_rate_limit = "3 per minute"
    client = app.test_client()
    codes = [client.get("/api/v1/lookup?ip=198.51.100.77").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    other = client.get("/api/v1/lookup?ip=198.51.100.77", environ_base={"REMOTE_ADDR": "127.0.0.9"})
    assert other.status_code == 200


def test_check_is_rate_limited_more_strictly(app, listed, knot):
    app.config["TMSI"].resolvers = [knot.nameserver]
    app.config["TMSI"].public_check_rate_limit = "2 per minute"
    app.config["WTF_CSRF_ENABLED"] = False
    client = app.test_client()
    codes = [client.post("/lookup/check", data={"ip": "192.0.2.7"}).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_case_is_untouched_by_public_lookups(client, listed, factory):
    client.get("/lookup?ip=198.51.100.7")
    with unit_of_work(factory) as session:
        case = session.get(Case, listed)
        assert case.requester_email == "private@isp.example"


def test_check_against_an_unreachable_resolver_says_could_not_check(app, listed, dead_dns):
    settings = app.config["TMSI"]
    settings.resolvers = [dead_dns.nameserver]
    settings.dns_timeout, settings.dns_retries = 0.2, 0
    app.config["WTF_CSRF_ENABLED"] = False
    response = app.test_client().post("/lookup/check", data={"ip": "198.51.100.77"})
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "could not be checked" in page and "not clearly static" not in page
