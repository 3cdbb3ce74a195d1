"""Verification with the in-memory resolver: verdicts, evidence, ranges, storage, the re-check schedule."""

from __future__ import annotations

import ipaddress
from datetime import timedelta

import pytest
from sqlalchemy import select

from tmsi.adapters.resolver import ErrorKind, FakeResolver
from tmsi.db import unit_of_work, utcnow
from tmsi.domain.networks import network_keys
from tmsi.models import (
    AuditEvent,
    Case,
    CaseStatus,
    CaseTarget,
    CheckResult,
    DnsCheck,
    NameVerdict,
    OutboxMessage,
    RunStatus,
    TargetStatus,
    VerificationRun,
)
from tmsi.services import cases, verify


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def add_target(session, case: Case, network: str) -> CaseTarget:
    net = ipaddress.ip_network(network)
    version, start, end = network_keys(net)
    target = CaseTarget(
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
    case.targets.append(target)
    session.flush()
    return target


def new_case(session, *networks: str, authority: CheckResult = CheckResult.PENDING) -> Case:
    case = cases.open_case(session, subject="please delist", requester_email="noc@isp.example")
    case.authority_result = authority
    for network in networks:
        add_target(session, case, network)
    for target in case.targets:
        target.authority_result = authority
    return case


# --- one address -----------------------------------------------------------------------------------


def test_static_forward_confirmed_address_passes_with_evidence():
    fake = FakeResolver().host("192.0.2.7", "static-customer-7.isp.example", ttl=120)
    result = verify.check_address(fake, "192.0.2.7")
    assert result.result == CheckResult.PASS and result.name_verdict == NameVerdict.STATIC
    assert result.ptr_names == ["static-customer-7.isp.example."]
    assert result.reasons[0] == "forward-confirmed"
    queries = result.evidence()["queries"]
    assert [(q["query"], q["type"], q["rcode"]) for q in queries] == [
        ("7.2.0.192.in-addr.arpa.", "PTR", "NOERROR"),
        ("static-customer-7.isp.example.", "A", "NOERROR"),
    ]
    assert queries[0]["answers"][0] == {
        "name": "7.2.0.192.in-addr.arpa.",
        "type": "PTR",
        "ttl": 120,
        "value": "static-customer-7.isp.example.",
    }
    assert queries[0]["resolver"] == "fake" and queries[0]["at"] > 0
    assert result.min_ttl == 120


def test_missing_ptr_fails_and_keeps_the_negative_ttl():
    result = verify.check_address(FakeResolver(), "192.0.2.10")
    assert result.result == CheckResult.FAIL and result.headline == "no PTR record"
    assert "NXDOMAIN" in result.reasons[0]
    assert result.min_ttl == 60  # the SOA's negative TTL: never re-check sooner


def test_forward_mismatch_and_missing_forward_fail():
    fake = (
        FakeResolver()
        .ptr("198.51.100.20", "static-198-51-100-20.isp.example")
        .forward("static-198-51-100-20.isp.example", "198.51.100.99", ttl=30)
    )
    mismatch = verify.check_address(fake, "198.51.100.20")
    assert mismatch.result == CheckResult.FAIL and mismatch.headline == "PTR name resolves to other addresses"
    assert "resolves to 198.51.100.99, not 198.51.100.20" in mismatch.reasons[0] and mismatch.min_ttl == 30
    fake.ptr("198.51.100.21", "static-21.isp.example", ttl=500)
    nofwd = verify.check_address(fake, "198.51.100.21")
    assert nofwd.result == CheckResult.FAIL and nofwd.headline == "PTR name has no A record"


def test_dynamic_name_fails_even_when_forward_confirmed():
    fake = FakeResolver().host("192.0.2.8", "dyn-192-0-2-8.pool.isp.example")
    result = verify.check_address(fake, "192.0.2.8")
    assert result.result == CheckResult.FAIL and result.name_verdict == NameVerdict.DYNAMIC
    assert result.headline == "PTR name is dynamic"
    assert any("dyn" in reason for reason in result.reasons)


@pytest.mark.parametrize("kind", [ErrorKind.TIMEOUT, ErrorKind.SERVFAIL, ErrorKind.REFUSED, ErrorKind.LAME])
def test_errors_on_the_ptr_make_it_unverifiable(kind):
    fake = (
        FakeResolver().host("192.0.2.7", "static-7.isp.example").fail("7.2.0.192.in-addr.arpa", "PTR", kind)
    )
    result = verify.check_address(fake, "192.0.2.7")
    assert result.result == CheckResult.UNVERIFIABLE
    assert f": {kind}" in result.reasons[0] and "could not check" in result.reasons[0]


def test_forward_error_is_unverifiable_but_a_definite_failure_still_fails():
    fake = (
        FakeResolver()
        .host("192.0.2.7", "static-7.isp.example")
        .fail("static-7.isp.example", "A", ErrorKind.SERVFAIL)
    )
    assert verify.check_address(fake, "192.0.2.7").result == CheckResult.UNVERIFIABLE
    fake.host("192.0.2.8", "dyn-192-0-2-8.pool.isp.example").fail(
        "dyn-192-0-2-8.pool.isp.example", "A", ErrorKind.TIMEOUT
    )
    assert verify.check_address(fake, "192.0.2.8").result == CheckResult.FAIL  # dynamic whatever the A says


def test_rfc2317_cname_is_followed_with_a_second_query():
    fake = FakeResolver()
    fake.static.follow_cnames = False  # like a parent server that only holds the CNAME
    fake.static.add("7.2.0.192.in-addr.arpa", "CNAME", "7.0-25.2.0.192.in-addr.arpa")
    fake.static.add("7.0-25.2.0.192.in-addr.arpa", "PTR", "mail.isp.example")
    fake.forward("mail.isp.example", "192.0.2.7")
    result = verify.check_address(fake, "192.0.2.7")
    assert result.result == CheckResult.PASS, result.reasons
    assert "classless delegation via CNAME 7.0-25.2.0.192.in-addr.arpa." in result.reasons[0]
    assert ("7.0-25.2.0.192.in-addr.arpa.", "PTR") in fake.log


def test_several_ptr_records_must_all_pass():
    fake = FakeResolver().ptr("192.0.2.9", "mail.example.test", "static-9.isp.example")
    fake.forward("mail.example.test", "192.0.2.9").forward("static-9.isp.example", "192.0.2.9")
    assert verify.check_address(fake, "192.0.2.9").result == CheckResult.PASS
    fake.ptr("192.0.2.9", "mail.example.test", "dyn-192-0-2-9.pool.isp.example")
    fake.forward("dyn-192-0-2-9.pool.isp.example", "192.0.2.9")
    assert verify.check_address(fake, "192.0.2.9").result == CheckResult.FAIL


def test_ipv6_address_uses_aaaa():
    fake = FakeResolver().host("2001:db8::25", "mail6.example.test")
    result = verify.check_address(fake, "2001:db8::25")
    assert result.result == CheckResult.PASS
    assert fake.log[-1] == ("mail6.example.test.", "AAAA")
    assert fake.log[0][0].endswith(".8.b.d.0.1.0.0.2.ip6.arpa.")


# --- ranges ----------------------------------------------------------------------------------------


def test_range_summary_groups_failures_into_ranges_and_reports_progress():
    fake = FakeResolver()
    for i in range(0, 100):
        fake.host(f"203.0.113.{i}", f"static-{i}.isp.example")
    for i in range(100, 120):
        fake.host(f"203.0.113.{i}", f"dyn-203-0-113-{i}.pool.isp.example")
    fake.fail("static-50.isp.example", "A", ErrorKind.TIMEOUT)
    seen = []
    summary = verify.verify_network(fake, "203.0.113.0/24", seen.append, chunk_size=64)
    assert (summary.checked, summary.passed, summary.failed, summary.unverifiable) == (256, 99, 156, 1)
    assert summary.result == CheckResult.FAIL
    data = summary.as_dict()
    groups = {g["reason"]: g["ranges"] for g in data["failing"]}
    assert groups == {
        "no PTR record": ["203.0.113.120-203.0.113.255"],
        "PTR name is dynamic": ["203.0.113.100-203.0.113.119"],
    }
    assert data["unverifiable_groups"][0]["ranges"] == ["203.0.113.50"]
    assert data["passing"] == ["203.0.113.0-203.0.113.49", "203.0.113.51-203.0.113.99"]
    assert [p.done for p in seen] == [64, 128, 192, 256] and seen[-1].total == 256
    rows = summary.failing_rows()
    assert {"address": "203.0.113.50", "reason": "could not check: forward look-up failed"} in rows


def test_ipv6_prefix_checks_named_addresses_or_a_stable_sample():
    fake = FakeResolver().host("2001:db8:1::25", "mail6.example.test")
    named = verify.verify_network(
        fake, "2001:db8:1::/48", sample_v6=8, named_addresses=[ip("2001:db8:1::25"), ip("192.0.2.1")]
    )
    assert named.sampled and named.checked == 1 and named.result == CheckResult.PASS
    assert "not enumerated" in named.note and "1 address(es) the requester named" in named.note
    sample = verify.verify_network(fake, "2001:db8:1::/48", sample_v6=8)
    assert sample.checked == 8 and "sample of 8 (4 first addresses, 4 pseudo-random" in sample.note
    assert [r.address for r in sample.results][:4] == [f"2001:db8:1::{i}" for i in range(1, 5)]
    again = verify.verify_network(fake, "2001:db8:1::/48", sample_v6=8)
    assert [r.address for r in again.results] == [r.address for r in sample.results]  # the same sample
    assert verify.verify_network(fake, "::/120", sample_v6=4).results[0].address == "::1"  # stays IPv6


def test_duration_and_schedule(settings):
    assert verify.parse_duration("15m") == timedelta(minutes=15)
    assert verify.parse_duration("1d") == timedelta(days=1)
    assert verify.next_check_delay(settings, 1, None) == timedelta(minutes=15)
    assert verify.next_check_delay(settings, 1, 7200) == timedelta(hours=2)  # never sooner than the TTL
    assert verify.next_check_delay(settings, 18, None) == timedelta(days=1)
    assert verify.next_check_delay(settings, 19, None) is None


def test_plan_chunks_cover_the_network():
    chunks = verify.plan_chunks("198.51.100.0/24", 64)
    assert chunks == ["198.51.100.0/26", "198.51.100.64/26", "198.51.100.128/26", "198.51.100.192/26"]
    assert verify.plan_chunks("2001:db8::/48", 64) == ["2001:db8::/48"]
    assert verify.plan_chunks("192.0.2.0/28", 64) == ["192.0.2.0/28"]


# --- storage and the case ----------------------------------------------------------------------------


def test_verify_target_stores_run_checks_and_schedules_recheck(session, settings):
    case = new_case(session, "192.0.2.0/30")
    target = case.targets[0]
    fake = FakeResolver().host("192.0.2.1", "static-1.isp.example").host("192.0.2.2", "mail.isp.example")
    now = utcnow()
    run = verify.verify_target(
        session, target, fake, "manual", "analyst@example.test", settings=settings, now=now
    )
    assert run.status == RunStatus.DONE and run.result == CheckResult.FAIL
    assert (run.total, run.done, run.passed, run.failed) == (4, 4, 2, 2)
    assert run.requested_by == "analyst@example.test" and run.min_ttl == 60
    checks = session.scalars(
        select(DnsCheck).where(DnsCheck.run_id == run.id).order_by(DnsCheck.address)
    ).all()
    assert [c.address for c in checks] == [
        "192.0.2.0",
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.3",
    ]  # small: all kept
    assert checks[0].result == CheckResult.FAIL and checks[0].evidence["queries"][0]["rcode"] == "NXDOMAIN"
    assert target.status == TargetStatus.FAIL and target.check_attempts == 1
    assert target.next_check_at == now + timedelta(minutes=15)
    assert target.summary["failing"] == [
        {"address": "192.0.2.0", "reason": "no PTR record"},
        {"address": "192.0.2.3", "reason": "no PTR record"},
    ]
    assert case.verification_result == CheckResult.FAIL


def test_big_ranges_keep_only_failing_rows(session, settings):
    case = new_case(session, "198.51.100.0/23")
    fake = FakeResolver()
    for i in range(512):
        if i != 300:
            fake.host(f"198.51.{100 + i // 256}.{i % 256}", f"static-{i}.isp.example")
    run = verify.verify_target(session, case.targets[0], fake, settings=settings)
    checks = session.scalars(select(DnsCheck).where(DnsCheck.run_id == run.id)).all()
    assert [c.address for c in checks] == ["198.51.101.44"]
    assert run.summary["passing"] == ["198.51.100.0-198.51.101.43", "198.51.101.45-198.51.101.255"]
    assert run.summary["passing_example"]["result"] == "pass"


def test_settle_case_ready_when_everything_passes(session, settings):
    case = new_case(session, "192.0.2.7/32")
    cases.transition(session, case, CaseStatus.VERIFYING)
    verify.verify_target(
        session, case.targets[0], FakeResolver().host("192.0.2.7", "static-7.isp.example"), settings=settings
    )
    assert verify.settle_case(session, case, settings, delist=None) == "ready"
    assert case.status == CaseStatus.READY_FOR_DECISION and case.verification_result == CheckResult.PASS
    verify.verify_target(session, case.targets[0], FakeResolver(), settings=settings)  # the PTR went away
    assert verify.settle_case(session, case, settings, delist=None) == "verifying"
    assert case.status == CaseStatus.VERIFYING and case.verification_result == CheckResult.FAIL


def test_settle_case_auto_delists_only_with_policy_and_authority(session, settings):
    calls = []

    def fake_delist(session, case, targets, **kw):
        calls.append((case.reference, [t.network for t in targets], kw["actor"]))

    fake = FakeResolver().host("192.0.2.7", "static-7.isp.example")
    settings.auto_delist = True
    pending = new_case(session, "192.0.2.7/32")
    verify.verify_target(session, pending.targets[0], fake, settings=settings)
    assert verify.settle_case(session, pending, settings, delist=fake_delist) == "ready" and not calls
    proven = new_case(session, "192.0.2.7/32", authority=CheckResult.PASS)
    verify.verify_target(session, proven.targets[0], fake, settings=settings)
    assert verify.settle_case(session, proven, settings, delist=fake_delist) == "delisted"
    assert calls == [(proven.reference, ["192.0.2.7/32"], "system")]
    flagged = new_case(session, "192.0.2.7/32", authority=CheckResult.PASS)
    flagged.flags = {"authority_flags": ["lookalike sender domain"]}
    verify.verify_target(session, flagged.targets[0], fake, settings=settings)
    assert verify.settle_case(session, flagged, settings, delist=fake_delist) == "ready"
    assert len(calls) == 1  # a flagged sender is never delisted automatically


def test_schedule_exhaustion_asks_the_requester_with_the_failing_addresses(session, settings):
    settings.reverify_schedule = ["15m"]
    case = new_case(session, "192.0.2.8/31")
    cases.transition(session, case, CaseStatus.VERIFYING)
    fake = FakeResolver().host("192.0.2.8", "dyn-192-0-2-8.pool.isp.example")
    target = case.targets[0]
    verify.verify_target(session, target, fake, settings=settings)
    assert verify.settle_case(session, case, settings) == "verifying" and target.next_check_at is not None
    verify.verify_target(session, target, fake, "reverify", settings=settings)
    assert target.next_check_at is None and target.check_attempts == 2
    assert verify.settle_case(session, case, settings) == "still_failing"
    assert case.status == CaseStatus.AWAITING_REQUESTER
    reply = session.scalars(select(OutboxMessage).where(OutboxMessage.case_id == case.id)).one()
    body = reply.raw.decode()
    assert "192.0.2.8" in body and "PTR name is dynamic" in body
    assert "192.0.2.9" in body and "no PTR record" in body
    actions = session.scalars(select(AuditEvent.action).where(AuditEvent.case_id == case.id)).all()
    assert "verify.still_failing" in actions and "reply.queued" in actions
    assert verify.settle_case(session, case, settings) == "unchanged"  # no second reply


def test_reverify_due_claims_rechecks_and_moves_the_case(factory, settings):
    fake = FakeResolver().ptr("203.0.113.5", "static-5.isp.example")  # forward missing at first
    with unit_of_work(factory) as session:
        case = new_case(session, "203.0.113.5/32")
        target_id, case_id = case.targets[0].id, case.id
    first = verify.job_verify_target(settings, factory, target_id, resolver=fake, delist=None)
    with unit_of_work(factory) as session:
        target = session.get_one(CaseTarget, target_id)
        assert target.status == TargetStatus.FAIL and target.claimed_by is None
        assert session.get_one(Case, case_id).status == CaseStatus.VERIFYING
        due_at = target.next_check_at
    assert verify.job_reverify_due(settings, factory, now=due_at - timedelta(seconds=1), resolver=fake) == 0
    fake.forward("static-5.isp.example", "203.0.113.5")
    assert verify.job_reverify_due(settings, factory, now=due_at, resolver=fake, delist=None) == 1
    with unit_of_work(factory) as session:
        target = session.get_one(CaseTarget, target_id)
        assert (
            target.status == TargetStatus.PASS and target.next_check_at is None and target.claimed_by is None
        )
        assert session.get_one(Case, case_id).status == CaseStatus.READY_FOR_DECISION
        runs = session.scalars(
            select(VerificationRun).where(VerificationRun.target_id == target_id).order_by(VerificationRun.id)
        ).all()
        assert runs[0].id == first and [r.trigger for r in runs] == ["manual", "reverify"]
        assert [r.result for r in runs] == [CheckResult.FAIL, CheckResult.PASS]
    assert verify.job_reverify_due(settings, factory, now=due_at + timedelta(days=1), resolver=fake) == 0


def test_claims_are_exclusive(factory, settings):
    with unit_of_work(factory) as session:
        case = new_case(session, "192.0.2.0/31")
        target_id = case.targets[0].id
    now = utcnow() + timedelta(seconds=1)
    assert verify.claim_due(factory, now, 10, "worker-a") == [target_id]
    assert verify.claim_due(factory, now, 10, "worker-b") == []
    assert verify.claim_due(factory, now + verify.CLAIM_LEASE + timedelta(seconds=1), 10, "worker-b") == [
        target_id
    ]


def test_chunked_run_merges_into_one_result(factory, settings):
    fake = FakeResolver()
    for i in range(256):
        if i % 100:
            fake.host(f"198.51.100.{i}", f"static-{i}.isp.example")
    with unit_of_work(factory) as session:
        case = new_case(session, "198.51.100.0/24")
        target_id = case.targets[0].id
    items = verify.job_plan_chunks(settings, factory, target_id, size=64)
    assert len(items) == 4
    finished = [
        verify.job_verify_chunk(settings, factory, run_id, chunk, resolver=fake, delist=None)
        for run_id, chunk in reversed(items)
    ]
    assert finished == [False, False, False, True]
    assert (
        verify.job_verify_chunk(settings, factory, *items[0], resolver=fake) is False
    )  # retried task: no-op
    with unit_of_work(factory) as session:
        run = session.get_one(VerificationRun, items[0][0])
        assert (run.status, run.done, run.passed, run.failed) == (RunStatus.DONE, 256, 253, 3)
        assert run.summary["failing"] == [
            {
                "reason": "no PTR record",
                "count": 3,
                "ranges": ["198.51.100.0", "198.51.100.100", "198.51.100.200"],
            }
        ]
        assert run.summary["passing"][0] == "198.51.100.1-198.51.100.99"
        checks = session.scalars(select(DnsCheck).where(DnsCheck.run_id == run.id)).all()
        assert len(checks) == 256  # a /24 is small enough to keep every address's evidence
        assert sorted(c.address for c in checks if c.result == CheckResult.FAIL) == [
            "198.51.100.0",
            "198.51.100.100",
            "198.51.100.200",
        ]
        assert session.get_one(CaseTarget, target_id).status == TargetStatus.FAIL


def test_parallel_workers_give_the_same_summary():
    fake = FakeResolver()
    for i in range(0, 8192, 3):
        fake.host(f"198.51.{96 + i // 256}.{i % 256}", f"static-{i}.isp.example")
    single = verify.verify_network(fake, "198.51.96.0/19", keep_passing=False, workers=1, chunk_size=1024)
    double = verify.verify_network(fake, "198.51.96.0/19", keep_passing=False, workers=2, chunk_size=1024)
    assert (double.passed, double.failed) == (single.passed, single.failed) == (2731, 5461)
    assert double.as_dict()["failing"] == single.as_dict()["failing"]
    assert [r.address for r in double.results if not r.passes] == [
        r.address for r in single.results if not r.passes
    ]
    assert sum(r.passes for r in double.results) >= 1  # the passing example(s)


def test_job_progress_is_visible_to_other_sessions_while_it_runs(factory, settings):
    settings.dns_workers = 1
    seen: list[tuple[RunStatus, int, int]] = []

    class Watching(FakeResolver):
        def resolve_many(self, queries):
            with factory() as other:
                run = other.scalars(select(VerificationRun)).one()
                seen.append((run.status, run.done, run.total))
            return super().resolve_many(queries)

    with unit_of_work(factory) as session:
        target_id = new_case(session, "198.51.96.0/19").targets[0].id
    verify.job_verify_target(settings, factory, target_id, resolver=Watching(), delist=None)
    assert seen[0] == (RunStatus.RUNNING, 0, 8192)
    assert (RunStatus.RUNNING, 4096, 8192) in seen  # the first chunk's counters, committed mid-run
    with unit_of_work(factory) as session:
        run = session.scalars(select(VerificationRun)).one()
        assert (run.status, run.done, run.failed) == (RunStatus.DONE, 8192, 8192)
        assert run.summary["failing"][0]["ranges"] == ["198.51.96.0-198.51.127.255"]
        status = verify.run_status(run)
        assert status["percent"] == 100.0 and status["summary"]["result"] == "fail"


def test_concurrent_workers_claim_disjoint_targets(factory, settings):
    import threading

    with unit_of_work(factory) as session:
        case = new_case(session, *[f"192.0.2.{i}/32" for i in range(20)])
        ids = {t.id for t in case.targets}
    now = utcnow() + timedelta(seconds=1)
    claims: dict[str, list[int]] = {}
    barrier = threading.Barrier(3)

    def worker(name: str) -> None:
        barrier.wait()
        claims[name] = verify.claim_due(factory, now, 8, name)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = [t for got in claims.values() for t in got]
    assert len(claimed) == len(set(claimed)) == 20 and set(claimed) == ids
    with unit_of_work(factory) as session:
        holders = {t.id: t.claimed_by for t in session.scalars(select(CaseTarget))}
    assert all(holders[t] == name for name, got in claims.items() for t in got)


def test_parallel_workers_from_a_threaded_process_use_forkserver(monkeypatch):
    import multiprocessing
    import threading

    contexts: list[str] = []
    real = multiprocessing.get_context

    def recording(method=None):
        contexts.append(method)
        return real(method)

    monkeypatch.setattr(verify.multiprocessing, "get_context", recording)
    fake = FakeResolver()
    for i in range(0, 8192, 2):
        fake.host(f"198.51.{96 + i // 256}.{i % 256}", f"static-{i}.isp.example")
    out: dict[str, verify.RangeSummary] = {}

    def run() -> None:  # a job worker's thread: fork is unsafe here, forkserver is used
        assert threading.active_count() > 1
        out["summary"] = verify.verify_network(fake, "198.51.96.0/19", keep_passing=False, workers=2)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(120)
    summary = out["summary"]
    assert (summary.passed, summary.failed) == (4096, 4096)
    assert summary.as_dict()["failing"][0]["count"] == 4096
    assert contexts == ["forkserver"]


def test_the_leads_policy_can_turn_automatic_delisting_on(session, settings):
    from tmsi.services import policy

    calls = []
    fake = FakeResolver().host("192.0.2.7", "static-7.isp.example")
    settings.auto_delist = False
    proven = new_case(session, "192.0.2.7/32", authority=CheckResult.PASS)
    verify.verify_target(session, proven.targets[0], fake, settings=settings)
    policy.set_value(session, "auto_delist", "yes", actor="lead@example.test")
    result = verify.settle_case(
        session, proven, settings, delist=lambda *a, **k: calls.append(a[1].reference)
    )
    assert result == "delisted" and calls == [proven.reference]
