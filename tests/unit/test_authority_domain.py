"""Pure authority rules: registered domains, alignment, DMARC records, verdicts, RDAP contacts, flags."""

from __future__ import annotations

import pytest

from tmsi.domain.authority import (
    AuthCheck,
    RdapContact,
    aligned,
    combine_targets,
    decide_authenticity,
    decide_entitlement,
    display_name_spoof,
    lookalike_flags,
    overall_result,
    parse_dmarc_record,
    rdap_contacts,
    registered_domain,
)
from tmsi.models import CheckResult

FREEMAIL = frozenset({"freemail.example"})


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("noc.isp.example", "isp.example"),
        ("ISP.Example.", "isp.example"),
        ("static-customer-7.isp.example", "isp.example"),
        ("a.b.co.uk", "b.co.uk"),
        ("example", ""),
        ("", ""),
    ],
)
def test_registered_domain(name: str, expected: str) -> None:
    assert registered_domain(name) == expected


def test_alignment_relaxed_and_strict() -> None:
    assert aligned("isp.example", "noc.isp.example", "r")
    assert not aligned("isp.example", "noc.isp.example", "s")
    assert aligned("noc.isp.example", "NOC.isp.example.", "s")
    assert not aligned("other.example", "isp.example", "r")
    assert not aligned("", "isp.example")


def test_dmarc_record_parsing() -> None:
    policy = parse_dmarc_record("v=DMARC1; p=reject; adkim=s; aspf=r; pct=50", "isp.example")
    assert policy is not None
    assert (policy.policy, policy.adkim, policy.aspf, policy.pct, policy.subdomain_policy) == (
        "reject",
        "s",
        "r",
        50,
        "reject",
    )
    assert parse_dmarc_record("v=spf1 -all", "isp.example") is None
    odd = parse_dmarc_record("v=DMARC1; p=bogus; pct=x", "isp.example")
    assert odd is not None and odd.policy == "none" and odd.pct == 100


def dkim(result: str, domain: str, source: str = "direct") -> AuthCheck:
    return AuthCheck("dkim", result, domain, "sel1", source)


def spf(result: str, domain: str) -> AuthCheck:
    return AuthCheck("spf", result, domain, "mailfrom", "direct")


def test_aligned_dkim_pass_passes_even_for_a_subdomain_sender() -> None:
    verdict = decide_authenticity([dkim("pass", "isp.example")], "noc.isp.example", policy_status="ok")
    assert verdict.result == CheckResult.PASS
    assert verdict.checks[0].aligned


def test_unaligned_pass_fails() -> None:
    verdict = decide_authenticity([dkim("pass", "bulk.example"), spf("pass", "bulk.example")], "isp.example")
    assert verdict.result == CheckResult.FAIL
    assert "no DKIM signature or SPF pass aligned" in verdict.reasons[0]


def test_strict_policy_rejects_relaxed_alignment() -> None:
    policy = parse_dmarc_record("v=DMARC1; p=reject; adkim=s; aspf=s", "isp.example")
    verdict = decide_authenticity(
        [dkim("pass", "isp.example")], "noc.isp.example", policy=policy, policy_status="ok"
    )
    assert verdict.result == CheckResult.FAIL


def test_dns_trouble_is_unverifiable_never_fail() -> None:
    verdict = decide_authenticity(
        [dkim("temperror", "isp.example"), spf("fail", "isp.example")], "isp.example"
    )
    assert verdict.result == CheckResult.UNVERIFIABLE
    # relaxed-only alignment cannot be confirmed without the DMARC record
    unsure = decide_authenticity(
        [dkim("pass", "isp.example")], "noc.isp.example", policy_status="unverifiable"
    )
    assert unsure.result == CheckResult.UNVERIFIABLE
    exact = decide_authenticity([dkim("pass", "isp.example")], "isp.example", policy_status="unverifiable")
    assert exact.result == CheckResult.PASS


def test_nothing_to_check_is_none_and_mta_dmarc_decides() -> None:
    assert decide_authenticity([], "isp.example").result == CheckResult.NONE
    mta_pass = AuthCheck("dmarc", "pass", "isp.example", source="mta")
    assert decide_authenticity([mta_pass], "isp.example").result == CheckResult.PASS
    mta_fail = AuthCheck("dmarc", "fail", "isp.example", source="mta")
    assert (
        decide_authenticity([mta_fail, dkim("pass", "isp.example")], "isp.example").result == CheckResult.FAIL
    )
    # a DMARC verdict for another domain than the From domain is not ours to use
    other = AuthCheck("dmarc", "pass", "other.example", source="mta")
    assert decide_authenticity([other], "isp.example").result == CheckResult.NONE
    assert decide_authenticity([dkim("pass", "isp.example")], "").result == CheckResult.FAIL


def test_helo_spf_counts_only_for_the_null_sender() -> None:
    helo = AuthCheck("spf", "pass", "mail.isp.example", "helo", "direct")
    assert decide_authenticity([helo], "isp.example").result == CheckResult.FAIL
    bounce = AuthCheck("spf", "pass", "mail.isp.example", "helo", "direct", detail={"null_mailfrom": True})
    assert decide_authenticity([bounce], "isp.example").result == CheckResult.PASS


RDAP = {
    "objectClassName": "ip network",
    "handle": "NET-192-0-2-0-1",
    "entities": [
        {
            "roles": ["registrant"],
            "vcardArray": [
                "vcard",
                [
                    ["version", {}, "text", "4.0"],
                    ["fn", {}, "text", "ISP Example"],
                    ["email", {}, "text", "legal@isp.example"],
                ],
            ],
            "entities": [
                {
                    "roles": ["abuse"],
                    "handle": "ABUSE1",
                    "vcardArray": [
                        "vcard",
                        [["fn", {}, "text", "Abuse"], ["email", {}, "text", "Abuse@ISP.example"]],
                    ],
                },
                {
                    "roles": ["technical", "noc"],
                    "vcardArray": ["vcard", [["email", {"type": "work"}, "text", "noc@isp.example"]]],
                },
            ],
        },
        {"roles": ["administrative"], "vcardArray": ["vcard", [["tel", {}, "uri", "tel:+1-555-0100"]]]},
    ],
}


def test_rdap_contacts_walk_nested_entities() -> None:
    contacts = rdap_contacts(RDAP)
    assert [(c.email, c.roles) for c in contacts] == [
        ("legal@isp.example", ("registrant",)),
        ("abuse@isp.example", ("abuse",)),
        ("noc@isp.example", ("technical", "noc")),
    ]
    assert contacts[1].handle == "ABUSE1"


def test_entitlement_by_ptr_domain_for_a_subdomain_sender() -> None:
    ent = decide_entitlement(
        "noc@noc.isp.example",
        ptr_names=["static-customer-7.isp.example"],
        ptr_status="ok",
        rdap_status="not_checked",
    )
    assert ent.result == CheckResult.PASS and ent.via == "ptr_domain"


def test_ptr_names_of_several_owners_do_not_entitle() -> None:
    ent = decide_entitlement(
        "noc@isp.example",
        ptr_names=["a.isp.example", "b.other.example"],
        ptr_status="ok",
        rdap_status="ok",
        contacts=[],
    )
    assert ent.result == CheckResult.FAIL
    assert "other.example" in ent.reasons[0]


def test_entitlement_by_rdap_contact_or_contact_domain() -> None:
    contacts = rdap_contacts(RDAP)
    exact = decide_entitlement(
        "abuse@isp.example", ptr_names=[], ptr_status="none", rdap_status="ok", contacts=contacts
    )
    assert exact.result == CheckResult.PASS and exact.via == "rdap_contact"
    same = decide_entitlement(
        "hostmaster@mail.isp.example",
        ptr_names=["x.dsl.example"],
        ptr_status="ok",
        rdap_status="ok",
        contacts=contacts,
    )
    assert same.result == CheckResult.PASS and same.via == "rdap_contact_domain"
    registrant_only = [RdapContact("legal@isp.example", ("registrant",))]
    no = decide_entitlement(
        "legal@isp.example", ptr_names=[], ptr_status="none", rdap_status="ok", contacts=registrant_only
    )
    assert no.result == CheckResult.FAIL


def test_freemail_never_entitles_even_as_a_contact_domain() -> None:
    contacts = [RdapContact("isp-abuse@freemail.example", ("abuse",))]
    ent = decide_entitlement(
        "someone@freemail.example",
        ptr_names=[],
        ptr_status="none",
        rdap_status="ok",
        contacts=contacts,
        freemail=FREEMAIL,
    )
    assert ent.result == CheckResult.FAIL
    assert "freemail" in ent.reasons[0]


def test_rdap_trouble_is_unverifiable() -> None:
    ent = decide_entitlement("noc@isp.example", ptr_names=[], ptr_status="none", rdap_status="unverifiable")
    assert ent.result == CheckResult.UNVERIFIABLE
    dns_trouble = decide_entitlement(
        "noc@isp.example", ptr_names=[], ptr_status="unverifiable", rdap_status="not_found"
    )
    assert dns_trouble.result == CheckResult.UNVERIFIABLE


def test_combining_targets_and_overall() -> None:
    P, F, U = CheckResult.PASS, CheckResult.FAIL, CheckResult.UNVERIFIABLE
    assert combine_targets([P, P]) == P
    assert combine_targets([P, F]) == CheckResult.PARTIAL
    assert combine_targets([F, U]) == F
    assert combine_targets([P, U]) == U
    assert combine_targets([]) == CheckResult.NONE
    assert overall_result(CheckResult.FAIL, [P]) == F
    assert overall_result(P, [P, F]) == CheckResult.PARTIAL


def test_display_name_spoofs() -> None:
    assert "abuse@isp.example" in display_name_spoof("abuse@isp.example", "x@attacker.test")
    assert "isp.example" in display_name_spoof("ISP.example NOC", "x@attacker.test")
    assert display_name_spoof("NOC of isp.example", "noc@noc.isp.example") == ""
    assert display_name_spoof("John Q. Public", "john@isp.example") == ""
    assert display_name_spoof("", "john@isp.example") == ""


def test_lookalike_domains() -> None:
    assert any("looks like isp.example" in f for f in lookalike_flags("lsp.example", ["a.isp.example"]))
    cyrillic = "isp.ex\u0430mple"  # Cyrillic a
    flags = lookalike_flags(cyrillic, ["a.isp.example"])
    assert any("confusable" in f for f in flags)
    puny = cyrillic.encode("idna").decode()
    assert any("punycode" in f for f in lookalike_flags(puny, []))
    assert any("one character away" in f for f in lookalike_flags("ispp-net.example", ["isp-net.example"]))
    assert lookalike_flags("isp.example", ["static.isp.example"]) == []
    assert lookalike_flags("other.example", ["isp.example"]) == []
