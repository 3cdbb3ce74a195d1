"""Live verification against real Knot servers: reverse and forward zones, RFC 2317 classless delegation
to a second server, missing PTR, PTR without forward match, several PTRs, IPv6, truncation to TCP, a
server that never answers, and an RFC 2136 update that the re-verification picks up."""

from __future__ import annotations

import ipaddress
import json
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from tests.services.knot import soa_header
from tmsi.adapters.resolver import DnsResolver, ErrorKind, ZoneFileResolver, resolve
from tmsi.db import unit_of_work, utcnow
from tmsi.domain.networks import network_keys
from tmsi.models import AuditEvent, Case, CaseStatus, CaseTarget, CheckResult, DnsCheck, TargetStatus
from tmsi.services import cases, verify

pytestmark = pytest.mark.integration

PARENT = "2.0.192.in-addr.arpa"
CHILD = "64-127.2.0.192.in-addr.arpa"
MANY = 60  # PTR records of 192.0.2.40: the reply exceeds 1232 bytes, so it comes truncated, then over TCP


def _parent_zone() -> str:
    lines = [
        "7 IN PTR static-customer-7.isp.example.",
        "8 IN PTR dyn-192-0-2-8.pool.isp.example.",
        "9 IN PTR mail.example.test.",
        "11 IN PTR static-11.isp.example.",
        "11 IN PTR mail11.example.test.",
        "12 IN PTR static-12.isp.example.",
        "12 IN PTR dyn-192-0-2-12.pool.isp.example.",
        "20 IN PTR static-20.isp.example.",
        "30 IN PTR static-thirty.isp.example.",
        "64-127 IN NS ns-classless.example.test.",
        *[f"{i} IN CNAME {i}.64-127" for i in range(64, 128)],
        *[f"40 IN PTR static-40-{n}.isp.example." for n in range(MANY)],
    ]
    return soa_header(PARENT) + "\n".join(lines) + "\n"


def _child_zone() -> str:
    return soa_header(CHILD) + "".join(
        f"{i} IN PTR static-{i}.classless.isp.example.\n" for i in range(64, 100)
    )


def _isp_zone() -> str:
    lines = [
        "static-customer-7 IN A 192.0.2.7",
        "dyn-192-0-2-8.pool IN A 192.0.2.8",
        "static-11 IN A 192.0.2.11",
        "static-12 IN A 192.0.2.12",
        "dyn-192-0-2-12.pool IN A 192.0.2.12",
        "static-20 IN A 198.51.100.99",
        *[f"static-{i}.classless IN A 192.0.2.{i}" for i in range(64, 100)],
        *[f"static-40-{n} IN A 192.0.2.40" for n in range(MANY)],
        *[f"static-{i} IN A 203.0.113.{i}" for i in range(0, 200)],
    ]
    return soa_header("isp.example") + "\n".join(lines) + "\n"


def _zones(with_child: bool) -> dict[str, str]:
    zones = {
        PARENT: _parent_zone(),
        "113.0.203.in-addr.arpa": soa_header("113.0.203.in-addr.arpa")
        + "".join(f"{i} IN PTR static-{i}.isp.example.\n" for i in range(0, 200))
        + "".join(f"{i} IN PTR dyn-203-0-113-{i}.pool.isp.example.\n" for i in range(200, 230)),
        "8.b.d.0.1.0.0.2.ip6.arpa": soa_header("8.b.d.0.1.0.0.2.ip6.arpa")
        + "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0 IN PTR mail6.example.test.\n",
        "isp.example": _isp_zone(),
        "example.test": soa_header("example.test")
        + "ns1 IN A 127.0.0.1\nns-classless IN A 127.0.0.1\nmail IN A 192.0.2.9\nmail11 IN A 192.0.2.11\n"
        "mail6 IN AAAA 2001:db8::25\n",
    }
    if with_child:
        zones[CHILD] = _child_zone()
    return zones


@pytest.fixture(scope="module")
def parent(knot_server):
    """Knot with the parent reverse zone (CNAMEs into a delegated classless zone it does not serve)."""
    with knot_server(_zones(with_child=False)) as server:
        yield server


@pytest.fixture(scope="module")
def child(knot_server):
    """A second Knot serving only the RFC 2317 classless child zone."""
    with knot_server({CHILD: _child_zone()}) as server:
        yield server


def engine(*servers: str, timeout: float = 1.0) -> DnsResolver:
    return DnsResolver(list(servers), timeout=timeout, retries=1)


def test_verdicts_against_real_knot(parent):
    res = engine(parent.nameserver)
    results = {
        r.address: r
        for r in verify.check_addresses(
            res, [ipaddress.ip_address(f"192.0.2.{i}") for i in (7, 8, 9, 10, 11, 12, 20)]
        )
    }
    assert results["192.0.2.7"].result == CheckResult.PASS
    assert results["192.0.2.9"].result == CheckResult.PASS  # custom name, forward-confirmed
    assert (
        results["192.0.2.8"].result == CheckResult.FAIL
        and results["192.0.2.8"].headline == "PTR name is dynamic"
    )
    missing = results["192.0.2.10"]
    assert missing.result == CheckResult.FAIL and "NXDOMAIN" in missing.reasons[0] and missing.min_ttl == 60
    assert results["192.0.2.11"].result == CheckResult.PASS and len(results["192.0.2.11"].ptr_names) == 2
    assert results["192.0.2.12"].result == CheckResult.FAIL  # one of two names is dynamic
    mismatch = results["192.0.2.20"]
    assert mismatch.result == CheckResult.FAIL and "resolves to 198.51.100.99" in mismatch.reasons[0]
    evidence = results["192.0.2.7"].evidence()["queries"]
    assert evidence[0]["resolver"] == parent.nameserver and evidence[0]["aa"] is True
    assert evidence[0]["answers"][0]["ttl"] == 300 and evidence[0]["ms"] >= 0


def test_ipv6_address(parent):
    result = verify.check_address(engine(parent.nameserver), "2001:db8::25")
    assert result.result == CheckResult.PASS
    assert [q["type"] for q in result.evidence()["queries"]] == ["PTR", "AAAA"]


def test_rfc2317_cname_followed_to_the_classless_zone_on_another_server(parent, child):
    res = engine(parent.nameserver, child.nameserver)
    result = verify.check_address(res, "192.0.2.70")
    assert result.result == CheckResult.PASS, result.reasons
    assert "classless delegation via CNAME 70.64-127.2.0.192.in-addr.arpa." in result.reasons[0]
    queries = result.evidence()["queries"]
    assert queries[0]["answers"][0]["type"] == "CNAME"
    assert (
        queries[1]["query"] == "70.64-127.2.0.192.in-addr.arpa."
        and queries[1]["resolver"] == child.nameserver
    )
    # the CNAME target exists but has no PTR inside the classless zone
    assert verify.check_address(res, "192.0.2.120").result == CheckResult.FAIL


def test_referral_and_out_of_zone_refusal_are_unverifiable_not_failures(parent):
    res = engine(parent.nameserver)
    lame = resolve(res, "70.64-127.2.0.192.in-addr.arpa", "PTR")
    assert lame.error == ErrorKind.LAME and lame.detail == "referral"
    result = verify.check_address(res, "192.0.2.70")  # the classless server is not reachable: cannot check
    assert result.result == CheckResult.UNVERIFIABLE and "lame" in result.reasons[0]
    refused = verify.check_address(res, "198.51.100.7")  # no server here knows 100.51.198.in-addr.arpa
    assert refused.result == CheckResult.UNVERIFIABLE and "refused" in refused.reasons[0]


def test_one_server_serving_both_zones_needs_the_second_query_too(knot_server):
    # Knot chases a CNAME only inside one zone: the answer holds the CNAME alone, so the target is asked
    with knot_server(_zones(with_child=True)) as both:
        result = verify.check_address(engine(both.nameserver), "192.0.2.65")
        assert result.result == CheckResult.PASS
        queries = result.evidence()["queries"]
        assert [(q["query"], q["type"]) for q in queries] == [
            ("65.2.0.192.in-addr.arpa.", "PTR"),
            ("65.64-127.2.0.192.in-addr.arpa.", "PTR"),
            ("static-65.classless.isp.example.", "A"),
        ]
        assert [a["type"] for a in queries[0]["answers"]] == ["CNAME"]


def test_truncated_reply_is_asked_again_over_tcp(parent):
    result = verify.check_address(engine(parent.nameserver), "192.0.2.40")
    assert result.result == CheckResult.PASS, result.reasons[:3]
    ptr = result.evidence()["queries"][0]
    assert ptr["transport"] == "tcp" and len(ptr["answers"]) == MANY


def test_server_that_never_answers_gives_unverifiable(parent, dead_dns):
    result = verify.check_address(engine(dead_dns.nameserver, timeout=0.3), "192.0.2.7")
    assert result.result == CheckResult.UNVERIFIABLE
    assert "timeout" in result.reasons[0] and result.evidence()["queries"][0]["attempts"] == 2
    both = verify.check_address(engine(dead_dns.nameserver, parent.nameserver, timeout=0.3), "192.0.2.7")
    assert both.result == CheckResult.PASS  # the retry went to the server that answers


def test_range_against_knot_groups_failures(parent):
    seen = []
    summary = verify.verify_network(engine(parent.nameserver), "203.0.113.0/24", seen.append, chunk_size=100)
    assert (summary.passed, summary.failed, summary.unverifiable) == (200, 56, 0)
    groups = {g["reason"]: g["ranges"] for g in summary.as_dict()["failing"]}
    assert groups == {
        "no PTR record": ["203.0.113.230-203.0.113.255"],
        "PTR name is dynamic": ["203.0.113.200-203.0.113.229"],
    }
    assert [p.done for p in seen] == [100, 200, 256]


def test_cli_check_prints_json_lines(parent):
    from tmsi.cli.rdns import rdns

    runner = CliRunner()
    out = runner.invoke(
        rdns, ["check", "192.0.2.7", "--resolver", parent.nameserver], env={"TMSI_DNS_TIMEOUT": "1"}
    )
    assert out.exit_code == 0, out.output
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines[0]["ip"] == "192.0.2.7" and lines[0]["result"] == "pass" and lines[0]["verdict"] == "static"
    assert lines[0]["evidence"][0]["q"] == "7.2.0.192.in-addr.arpa. PTR"
    assert lines[-1]["summary"]["passed"] == 1
    rng = runner.invoke(rdns, ["check", "192.0.2.8/30", "--resolver", parent.nameserver, "--failing-only"])
    assert rng.exit_code == 1
    lines = [json.loads(line) for line in rng.stdout.splitlines()]
    assert [line["ip"] for line in lines[:-1]] == ["192.0.2.8", "192.0.2.10"]
    assert "checked 4/4" in rng.stderr


def _case_with_target(session, network: str) -> tuple[int, int]:
    case = cases.open_case(session, subject="delist please", requester_email="noc@isp.example")
    net = ipaddress.ip_network(network)
    version, start, end = network_keys(net)
    case.targets.append(
        CaseTarget(
            network=str(net),
            version=version,
            prefixlen=net.prefixlen,
            start_key=start,
            end_key=end,
            status=TargetStatus.PENDING,
            summary={},
            authority_evidence={},
            next_check_at=utcnow(),
        )
    )
    session.flush()
    return case.id, case.targets[0].id


def test_dynamic_update_is_picked_up_by_reverification(parent, factory, settings):
    settings.resolvers = [parent.nameserver]
    settings.dns_timeout = 1.0
    with unit_of_work(factory) as session:
        case_id, target_id = _case_with_target(session, "192.0.2.30/32")
    verify.job_verify_target(settings, factory, target_id, trigger="new", delist=None)
    with unit_of_work(factory) as session:
        target = session.get_one(CaseTarget, target_id)
        assert target.status == TargetStatus.FAIL
        assert target.summary["failing"] == [{"address": "192.0.2.30", "reason": "PTR name has no A record"}]
        assert session.get_one(Case, case_id).status == CaseStatus.VERIFYING
        due = target.next_check_at
        assert due is not None and due - target.last_checked_at == timedelta(minutes=15)

    parent.update_a("static-thirty.isp.example", "192.0.2.30")  # RFC 2136: the ISP fixes its forward record

    assert verify.job_reverify_due(settings, factory, now=due, delist=None) == 1
    with unit_of_work(factory) as session:
        target = session.get_one(CaseTarget, target_id)
        case = session.get_one(Case, case_id)
        assert target.status == TargetStatus.PASS and case.status == CaseStatus.READY_FOR_DECISION
        assert case.verification_result == CheckResult.PASS
        checks = session.scalars(
            select(DnsCheck).where(DnsCheck.target_id == target_id).order_by(DnsCheck.id)
        ).all()
        assert [c.result for c in checks] == [CheckResult.FAIL, CheckResult.PASS]
        assert checks[1].evidence["queries"][1]["answers"][0]["value"] == "192.0.2.30"
        actions = session.scalars(select(AuditEvent.action).where(AuditEvent.case_id == case_id)).all()
        assert actions.count("case.status") == 2  # new -> verifying -> ready_for_decision


def test_in_flight_bound_and_rate_limit_hold(parent, dead_dns):
    import time

    questions = [(f"{i}.2.0.192.in-addr.arpa", "PTR") for i in range(50)]
    bounded = DnsResolver([dead_dns.nameserver], timeout=0.2, retries=0, max_in_flight=10)
    before = dead_dns.received
    started = time.monotonic()
    answers = bounded.resolve_many(questions)
    elapsed = time.monotonic() - started
    assert all(a.error == ErrorKind.TIMEOUT for a in answers)
    assert elapsed >= 0.9  # 5 waves of 10: never more than 10 waiting at once
    assert dead_dns.received - before == 50
    slow = DnsResolver([parent.nameserver], timeout=1.0, retries=2, rate_limit=200)
    started = time.monotonic()
    answers = slow.resolve_many(questions * 4)  # 200 questions at 200/s (burst 10)
    assert time.monotonic() - started >= 0.9
    assert sum(1 for a in answers if a.ok) == 200


def test_zone_file_resolver_answers_like_the_server(tmp_path, parent):
    path = tmp_path / "2.0.192.in-addr.arpa.zone"
    path.write_text(_parent_zone())
    fwd = tmp_path / "isp.example.zone"
    fwd.write_text(_isp_zone())
    offline = ZoneFileResolver([path, fwd])
    live = engine(parent.nameserver)
    for address in ("192.0.2.7", "192.0.2.8", "192.0.2.10", "192.0.2.12", "192.0.2.20"):
        a, b = verify.check_address(offline, address), verify.check_address(live, address)
        assert (a.result, a.headline, a.ptr_names) == (b.result, b.headline, b.ptr_names)
    assert verify.check_address(offline, "203.0.113.9").result == CheckResult.UNVERIFIABLE  # zone not loaded


def test_lost_and_forged_replies_are_resent_and_ignored(parent):
    import time

    from tests.services.knot_extra import LossyProxy

    proxy = LossyProxy(parent.host, parent.port, drop_every=5, forge_every=7)
    try:
        res = DnsResolver([proxy.nameserver], timeout=2.0, retries=2)
        started = time.monotonic()
        summary = verify.verify_network(res, "203.0.113.0/25")
        elapsed = time.monotonic() - started
        assert (summary.passed, summary.failed, summary.unverifiable) == (128, 0, 0)
        assert proxy.dropped >= 40 and proxy.forged >= 30
        # a lost reply at the tail of a batch is sent again after ~50 ms instead of waiting the 2 s timeout:
        # two batches (PTR, then A) with losses finish well before even one timeout would have passed
        assert elapsed < 2.0
        assert res.stats["hedged"] >= proxy.dropped
        assert sum(a.hedged for r in summary.results for a in r.answers) >= proxy.dropped
        # same id, other question: never taken as the answer (a forgery for a finished query is "unmatched")
        assert 1 <= res.stats["mismatched"] <= proxy.forged
    finally:
        proxy.close()


def test_hedge_goes_to_the_next_server_and_timeouts_still_count(parent, dead_dns):
    res = DnsResolver([dead_dns.nameserver, parent.nameserver], timeout=2.0, retries=0)
    answers = res.resolve_many([(f"{i}.113.0.203.in-addr.arpa", "PTR") for i in range(4)])
    assert all(
        a.ok and a.rcode == "NOERROR" for a in answers
    )  # retries=0, yet the dead server's share passes
    assert {a.resolver for a in answers} == {parent.nameserver}
    assert [a.hedged for a in answers].count(1) == 2 and all(a.attempts == 1 for a in answers)
    alone = DnsResolver([dead_dns.nameserver], timeout=0.3, retries=1).resolve_many(
        [("7.2.0.192.in-addr.arpa", "PTR")]
    )
    assert alone[0].error == ErrorKind.TIMEOUT and alone[0].attempts == 2  # hedges do not shorten the budget
