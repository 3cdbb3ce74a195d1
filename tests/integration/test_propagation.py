"""The closed loop on real services: delist → held closing reply → export → rbldnsd answers NXDOMAIN →
reply released → SMTP sink receives it. Plus deadline failures and the regression watch."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import select

from tmsi.db import unit_of_work, utcnow
from tmsi.domain.listfile import Entry
from tmsi.models import AuditEvent, Case, CheckResult, Delisting, OutboxMessage, OutboxStatus
from tmsi.services import cases, decide, export, ingest, propagation
from tmsi.services.listings import import_entries
from tmsi.services.outbox import job_send_outbox
from tmsi.services.users import Actor

pytestmark = pytest.mark.integration
ZONE = "dul.example.test"
ANALYST = Actor(id=None, email="ana@example.test")


def _open_case(factory, listing: str, target: str, requester: str = "noc@isp.example") -> int:
    with unit_of_work(factory) as session:
        import_entries(session, [Entry(1, ipaddress.ip_network(listing), "generic rDNS", None)])
        case = cases.open_case(session, subject="Please delist", requester_email=requester)
        ingest.add_targets(session, case, [ipaddress.ip_network(target)])
        return case.id


def _delist_and_queue_reply(factory, settings, case_id: int, network: str) -> int:
    with unit_of_work(factory) as session:
        case = session.get(Case, case_id)
        (target,) = case.targets
        decide.delist(session, case, ANALYST, [(target, ipaddress.ip_network(network))], reason="static now")
        row = propagation.queue_closing_reply(session, case, settings, actor=ANALYST.email)
        assert row is not None
        return row.id


def _outbox(factory, row_id: int) -> OutboxMessage:
    with unit_of_work(factory) as session:
        row = session.get(OutboxMessage, row_id)
        session.expunge(row)
        return row


@pytest.fixture
def loop_settings(settings, smtp_sink):
    settings.smtp_host, settings.smtp_port, settings.smtp_tls = smtp_sink.host, smtp_sink.port, "none"
    settings.export_debounce_seconds = 0
    settings.dns_timeout = 0.5
    return settings


def test_closing_reply_is_sent_only_after_rbldnsd_stops_listing(factory, loop_settings, rbldnsd, smtp_sink):
    settings = loop_settings
    smtp_sink.clear()
    case_id = _open_case(factory, "198.51.100.0/24", "198.51.100.77")
    with unit_of_work(factory) as session:
        export.export_zone(session, settings)
    server = rbldnsd(ZONE, settings.zone_dir)
    assert server.query("198.51.100.77") == ["127.0.0.2"]
    settings.dnsbl_nameservers = [server.nameserver]
    settings.export_hook = f"kill -HUP {server.pid}"

    row_id = _delist_and_queue_reply(factory, settings, case_id, "198.51.100.77")
    held = _outbox(factory, row_id)
    assert held.status == OutboxStatus.HELD and held.hold_reason == "propagation"

    # Before the export the reply stays in the outbox: nothing reaches the SMTP server.
    job_send_outbox(settings, factory)
    assert smtp_sink.messages == []
    with unit_of_work(factory) as session:
        assert propagation.check_propagation(session, settings).as_dict()["confirmed"] == []

    done = export.run_pending_export(settings, factory)
    assert done["exported"] and done["delistings"] == 1
    assert done["propagation"]["confirmed"] and done["propagation"]["released"] == [row_id]
    assert server.query("198.51.100.77") is None
    assert server.query("198.51.100.76") == ["127.0.0.2"] and server.query("198.51.100.78") == ["127.0.0.2"]

    with unit_of_work(factory) as session:
        delisting = session.scalars(select(Delisting).where(Delisting.case_id == case_id)).one()
        assert delisting.propagation_status == "confirmed" and delisting.propagated_at is not None
        answers = delisting.propagation_detail["answers"][server.nameserver]
        assert answers == {"198.51.100.77": "not_listed: NXDOMAIN"}
        assert delisting.next_regression_check_at > utcnow() + timedelta(days=29)
        actions = [e.action for e in session.scalars(select(AuditEvent).where(AuditEvent.case_id == case_id))]
        assert actions.index("delisting.propagated") < actions.index("reply.released")

    assert job_send_outbox(settings, factory)["sent"] == 1
    (envelope,) = smtp_sink.wait_for(1, timeout=10)
    assert envelope.rcpt_tos == ["noc@isp.example"]
    body = smtp_sink.parsed(0).get_content()
    assert "198.51.100.77" in body and "effective now" in body
    assert _outbox(factory, row_id).status == OutboxStatus.SENT


def test_unreachable_dnsbl_server_fails_the_delisting_after_the_deadline(factory, loop_settings, dead_dns):
    settings = loop_settings
    settings.dnsbl_nameservers = [dead_dns.nameserver]
    settings.dns_timeout = 0.2
    case_id = _open_case(factory, "203.0.113.0/24", "203.0.113.0/24")
    row_id = _delist_and_queue_reply(factory, settings, case_id, "203.0.113.0/24")
    done = export.run_pending_export(settings, factory, force=True, confirm_wait=0.5)
    assert done["propagation"]["pending"], done
    assert _outbox(factory, row_id).status == OutboxStatus.HELD

    later = utcnow() + timedelta(seconds=settings.propagation_deadline_seconds + 1)
    with unit_of_work(factory) as session:
        report = propagation.check_propagation(session, settings, now=later)
        assert len(report.failed) == 1 and report.released == []
    with unit_of_work(factory) as session:
        delisting = session.scalars(select(Delisting).where(Delisting.case_id == case_id)).one()
        assert delisting.propagation_status == "failed"
        assert "Timeout" in str(delisting.propagation_detail["answers"])
        case = session.get(Case, case_id)
        assert case.flags["propagation_failed"] == ["203.0.113.0/24"]
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "delisting.propagation_failed")
        ).one()
        assert event.case_id == case_id and event.detail["network"] == "203.0.113.0/24"
    assert _outbox(factory, row_id).status == OutboxStatus.HELD


def test_a_server_that_still_lists_keeps_the_reply_held(factory, loop_settings):
    settings = loop_settings
    settings.dnsbl_nameservers = ["127.0.0.1:5399"]
    case_id = _open_case(factory, "192.0.2.0/24", "192.0.2.77")
    row_id = _delist_and_queue_reply(factory, settings, case_id, "192.0.2.77")
    calls: list[str] = []

    def still_listed(nameserver, address, zone, timeout):
        calls.append(f"{nameserver} {address} {zone}")
        return "listed", "127.0.0.2"

    export.run_pending_export(
        settings, factory, force=True, confirm_wait=0
    )  # no real server: the probe below decides
    with unit_of_work(factory) as session:
        report = propagation.check_propagation(session, settings, probe=still_listed)
    assert report.pending and not report.released
    assert calls[-1] == "127.0.0.1:5399 192.0.2.77 dul.example.test"
    assert _outbox(factory, row_id).status == OutboxStatus.HELD

    def gone(nameserver, address, zone, timeout):
        return "not_listed", "NXDOMAIN"

    with unit_of_work(factory) as session:
        report = propagation.check_propagation(session, settings, probe=gone)
    assert report.released == [row_id]
    assert _outbox(factory, row_id).status == OutboxStatus.PENDING


def test_automatic_delisting_queues_its_closing_reply_after_propagation(factory, loop_settings):
    from tmsi.services.delist import delist_targets

    settings = loop_settings
    case_id = _open_case(factory, "192.0.2.0/24", "192.0.2.64/26")
    with unit_of_work(factory) as session:
        case = session.get(Case, case_id)
        delist_targets(session, case, list(case.targets), reason="automatic")
        assert case.flags["closing_reply"] == "after_propagation"
    done = export.run_pending_export(settings, factory, force=True)
    assert done["propagation"]["unchecked"]  # no DNSBL servers configured: nothing to wait for
    with unit_of_work(factory) as session:
        rows = session.scalars(select(OutboxMessage).where(OutboxMessage.case_id == case_id)).all()
        assert [(r.template_key, r.status) for r in rows] == [("delisted", OutboxStatus.PENDING)]
        assert "closing_reply" not in session.get(Case, case_id).flags


@dataclass
class FakeResult:
    address: str
    result: CheckResult

    def as_dict(self):
        return {"ip": self.address, "result": self.result.value, "ptr": ["dyn-1.pool.isp.example."]}


def test_regression_watch_flags_a_regressed_address_with_evidence_and_never_relists(factory, loop_settings):
    settings = loop_settings
    case_id = _open_case(factory, "203.0.113.0/24", "203.0.113.9")
    _delist_and_queue_reply(factory, settings, case_id, "203.0.113.9")
    export.run_pending_export(settings, factory, force=True)
    checked: list[list[str]] = []
    verdict = {"value": CheckResult.PASS}

    def check(_settings, addresses):
        checked.append([str(a) for a in addresses])
        return [FakeResult(str(a), verdict["value"]) for a in addresses]

    def watch(days: int) -> dict:
        with unit_of_work(factory) as session:
            return propagation.regression_watch(
                session, settings, check=check, now=utcnow() + timedelta(days=days)
            )

    assert watch(1) == {"ok": [], "regressed": [], "unverifiable": []}  # not due yet
    first = watch(31)
    assert len(first["ok"]) == 1 and checked == [["203.0.113.9"]]

    verdict["value"] = CheckResult.FAIL
    second = watch(62)
    assert len(second["regressed"]) == 1
    with unit_of_work(factory) as session:
        delisting = session.scalars(select(Delisting).where(Delisting.case_id == case_id)).one()
        assert delisting.regression_status == "regressed"
        assert delisting.regression_evidence["failing"][0]["ptr"] == ["dyn-1.pool.isp.example."]
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "delisting.regressed")).one()
        assert event.case_id == case_id and event.detail["relisted"] is False
        assert session.get(Case, case_id).flags["regressed"] == ["203.0.113.9/32"]
        from tmsi.services.listings import lookup

        assert lookup(session, ipaddress.ip_network("203.0.113.9"))["listed"] is False

    verdict["value"] = CheckResult.UNVERIFIABLE
    third = watch(93)
    assert len(third["unverifiable"]) == 1
    with unit_of_work(factory) as session:
        delisting = session.scalars(select(Delisting).where(Delisting.case_id == case_id)).one()
        assert delisting.regression_status == "regressed"  # "could not check" changes nothing


def test_regression_watch_with_the_real_verification_against_knot(factory, loop_settings, knot):
    """The default check is the verification service: a delisted address whose PTR went back to a
    generic dynamic name (192.0.2.8 in the standard test zones) is flagged; a static one is not."""
    settings = loop_settings
    settings.resolvers = [knot.nameserver]
    settings.regression_interval_days = 1
    dynamic_case = _open_case(factory, "192.0.2.0/28", "192.0.2.8")
    _delist_and_queue_reply(factory, settings, dynamic_case, "192.0.2.8")
    static_case = _open_case(factory, "192.0.2.0/28", "192.0.2.7")
    _delist_and_queue_reply(factory, settings, static_case, "192.0.2.7")
    export.run_pending_export(settings, factory, force=True)
    with unit_of_work(factory) as session:
        summary = propagation.regression_watch(session, settings, now=utcnow() + timedelta(days=2))
    assert len(summary["regressed"]) == 1 and len(summary["ok"]) == 1
    with unit_of_work(factory) as session:
        rows = {d.case_id: d for d in session.scalars(select(Delisting))}
        assert rows[dynamic_case].regression_status == "regressed"
        (failing,) = rows[dynamic_case].regression_evidence["failing"]
        assert failing["ip"] == "192.0.2.8" and failing["ptr"] == ["dyn-192-0-2-8.pool.isp.example."]
        assert rows[static_case].regression_status == "ok"


def test_a_dead_server_costs_one_timeout_per_pass_not_one_per_question(factory, loop_settings, dead_dns):
    import time

    settings = loop_settings
    settings.dnsbl_nameservers = [dead_dns.nameserver]
    settings.dns_timeout = 0.5
    case_id = _open_case(factory, "198.51.100.0/24", "198.51.100.0/24")
    with unit_of_work(factory) as session:
        case = session.get(Case, case_id)
        (target,) = case.targets
        for last in range(0, 40, 4):  # ten delistings, three probes each
            decide.delist(session, case, ANALYST, [(target, ipaddress.ip_network(f"198.51.100.{last}/30"))])
    export.run_pending_export(settings, factory, force=True, confirm_wait=0)
    started = time.monotonic()
    with unit_of_work(factory) as session:
        report = propagation.check_propagation(session, settings)
    elapsed = time.monotonic() - started
    assert len(report.pending) == 10
    assert elapsed < 3 * settings.dns_timeout, elapsed  # 30 questions answered by timeouts in parallel


def test_the_analysts_closing_reply_waits_for_propagation_too(factory, loop_settings, rbldnsd, smtp_sink):
    """decide.send_reply (the reply form) knows nothing of propagation; the reply is held all the same,
    released once rbldnsd answers NXDOMAIN, and only then reaches the SMTP server."""
    settings = loop_settings
    smtp_sink.clear()
    case_id = _open_case(factory, "203.0.113.0/24", "203.0.113.50")
    with unit_of_work(factory) as session:
        export.export_zone(session, settings)
    server = rbldnsd(ZONE, settings.zone_dir)
    settings.dnsbl_nameservers = [server.nameserver]
    settings.export_hook = f"kill -HUP {server.pid}"
    with unit_of_work(factory) as session:
        case = session.get(Case, case_id)
        (target,) = case.targets
        decide.delist(session, case, ANALYST, [(target, ipaddress.ip_network("203.0.113.50"))])
    with unit_of_work(factory) as session:
        case = session.get(Case, case_id)
        row = decide.send_reply(session, settings, case, ANALYST, template="delisted")
        row_id = row.id
    held = _outbox(factory, row_id)
    assert (held.status, held.hold_reason) == (OutboxStatus.HELD, "propagation")
    job_send_outbox(settings, factory)
    assert smtp_sink.messages == []

    done = export.run_pending_export(settings, factory, force=True)
    assert done["propagation"]["released"] == [row_id]
    assert server.query("203.0.113.50") is None and server.query("203.0.113.51") == ["127.0.0.2"]
    assert job_send_outbox(settings, factory)["sent"] == 1
    smtp_sink.wait_for(1)
    assert "203.0.113.50" in smtp_sink.parsed(0).get_content()
    with unit_of_work(factory) as session:
        actions = [e.action for e in session.scalars(select(AuditEvent).where(AuditEvent.case_id == case_id))]
        assert (
            actions.index("reply.held")
            < actions.index("delisting.propagated")
            < actions.index("reply.released")
        )


def test_other_replies_are_not_held(factory, loop_settings):
    settings = loop_settings
    case_id = _open_case(factory, "192.0.2.0/24", "192.0.2.99")
    with unit_of_work(factory) as session:
        case = session.get(Case, case_id)
        (target,) = case.targets
        decide.delist(session, case, ANALYST, [(target, ipaddress.ip_network("192.0.2.99"))])
        row = decide.send_reply(session, settings, case, ANALYST, template="ask_information")
        row_id = row.id
    assert _outbox(factory, row_id).status == OutboxStatus.PENDING


def test_in_an_app_without_dnsbl_servers_the_reply_is_not_held(app, factory, settings):
    settings.dnsbl_nameservers = []
    case_id = _open_case(factory, "192.0.2.0/24", "192.0.2.98")
    with app.app_context(), unit_of_work(factory) as session:
        case = session.get(Case, case_id)
        (target,) = case.targets
        decide.delist(session, case, ANALYST, [(target, ipaddress.ip_network("192.0.2.98"))])
        row_id = decide.send_reply(session, settings, case, ANALYST, template="delisted").id
    assert _outbox(factory, row_id).status == OutboxStatus.PENDING
    settings.dnsbl_nameservers = ["127.0.0.1:5399"]
    with app.app_context(), unit_of_work(factory) as session:
        case = session.get(Case, case_id)
        row_id = decide.send_reply(session, settings, case, ANALYST, template="delisted").id
    assert _outbox(factory, row_id).status == OutboxStatus.HELD


def test_a_delisting_no_export_ever_carries_fails_visibly(factory, loop_settings):
    settings = loop_settings
    settings.dnsbl_nameservers = ["127.0.0.1:5399"]
    case_id = _open_case(factory, "192.0.2.0/24", "192.0.2.97")
    row_id = _delist_and_queue_reply(factory, settings, case_id, "192.0.2.97")
    with unit_of_work(factory) as session:
        assert propagation.check_propagation(session, settings).failed == []  # within the deadline
    later = utcnow() + timedelta(seconds=settings.propagation_deadline_seconds + 5)
    with unit_of_work(factory) as session:
        report = propagation.check_propagation(session, settings, now=later)
        assert len(report.failed) == 1
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "delisting.propagation_failed")
        ).one()
        assert "no zone export" in event.detail["why"]
        assert session.get(Case, case_id).flags["propagation_failed"] == ["192.0.2.97/32"]
    assert _outbox(factory, row_id).status == OutboxStatus.HELD


def test_probe_accepts_a_named_server(rbldnsd, tmp_path):
    data = tmp_path / "zone"
    data.mkdir()
    (data / "dul.ip4set").write_text(":127.0.0.2:Dynamic IP $\n192.0.2.10\n")
    server = rbldnsd(ZONE, data)
    listed = propagation.probe_dnsbl(
        f"localhost:{server.port}", ipaddress.ip_address("192.0.2.10"), ZONE, 2.0
    )
    gone = propagation.probe_dnsbl(f"localhost:{server.port}", ipaddress.ip_address("192.0.2.11"), ZONE, 2.0)
    assert listed == ("listed", "127.0.0.2") and gone == ("not_listed", "NXDOMAIN")
