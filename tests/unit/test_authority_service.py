"""Authority evaluation with in-memory DNS and RDAP: DKIM signed in the test, SPF, DMARC, replies, flags."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
import spf

from tests.authority_support import DkimKey, delivered, make_key, request_body, sign
from tmsi.adapters.authority_dns import CachingDns, StaticDns
from tmsi.adapters.rdap import (
    Bootstrap,
    HttpRdap,
    InMemoryRdap,
    RdapError,
    install_bootstrap,
    validate_bootstrap,
)
from tmsi.config import Settings
from tmsi.domain.mail import parse_message
from tmsi.models import Case, CaseTarget, CheckResult, TargetStatus
from tmsi.services import authority as svc
from tmsi.services.authority import PtrFacts, RdapFacts


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> DkimKey:
    return make_key(tmp_path_factory.mktemp("dkim"), "sel1", "isp.example", bits=1024)


@pytest.fixture
def dns(key: DkimKey) -> StaticDns:
    return StaticDns(
        {
            ("sel1._domainkey.isp.example", "TXT"): [key.txt],
            ("noc.isp.example", "TXT"): ["v=spf1 ip4:203.0.113.16/28 -all"],
            ("isp.example", "TXT"): ["v=spf1 mx -all"],
            ("isp.example", "MX"): ["10 mail.isp.example"],
            ("mail.isp.example", "A"): ["203.0.113.25"],
            ("mail.isp.example", "TXT"): ["v=spf1 a -all"],
            ("_dmarc.isp.example", "TXT"): ["v=DMARC1; p=reject"],
        }
    )


@pytest.fixture
def conf() -> Settings:
    return Settings(authserv_ids=["mx.example.test"], own_networks=["192.0.2.0/28"], _env_file=None)


PTR_OK = [("192.0.2.7/32", PtrFacts(["static-customer-7.isp.example"], "ok", "verification"))]


def no_rdap(network: str) -> RdapFacts:
    raise AssertionError(f"RDAP asked for {network} although the PTR domain matched")


def signed_request(key: DkimKey, sender: str = "noc@noc.isp.example", **kw: Any) -> bytes:
    return sign(request_body(sender, **kw), key)


def test_signed_request_from_a_subdomain_sender_passes(key: DkimKey, dns: StaticDns, conf: Settings) -> None:
    raw = delivered(
        signed_request(key), client_ip="203.0.113.25", helo="mail.isp.example", mailfrom="noc@noc.isp.example"
    )
    result = svc.evaluate_authority(raw, PTR_OK, conf, dns, no_rdap)
    assert result.result == CheckResult.PASS
    dkim_check = next(c for c in result.authenticity.checks if c.method == "dkim")
    assert (dkim_check.result, dkim_check.source, dkim_check.aligned) == ("pass", "direct", True)
    spf_checks = {c.identity: c.result for c in result.authenticity.checks if c.method == "spf"}
    assert spf_checks == {"mailfrom": "pass", "helo": "pass"}
    assert result.authenticity.policy is not None and result.authenticity.policy.policy == "reject"
    asked = {(a["name"], a["type"]) for a in result.authenticity.evidence["dns"]}
    assert ("sel1._domainkey.isp.example", "TXT") in asked and ("_dmarc.noc.isp.example", "TXT") in asked
    assert result.targets[0].entitlement.via == "ptr_domain"
    assert result.reply is None and result.flags == []


def test_tampered_body_from_an_unlisted_address_fails_and_asks_the_sender(
    key: DkimKey, dns: StaticDns, conf: Settings
) -> None:
    raw = signed_request(key).replace(b"static.", b"static!")
    raw = delivered(raw, client_ip="198.51.100.66", helo="attacker.test", mailfrom="noc@noc.isp.example")
    result = svc.evaluate_authority(raw, PTR_OK, conf, dns, no_rdap)
    assert result.result == CheckResult.FAIL
    dkim_check = next(c for c in result.authenticity.checks if c.method == "dkim")
    assert dkim_check.result == "fail" and "body hash mismatch" in dkim_check.detail["error"]
    assert next(c for c in result.authenticity.checks if c.identity == "mailfrom").result == "fail"
    assert result.reply == "wrong_sender"
    assert any("DKIM sel1 for isp.example: fail" in line for line in result.checks)


def test_key_lookup_trouble_is_unverifiable(key: DkimKey, dns: StaticDns, conf: Settings) -> None:
    dns.failing.add("sel1._domainkey.isp.example")
    raw = delivered(
        signed_request(key), client_ip="198.51.100.66", helo="attacker.test", mailfrom="noc@noc.isp.example"
    )
    result = svc.evaluate_authority(raw, PTR_OK, conf, dns, no_rdap)
    assert result.result == CheckResult.UNVERIFIABLE
    assert next(c for c in result.authenticity.checks if c.method == "dkim").result == "temperror"
    assert result.reply is None


def test_missing_key_is_a_permerror(key: DkimKey, conf: Settings) -> None:
    raw = delivered(signed_request(key), client_ip="198.51.100.66", helo="attacker.test", mailfrom="")
    result = svc.evaluate_authority(raw, PTR_OK, conf, StaticDns(), no_rdap)
    assert next(c for c in result.authenticity.checks if c.method == "dkim").result == "permerror"
    assert result.result == CheckResult.FAIL


def test_our_mta_verdict_is_used_without_asking_dns(key: DkimKey, conf: Settings) -> None:
    dns = StaticDns()
    raw = delivered(
        request_body("noc@noc.isp.example"),
        client_ip="203.0.113.25",
        helo="mail.isp.example",
        mailfrom="noc@noc.isp.example",
        our_results="dkim=pass header.d=isp.example; dmarc=pass header.from=noc.isp.example",
    )
    result = svc.evaluate_authority(raw, PTR_OK, conf, dns, no_rdap)
    assert result.result == CheckResult.PASS
    assert {c.source for c in result.authenticity.checks} == {"mta"}
    assert dns.queries == []


def test_forged_results_below_ours_are_ignored(key: DkimKey, dns: StaticDns, conf: Settings) -> None:
    forged = (
        b"Authentication-Results: mx.example.test; dkim=pass header.d=isp.example;\r\n"
        b"\tdmarc=pass header.from=isp.example\r\n"
    ) + request_body("noc@isp.example")
    raw = delivered(
        forged,
        client_ip="198.51.100.66",
        helo="mx.example.test",
        mailfrom="noc@isp.example",
        our_results="spf=fail smtp.mailfrom=noc@isp.example",
    )
    result = svc.evaluate_authority(raw, PTR_OK, conf, dns, no_rdap)
    assert result.result == CheckResult.FAIL
    ar = result.authenticity.evidence["authentication_results"]
    assert len(ar["untrusted_ours"]) == 1
    assert [c.source for c in result.authenticity.checks] == ["mta"]  # our spf=fail; no DKIM signature


def test_freemail_sender_is_told_to_contact_the_isp(conf: Settings) -> None:
    raw = delivered(
        request_body("customer@freemail.example"),
        client_ip="198.51.100.70",
        helo="out.freemail.example",
        mailfrom="customer@freemail.example",
        our_results="dmarc=pass header.from=freemail.example",
    )
    result = svc.evaluate_authority(raw, PTR_OK, conf, StaticDns(), no_rdap)
    assert result.reply == "freemail"
    assert [f["kind"] for f in result.flags] == ["freemail"]


def test_rdap_is_asked_when_the_ptr_domain_does_not_match(conf: Settings) -> None:
    raw = delivered(
        request_body("hostmaster@isp.example"),
        client_ip="203.0.113.25",
        helo="mail.isp.example",
        mailfrom="hostmaster@isp.example",
        our_results="dmarc=pass header.from=isp.example",
    )
    rdap = InMemoryRdap(
        {
            "203.0.113.0/24": {
                "entities": [
                    {
                        "roles": ["abuse"],
                        "vcardArray": ["vcard", [["email", {}, "text", "hostmaster@isp.example"]]],
                    }
                ]
            }
        }
    )
    targets = [("203.0.113.5/32", PtrFacts(["host-203-0-113-5.dsl.carrier.example"], "ok", "verification"))]
    result = svc.evaluate_authority(
        raw, targets, conf, StaticDns(), lambda net: svc.rdap_facts(None, rdap, net, conf)
    )
    assert result.result == CheckResult.PASS
    assert result.targets[0].entitlement.via == "rdap_contact"
    assert rdap.fetched == ["memory://ip/203.0.113.5"]


def test_display_name_spoof_and_lookalike_are_flagged(conf: Settings) -> None:
    raw = delivered(
        request_body("noc@lsp.example", from_name="abuse@isp.example"),
        client_ip="198.51.100.9",
        helo="mail.lsp.example",
        mailfrom="noc@lsp.example",
        our_results="dmarc=pass header.from=lsp.example",
    )
    result = svc.evaluate_authority(
        raw, PTR_OK, conf, StaticDns(), lambda net: RdapFacts("not_found", [], {})
    )
    kinds = [f["kind"] for f in result.flags]
    assert kinds == ["display_name_spoof", "lookalike_domain"]
    assert result.result == CheckResult.FAIL


def test_offline_summary_uses_only_trusted_headers(key: DkimKey, conf: Settings) -> None:
    raw = delivered(
        signed_request(key),
        client_ip="203.0.113.25",
        helo="mail.isp.example",
        mailfrom="noc@noc.isp.example",
        our_results="spf=pass smtp.mailfrom=noc@noc.isp.example",
    )
    summary = svc.authority_summary(parse_message(raw), conf)
    assert summary["result"] == "pass"
    assert summary["offline"] is True
    assert summary["checks"][0]["source"] == "mta"
    unsigned = delivered(
        signed_request(key), client_ip="203.0.113.25", helo="mail.isp.example", mailfrom="noc@noc.isp.example"
    )
    offline = svc.authority_summary(parse_message(unsigned), conf)
    assert offline["result"] == "none"
    assert any(item.startswith("DKIM") for item in offline["not_checked"])


def test_header_fields_unfold_and_skip_an_mbox_line() -> None:
    raw = b"From someone Sun Nov 29 2026\nSubject: a\n b\nX-Y:  c  \n\nbody: no"
    assert svc.header_fields(raw) == [("Subject", "a b"), ("X-Y", "c")]


def test_pyspf_keeps_its_own_resolver_outside_our_checks() -> None:
    assert spf.DNSLookup is svc._pyspf_lookup
    assert svc._SPF_DNS.get() is None


def test_caching_dns_keeps_answers_but_not_errors(dns: StaticDns) -> None:
    cache = CachingDns(dns)
    cache.query("isp.example", "MX")
    cache.query("ISP.example.", "mx")
    dns.failing.add("broken.example")
    cache.query("broken.example", "TXT")
    cache.query("broken.example", "TXT")
    assert dns.queries.count(("isp.example", "MX")) == 1
    assert dns.queries.count(("broken.example", "TXT")) == 2
    assert cache.hits == 1


def test_caching_dns_is_bounded_and_expires(dns: StaticDns) -> None:
    clock = [0.0]
    cache = CachingDns(dns, max_ttl=60, max_entries=3, timer=lambda: clock[0])
    for i in range(5):
        dns.add(f"mx{i}.isp.example", "A", "192.0.2.1")
        cache.query(f"mx{i}.isp.example", "A")
    assert len(cache) == 3  # least recently used dropped
    cache.query("mx4.isp.example", "A")
    assert cache.hits == 1
    cache.query("mx0.isp.example", "A")  # evicted: asked again
    assert dns.queries.count(("mx0.isp.example", "A")) == 2
    clock[0] = 61.0  # past max_ttl: every answer expired
    assert len(cache) == 0
    cache.query("mx4.isp.example", "A")
    assert dns.queries.count(("mx4.isp.example", "A")) == 2


def test_auto_delist_eligibility() -> None:
    target = CaseTarget(network="192.0.2.7/32", status=TargetStatus.PASS, authority_result=CheckResult.PASS)
    case = Case(
        reference="TMSI-2026-000001",
        authority_result=CheckResult.PASS,
        verification_result=CheckResult.PASS,
        flags={},
        targets=[target],
    )
    on = Settings(auto_delist=True, _env_file=None)
    assert svc.is_auto_delist_eligible(case, on)
    assert not svc.is_auto_delist_eligible(case, Settings(auto_delist=False, _env_file=None))
    case.flags = {"authority_flags": [{"kind": "lookalike_domain", "detail": "x"}]}
    assert not svc.is_auto_delist_eligible(case, on)
    case.flags = {}
    target.authority_result = CheckResult.FAIL
    assert not svc.is_auto_delist_eligible(case, on)


# --- RDAP bootstrap ----------------------------------------------------------------------------------
def test_shipped_bootstrap_covers_the_documentation_ranges() -> None:
    rdap = HttpRdap.from_settings(Settings(_env_file=None))
    assert rdap.urls_for("192.0.2.7/32") == ["https://rdap.example.test/rdap/ip/192.0.2.7"]
    assert rdap.urls_for("203.0.113.0/24")[0].startswith("https://")
    assert rdap.urls_for("2001:db8:1::/48") == ["https://rdap.example.test/rdap/ip/2001:db8:1::/48"]
    override = HttpRdap.from_settings(Settings(rdap_base_urls="http://127.0.0.1:9/r", _env_file=None))
    assert override.urls_for("198.51.100.0/24") == ["http://127.0.0.1:9/r/ip/198.51.100.0/24"]


def test_bootstrap_longest_prefix_wins() -> None:
    boot = Bootstrap(
        [
            {
                "services": [
                    [["192.0.0.0/8"], ["https://a.example/"]],
                    [["192.0.2.0/24"], ["http://b.example/", "https://b.example/"]],
                ]
            }
        ]
    )
    assert boot.base_urls("192.0.2.128/25") == ["https://b.example/", "http://b.example/"]
    assert boot.base_urls("192.1.0.0/16") == ["https://a.example/"]
    assert boot.base_urls("198.51.100.0/24") == []


def test_bootstrap_validation_and_install(tmp_path: Path) -> None:
    good4 = tmp_path / "v4.json"
    good4.write_text(json.dumps({"services": [[["198.51.100.0/24"], ["https://r.example/"]]]}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"services": [[["not-a-net"], ["https://r.example/"]]]}))
    with pytest.raises(ValueError, match="bad network"):
        validate_bootstrap(json.loads(bad.read_text()))
    with pytest.raises(ValueError, match="either IPv4 or IPv6"):
        validate_bootstrap({"services": [[["192.0.2.0/24", "2001:db8::/32"], ["https://r.example/"]]]})
    target = tmp_path / "boot"
    with pytest.raises(ValueError):
        install_bootstrap([good4, bad], target)
    assert not (target / "ipv4.json").exists()  # nothing replaced when one file is bad
    assert install_bootstrap([good4], target) == [(good4, "ipv4")]
    assert Bootstrap.load(target).base_urls("198.51.100.7") == ["https://r.example/"]


def test_cli_refresh_bootstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from tmsi.cli.authority import authority

    monkeypatch.setenv("TMSI_RDAP_BOOTSTRAP_DIR", str(tmp_path / "boot"))
    v6 = tmp_path / "dl6.json"
    v6.write_text(json.dumps({"services": [[["2001:db8::/32"], ["https://r6.example/"]]]}))
    out = CliRunner().invoke(authority, ["refresh-bootstrap", str(v6)])
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "boot" / "ipv6.json").read_text())["services"][0][1] == [
        "https://r6.example/"
    ]
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    failed = CliRunner().invoke(authority, ["refresh-bootstrap", str(broken)])
    assert failed.exit_code != 0 and "services" in failed.output


def test_in_memory_rdap_timeouts_and_misses() -> None:
    rdap = InMemoryRdap({"192.0.2.0/24": {"handle": "N1"}}, failing=["198.51.100.0/24"])
    assert rdap.fetch(rdap.urls_for("192.0.2.7")[0]).data == {"handle": "N1"}
    assert rdap.fetch(rdap.urls_for("203.0.113.0/24")[0]).status == "not_found"
    with pytest.raises(RdapError) as exc:
        rdap.fetch(rdap.urls_for("198.51.100.0/25")[0])
    assert exc.value.kind == "timeout"
    assert ipaddress.ip_network("192.0.2.0/24")  # the fixture networks are documentation ranges


def test_ed25519_signatures_verify_and_unknown_algorithms_are_permerrors() -> None:
    import base64

    import dkim
    import nacl.signing

    signing = nacl.signing.SigningKey.generate()
    message = request_body("noc@isp.example")
    raw = (
        dkim.sign(
            message,
            b"ed",
            b"isp.example",
            base64.b64encode(bytes(signing)),
            signature_algorithm=b"ed25519-sha256",
            include_headers=[b"from", b"subject", b"date"],
        )
        + message
    )
    public = base64.b64encode(bytes(signing.verify_key)).decode()
    dns = StaticDns({("ed._domainkey.isp.example", "TXT"): [f"v=DKIM1; k=ed25519; p={public}"]})
    [check] = svc.verify_dkim(raw, svc.header_fields(raw), dns)
    assert (check.result, check.detail["algorithm"]) == ("pass", "ed25519-sha256")
    bogus = raw.replace(b"a=ed25519-sha256", b"a=rsa-sha999", 1)
    [odd] = svc.verify_dkim(bogus, svc.header_fields(bogus), dns)
    assert odd.result == "permerror"


def test_rdap_is_not_asked_for_an_unauthenticated_message(conf: Settings) -> None:
    raw = delivered(
        request_body("noc@isp.example"),
        client_ip="198.51.100.66",
        helo="attacker.test",
        mailfrom="noc@isp.example",
        our_results="spf=fail smtp.mailfrom=noc@isp.example",
    )
    targets = [("203.0.113.5/32", PtrFacts(["host-203-0-113-5.dsl.carrier.example"], "ok", "verification"))]
    result = svc.evaluate_authority(raw, targets, conf, StaticDns(), no_rdap)
    assert result.result == CheckResult.FAIL
    assert result.targets[0].evidence["rdap"] == {
        "status": "not_checked",
        "note": "not asked: the message is not authenticated",
    }
