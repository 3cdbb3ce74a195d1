"""The trust rule for Authentication-Results: only our MTA's fields, above the hop from the outside."""

from __future__ import annotations

import ipaddress

from tmsi.domain.authority_headers import evaluate_trust, parse_received

IDS = ["mx.example.test"]
OWN = [ipaddress.ip_network("192.0.2.0/28")]


def fields(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for line in text.strip().splitlines():
        if line.startswith((" ", "\t")):
            out[-1] = (out[-1][0], out[-1][1] + " " + line.strip())
        else:
            name, _, value = line.partition(":")
            out.append((name, value.strip()))
    return out


def test_our_results_above_the_boundary_are_trusted_and_the_hop_is_recorded() -> None:
    headers = fields(
        """
Return-Path: <noc@noc.isp.example>
Authentication-Results: mx.example.test; dkim=pass (2048-bit key) header.d=isp.example header.s=sel1;
 spf=pass smtp.mailfrom=noc@noc.isp.example; dmarc=pass header.from=noc.isp.example
Received: from mail.isp.example (mail.isp.example [203.0.113.25]) by mx.example.test (Postfix) with ESMTPS
From: noc@noc.isp.example
"""
    )
    trust = evaluate_trust(headers, IDS, own_networks=OWN)
    assert [r.method for r in trust.results()] == ["dkim", "spf", "dmarc"]
    assert trust.results("dkim")[0].props["header.d"] == "isp.example"
    assert trust.boundary is not None
    assert trust.boundary.from_ips == ("203.0.113.25",)
    assert trust.boundary.from_host == "mail.isp.example"
    assert trust.zone_end == 3
    assert not trust.untrusted_ours


def test_forged_results_with_our_id_below_our_received_are_ignored() -> None:
    headers = fields(
        """
Authentication-Results: mx.example.test; dkim=none; spf=fail smtp.mailfrom=noc@isp.example
Received: from attacker.test (unknown [198.51.100.66]) by mx.example.test (Postfix) with ESMTP
Authentication-Results: mx.example.test; dkim=pass header.d=isp.example; dmarc=pass header.from=isp.example
From: noc@isp.example
"""
    )
    trust = evaluate_trust(headers, IDS, own_networks=OWN)
    assert [(r.method, r.result) for r in trust.results()] == [("dkim", "none"), ("spf", "fail")]
    assert len(trust.untrusted_ours) == 1
    assert trust.untrusted_ours[0].position == 2
    assert any("possibly forged" in note for note in trust.notes)


def test_a_client_that_helos_as_our_host_does_not_extend_the_zone() -> None:
    # The HELO name is chosen by the client; the address in brackets is what our MTA saw.
    headers = fields(
        """
Received: from mx.example.test (unknown [198.51.100.66]) by mx.example.test (Postfix) with ESMTP
Authentication-Results: mx.example.test; dmarc=pass header.from=isp.example
From: noc@isp.example
"""
    )
    trust = evaluate_trust(headers, IDS, own_networks=OWN)
    assert trust.trusted == ()
    assert len(trust.untrusted_ours) == 1
    assert trust.boundary is not None and trust.boundary.from_ips == ("198.51.100.66",)


def test_internal_hops_from_our_networks_and_loopback_stay_in_the_zone() -> None:
    headers = fields(
        """
Received: from store.example.test (localhost [127.0.0.1]) by mx.example.test with LMTP
Received: from filter.example.test (filter.example.test [192.0.2.3]) by mx.example.test with ESMTP
Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=noc@isp.example
Received: from mail.isp.example (mail.isp.example [203.0.113.25]) by mx.example.test with ESMTPS
"""
    )
    trust = evaluate_trust(headers, IDS, own_networks=OWN)
    assert [r.method for r in trust.results()] == ["spf"]
    assert trust.boundary is not None and trust.boundary.from_ips == ("203.0.113.25",)


def test_other_authserv_ids_are_ignored_and_end_the_zone() -> None:
    headers = fields(
        """
Authentication-Results: relay.isp.example; dkim=pass header.d=isp.example
Authentication-Results: mx.example.test; dkim=pass header.d=isp.example
Received: from mail.isp.example ([203.0.113.25]) by mx.example.test
"""
    )
    trust = evaluate_trust(headers, IDS)
    assert trust.trusted == ()
    assert [f.authserv_id for f in trust.foreign] == ["relay.isp.example"]
    assert len(trust.untrusted_ours) == 1


def test_a_received_by_a_foreign_host_ends_the_zone() -> None:
    headers = fields(
        """
Received: from a.isp.example ([203.0.113.1]) by relay.isp.example
Authentication-Results: mx.example.test; dkim=pass header.d=isp.example
"""
    )
    trust = evaluate_trust(headers, IDS)
    assert trust.trusted == ()
    assert trust.zone_end == 0


def test_without_our_received_only_the_topmost_block_counts() -> None:
    headers = fields(
        """
Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=a@isp.example
From: a@isp.example
Authentication-Results: mx.example.test; dkim=pass header.d=isp.example
"""
    )
    trust = evaluate_trust(headers, IDS)
    assert [r.method for r in trust.results()] == ["spf"]
    assert trust.boundary is None
    assert len(trust.untrusted_ours) == 1


def test_nothing_is_trusted_without_configured_authserv_ids() -> None:
    headers = fields("Authentication-Results: mx.example.test; dmarc=pass header.from=isp.example")
    trust = evaluate_trust(headers, [])
    assert trust.trusted == ()
    assert "TMSI_AUTHSERV_IDS" in trust.notes[0]


def test_received_parsing_handles_ipv6_and_missing_parts() -> None:
    hop = parse_received("from mail6.isp.example (mail6.isp.example [IPv6:2001:db8::25]) by mx.example.test")
    assert hop.from_ips == ("2001:db8::25",)
    assert hop.by_host == "mx.example.test"
    bare = parse_received("by mx.example.test with LMTP")
    assert bare.from_host == "" and bare.from_ips == ()
