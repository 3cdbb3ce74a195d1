"""The ingest pipeline on the real test database with the in-memory mailbox and mailer: storing,
threading, linking, quarantine, exactly-once across crashes and UIDVALIDITY changes, and the outbox."""

from __future__ import annotations

import email
import ipaddress
from datetime import timedelta
from email import policy
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.integration import ingest_helpers as mails
from tmsi.adapters.mailbox import MemoryMailbox
from tmsi.adapters.mailer import MemoryMailer
from tmsi.db import unit_of_work, utcnow
from tmsi.domain.listfile import Entry
from tmsi.models import (
    AuditEvent,
    Case,
    CaseStatus,
    CaseTarget,
    CheckResult,
    Coverage,
    Message,
    MessageDelivery,
    MessageKind,
    MessageStatus,
    OutboxMessage,
    OutboxStatus,
    TargetListing,
)
from tmsi.services import cases, ingest, joblock, listings, outbox, poller

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mail"


def _count(factory, model, *where):
    with unit_of_work(factory) as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def _list(factory, net: str) -> None:
    with unit_of_work(factory) as s:
        listings.import_entries(
            s, [Entry(network=ipaddress.ip_network(net), reason="dynamic", line=1, listed_at=None)]
        )


def _poll(settings, factory, box):
    return poller.poll_once(settings, factory, box)


def test_batch_poll_creates_cases_links_listings_and_acknowledges_once(settings, factory):
    _list(factory, "203.0.113.0/24")
    box = MemoryMailbox()
    box.add("INBOX", mails.request("203.0.113.7", sender="noc@isp.example"))
    box.add("INBOX", mails.request("198.51.100.9", sender="abuse@other-isp.example"))
    box.add(
        "INBOX",
        mails.request(
            "198.51.100.0/22",
            sender="hostmaster@third.example",
            body="Please delist 198.51.100.0/22 and 203.0.113.128/25, both static now.",
        ),
    )
    box.add("INBOX", mails.auto_reply())
    box.add("INBOX", mails.mailing_list())
    box.add("INBOX", mails.ticket_ack())
    box.add("INBOX", mails.malformed())

    report = _poll(settings, factory, box)

    assert (report.seen, report.processed, report.quarantined, report.new_cases) == (7, 6, 1, 3)
    assert report.errors == [] and report.replies == 3
    assert box.folders["INBOX"].messages == {}
    assert len(box.folders["Processed"].messages) == 6 and len(box.folders["Quarantine"].messages) == 1
    with unit_of_work(factory) as s:
        all_cases = s.scalars(select(Case).order_by(Case.id)).all()
        assert [c.status for c in all_cases] == [CaseStatus.VERIFYING] * 3
        by_requester = {c.requester_email: c for c in all_cases}
        listed = by_requester["noc@isp.example"]
        (target,) = listed.targets
        assert target.network == "203.0.113.7/32" and target.coverage == Coverage.LISTED
        assert target.next_check_at is not None and target.version == 4
        links = s.scalars(select(TargetListing).where(TargetListing.target_id == target.id)).all()
        assert [link.relation for link in links] == ["covers"]
        assert "nothing_listed" not in listed.flags
        unlisted = by_requester["abuse@other-isp.example"]
        assert unlisted.flags.get("nothing_listed") is True
        assert unlisted.targets[0].coverage == Coverage.NOT_LISTED
        mixed = by_requester["hostmaster@third.example"]
        cov = {t.network: t.coverage for t in mixed.targets}
        assert cov == {"198.51.100.0/22": Coverage.NOT_LISTED, "203.0.113.128/25": Coverage.LISTED}
        # each new request case: exactly one automatic acknowledgement, threaded to the request
        rows = s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        assert [r.template_key for r in rows] == ["acknowledgement"] * 3
        assert sorted(r.recipient for r in rows) == sorted(by_requester)
        for row in rows:
            case = s.get(Case, row.case_id)
            ack = email.message_from_bytes(row.raw, policy=policy.default)
            request = s.scalar(
                select(Message).where(Message.case_id == case.id, Message.kind == MessageKind.REQUEST)
            )
            assert ack["In-Reply-To"] == request.message_id_header
            assert f"[{case.reference}]" in ack["Subject"] and ack["Auto-Submitted"] == "auto-replied"
        kinds = dict(s.execute(select(Message.kind, func.count()).group_by(Message.kind)).all())
        assert kinds[MessageKind.AUTO_REPLY] == 2 and kinds[MessageKind.LIST] == 1
        unassigned = s.scalars(
            select(Message).where(Message.case_id.is_(None), Message.kind.is_not(None))
        ).all()
        assert {m.kind for m in unassigned} == {MessageKind.AUTO_REPLY, MessageKind.LIST}
        bad = s.scalar(select(Message).where(Message.status == MessageStatus.QUARANTINED))
        assert bad.raw == mails.malformed() and bad.parse_error and "cannot parse" in bad.quarantine_reason
        assert s.scalar(select(func.count()).select_from(MessageDelivery)) == 7


def test_crash_between_commit_and_move_then_restart_moves_without_reprocessing(settings, factory):
    box = MemoryMailbox()
    for i in range(5):
        box.add("INBOX", mails.request(f"203.0.113.{10 + i}", sender=f"noc{i}@isp.example"))
    box.fail_moves = True
    first = _poll(settings, factory, box)
    assert first.processed == 5 and first.errors  # committed, then the "crash" before the move
    assert len(box.folders["INBOX"].messages) == 5
    box.fail_moves = False
    box.fetched.clear()
    second = _poll(settings, factory, box)
    assert (second.moved_only, second.seen, second.processed, second.duplicates) == (5, 0, 0, 0)
    assert box.fetched == []  # known UIDs are not even fetched again
    assert box.folders["INBOX"].messages == {} and len(box.folders["Processed"].messages) == 5
    assert _count(factory, Message, Message.direction == "in") == 5
    assert _count(factory, Case) == 5
    assert _count(factory, OutboxMessage) == 5


def test_uidvalidity_change_resets_the_cursor_without_losing_or_duplicating(settings, factory):
    box = MemoryMailbox()
    for i in range(3):
        box.add("INBOX", mails.request(f"198.51.100.{20 + i}", sender=f"ops{i}@isp.example"))
    box.fail_moves = True
    _poll(settings, factory, box)
    box.fail_moves = False
    box.renumber("INBOX")  # the server renumbered: old UIDs are void
    box.add("INBOX", mails.request("198.51.100.99", sender="new@isp.example"))
    report = _poll(settings, factory, box)
    assert report.uidvalidity_reset is True
    assert (report.seen, report.duplicates, report.processed) == (4, 3, 1)
    assert box.folders["INBOX"].messages == {}
    assert _count(factory, Message, Message.direction == "in") == 4
    assert _count(factory, Case) == 4
    with unit_of_work(factory) as s:
        # the same delivery seen under two UIDVALIDITYs is not a second delivery
        assert set(s.scalars(select(Message.delivery_count).where(Message.direction == "in"))) == {1}
        assert s.scalar(select(func.count()).select_from(MessageDelivery)) == 7


def test_duplicate_delivery_is_one_message_recorded_twice(settings, factory):
    raw = mails.request("203.0.113.50")
    # a second copy through another relay: one more Received header, same message
    again = (
        b"Received: from relay2.example.test by mx.example.test; Sun, 29 Nov 2026 10:00:05 +0000\r\n" + raw
    )
    box = MemoryMailbox()
    box.add("INBOX", raw)
    box.add("INBOX", again)
    report = _poll(settings, factory, box)
    assert (report.processed, report.duplicates, report.new_cases) == (1, 1, 1)
    with unit_of_work(factory) as s:
        (message,) = s.scalars(select(Message).where(Message.direction == "in")).all()
        assert message.delivery_count == 2 and len(message.deliveries) == 2
        assert s.scalar(select(func.count()).select_from(OutboxMessage)) == 1


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (mails.auto_reply, MessageKind.AUTO_REPLY),
        (mails.mailing_list, MessageKind.LIST),
        (mails.ticket_ack, MessageKind.AUTO_REPLY),
    ],
)
def test_automatic_mail_never_opens_a_case_or_gets_a_reply(settings, factory, make, kind):
    with unit_of_work(factory) as s:
        result = ingest.process_message(s, make(), settings, source="test")
    assert result.kind == kind.value and result.case_reference is None and result.replies == []
    assert _count(factory, Case) == 0 and _count(factory, OutboxMessage) == 0


def test_fixture_zoo_is_stored_and_classified(settings, factory):
    seen = {}
    for path in sorted(FIXTURES.glob("*.eml")):
        with unit_of_work(factory) as s:
            seen[path.name] = ingest.process_message(s, path.read_bytes(), settings, source=str(path))
    assert _count(factory, Message, Message.direction == "in") == len(seen)
    for name, result in seen.items():
        if name.startswith(
            ("auto_reply", "out_of_office", "null_sender", "ticket_ack", "mailing_list", "bounce")
        ):
            assert result.case_reference is None and not result.replies, name
    assert seen["garbage.eml"].quarantined
    assert seen["request_masked.eml"].replies == ["need_full_address"]
    with unit_of_work(factory) as s:
        masked = cases.get_by_reference(s, seen["request_masked.eml"].case_reference)
        assert masked.flags["masked"] is True and masked.status == CaseStatus.AWAITING_REQUESTER


def test_reply_to_our_ack_threads_into_the_case_and_reopens_it(settings, factory):
    with unit_of_work(factory) as s:
        first = ingest.process_message(s, mails.request("203.0.113.30"), settings, source="test")
    with unit_of_work(factory) as s:
        case = cases.get_by_reference(s, first.case_reference)
        ack_raw = s.scalar(select(OutboxMessage.raw).where(OutboxMessage.case_id == case.id))
        cases.transition(s, case, CaseStatus.CLOSED)
        case.authority_result = CheckResult.FAIL  # judged on the first message
    # no reference in the subject: threaded by In-Reply-To alone
    reply = mails.reply_to(ack_raw, subject="Re: Delisting request", body="We also fixed 203.0.113.31 now.")
    with unit_of_work(factory) as s:
        result = ingest.process_message(s, reply, settings, source="test")
    assert result.case_reference == first.case_reference and not result.new_case
    assert result.kind == "reply" and result.replies == [] and result.targets == ["203.0.113.31/32"]
    with unit_of_work(factory) as s:
        case = cases.get_by_reference(s, first.case_reference)
        assert case.status == CaseStatus.VERIFYING and case.closed_at is None
        assert case.authority_result == CheckResult.PENDING  # the new message is evaluated again
        assert len([m for m in case.messages if m.direction == "in"]) == 2
        assert {t.network for t in case.targets} == {"203.0.113.30/32", "203.0.113.31/32"}
    assert _count(factory, Case) == 1 and _count(factory, OutboxMessage) == 1


def test_reference_in_subject_threads(settings, factory):
    with unit_of_work(factory) as s:
        first = ingest.process_message(s, mails.request("198.51.100.40"), settings, source="test")
    raw = mails.request("198.51.100.41", subject=f"Re: [{first.case_reference}] one more address")
    with unit_of_work(factory) as s:
        second = ingest.process_message(s, raw, settings, source="test")
    assert second.case_reference == first.case_reference and not second.new_case and second.replies == []


def test_bounce_of_our_ack_flags_its_case_and_opens_nothing(settings, factory):
    with unit_of_work(factory) as s:
        first = ingest.process_message(s, mails.request("203.0.113.60"), settings, source="test")
        ack_raw = s.scalar(select(OutboxMessage.raw))
    with unit_of_work(factory) as s:
        result = ingest.process_message(s, mails.bounce_of(ack_raw), settings, source="test")
    assert result.kind == "bounce" and result.case_reference == first.case_reference and not result.new_case
    with unit_of_work(factory) as s:
        case = cases.get_by_reference(s, first.case_reference)
        assert case.flags["bounced"]["message_ids"] and case.flags["auto_generated"] is True
        assert case.flags["bounced"]["status"][0]["status"] == "5.1.1"
        assert (
            s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "mail.bounced"))
            == 1
        )
    assert _count(factory, Case) == 1 and _count(factory, OutboxMessage) == 1


def test_processing_failure_keeps_the_raw_message_and_reprocess_recovers(settings, factory, monkeypatch):
    raw = mails.request("203.0.113.70")

    def broken(*args, **kwargs):
        raise RuntimeError("classifier bug")

    monkeypatch.setattr(ingest, "classify_message", broken)
    with unit_of_work(factory) as s:
        result = ingest.process_message(s, raw, settings, source="test")
    assert result.quarantined and "classifier bug" in result.error
    assert _count(factory, Case) == 0
    monkeypatch.undo()
    with unit_of_work(factory) as s:
        message = s.get(Message, result.message_id)
        assert message.raw == raw and message.status == MessageStatus.QUARANTINED
        again = ingest.reprocess_message(s, result.message_id, settings, actor="analyst@example.test")
    assert again.status == "processed" and again.new_case and again.replies == ["acknowledgement"]
    with unit_of_work(factory) as s, pytest.raises(ValueError, match="not a quarantined"):
        ingest.reprocess_message(s, result.message_id, settings)


def test_parse_failure_reprocess_stays_quarantined(settings, factory):
    with unit_of_work(factory) as s:
        result = ingest.process_message(s, mails.malformed(), settings, source="test")
    with unit_of_work(factory) as s:
        again = ingest.reprocess_message(s, result.message_id, settings)
    assert again.quarantined and again.error


def test_poller_is_a_singleton(settings, factory):
    box = MemoryMailbox()
    box.add("INBOX", mails.request())
    with unit_of_work(factory) as s:
        assert joblock.try_acquire(s, f"poll:{box.name}", "other-worker", 60)
    report = _poll(settings, factory, box)
    assert report.skipped and report.seen == 0 and len(box.folders["INBOX"].messages) == 1
    with unit_of_work(factory) as s:
        joblock.release(s, f"poll:{box.name}", "other-worker")
    assert _poll(settings, factory, box).processed == 1


# --- outbox -------------------------------------------------------------------------------------


def _queue_acks(settings, factory, n: int) -> None:
    for i in range(n):
        with unit_of_work(factory) as s:
            ingest.process_message(
                s, mails.request(f"192.0.2.{100 + i}", sender=f"n{i}@isp.example"), settings, source="test"
            )


def test_send_due_sends_each_row_once_with_its_stored_bytes(settings, factory):
    _queue_acks(settings, factory, 3)
    mailer = MemoryMailer()
    report = outbox.send_due(factory, mailer, settings)
    assert (report.claimed, report.sent) == (3, 3)
    assert outbox.send_due(factory, mailer, settings).claimed == 0
    with unit_of_work(factory) as s:
        rows = s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        assert [r.status for r in rows] == [OutboxStatus.SENT] * 3
        assert [m.raw for m in mailer.sent] == [r.raw for r in rows]
        assert (
            s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "mail.sent"))
            == 3
        )


def test_send_failures_back_off_and_end_failed(settings, factory):
    settings.outbox_max_attempts = 3
    _queue_acks(settings, factory, 1)
    mailer = MemoryMailer(fail_next=10)
    now = utcnow()
    first = outbox.send_due(factory, mailer, settings, now=now)
    assert first.retried == 1
    with unit_of_work(factory) as s:
        row = s.scalar(select(OutboxMessage))
        assert row.status == OutboxStatus.PENDING and row.attempts == 1 and row.last_error
        assert row.next_attempt_at == now + outbox.backoff(1)
    assert outbox.send_due(factory, mailer, settings, now=now + timedelta(seconds=30)).claimed == 0
    outbox.send_due(factory, mailer, settings, now=now + timedelta(minutes=1, seconds=1))
    third = outbox.send_due(factory, mailer, settings, now=now + timedelta(minutes=4))
    assert third.failed == 1 and mailer.sent == []
    with unit_of_work(factory) as s:
        row = s.scalar(select(OutboxMessage))
        assert row.status == OutboxStatus.FAILED and row.attempts == 3 and row.next_attempt_at is None


def test_permanent_failure_is_not_retried(settings, factory):
    _queue_acks(settings, factory, 1)
    report = outbox.send_due(factory, MemoryMailer(fail_next=1, permanent=True), settings)
    assert report.failed == 1
    with unit_of_work(factory) as s:
        assert s.scalar(select(OutboxMessage.status)) == OutboxStatus.FAILED


def test_crash_after_claim_resends_same_message_only_after_the_lease(settings, factory):
    _queue_acks(settings, factory, 1)
    now = utcnow()
    # the worker claimed the row, the SMTP server may have accepted it, then the process died
    claimed = outbox._claim(factory, "dead-worker", now, 10, 300)
    assert len(claimed) == 1
    mailer = MemoryMailer()
    assert outbox.send_due(factory, mailer, settings, now=now + timedelta(seconds=60)).claimed == 0
    later = outbox.send_due(factory, mailer, settings, now=now + timedelta(seconds=301), worker_id="w2")
    assert later.sent == 1
    with unit_of_work(factory) as s:
        row = s.scalar(select(OutboxMessage))
        assert row.status == OutboxStatus.SENT and row.attempts == 2
        assert email.message_from_bytes(mailer.sent[0].raw)["Message-ID"] == row.message_id_header


def test_crash_between_outbox_write_and_send_then_restart_sends_once(settings, factory):
    box = MemoryMailbox()
    box.add("INBOX", mails.request("203.0.113.90"))
    _poll(settings, factory, box)  # committed with its outbox row; the process "dies" before sending
    mailer = MemoryMailer()
    assert outbox.send_due(factory, mailer, settings).sent == 1
    assert outbox.send_due(factory, mailer, settings).sent == 0
    assert len(mailer.sent) == 1


def test_targets_on_case_are_unique_and_oversized_flagged(settings, factory):
    settings.max_target_prefix_v4 = 26  # so that a documentation /24 counts as oversized
    raw = mails.request("10.0.0.1", body="Please delist 198.51.100.0/24 and 203.0.113.5, 203.0.113.5 again.")
    with unit_of_work(factory) as s:
        result = ingest.process_message(s, raw, settings, source="test")
    with unit_of_work(factory) as s:
        case = cases.get_by_reference(s, result.case_reference)
        by_net = {t.network: t for t in s.scalars(select(CaseTarget).where(CaseTarget.case_id == case.id))}
        assert set(by_net) == {"198.51.100.0/24", "203.0.113.5/32"}  # 10.0.0.1 (private) is no target
        assert by_net["198.51.100.0/24"].oversized and not by_net["203.0.113.5/32"].oversized
        assert case.flags["oversized"] == ["198.51.100.0/24"]


def test_poll_a_local_maildir(settings, factory, tmp_path):
    from tmsi.adapters.mailbox import MaildirMailbox

    box = MaildirMailbox(tmp_path / "Maildir")
    box.deliver("INBOX", mails.request("198.51.100.150", sender="local@isp.example"))
    box.deliver("INBOX", mails.malformed())
    report = poller.poll_once(settings, factory, box)
    assert (report.processed, report.quarantined, report.new_cases) == (1, 1, 1)
    assert box.uids_after("INBOX") == [] and len(box.uids_after("Processed")) == 1
    assert len(box.uids_after("Quarantine")) == 1
    assert poller.poll_once(settings, factory, box).seen == 0


def test_a_copy_of_our_own_ack_in_the_inbox_is_attached_but_silences_nothing(settings, factory):
    with unit_of_work(factory) as s:
        first = ingest.process_message(s, mails.request("198.51.100.160"), settings, source="test")
        ack_raw = s.scalar(select(OutboxMessage.raw))
    with unit_of_work(factory) as s:
        copy = ingest.process_message(s, ack_raw, settings, source="test")  # e.g. a Bcc to the mailbox
    assert copy.kind == "spam_or_other" and copy.case_reference == first.case_reference
    assert copy.replies == [] and not copy.new_case
    with unit_of_work(factory) as s:
        case = cases.get_by_reference(s, first.case_reference)
        assert case.flags["auto_generated"] is False
        assert len(case.messages) == 3  # request, our ack (outgoing), and the copy of it


def test_two_senders_never_claim_the_same_row(settings, factory):
    _queue_acks(settings, factory, 3)
    now = utcnow()
    first = outbox._claim(factory, "worker-a", now, 2, 300)
    second = outbox._claim(factory, "worker-b", now, 10, 300)
    assert len(first) == 2 and len(second) == 1 and not set(first) & set(second)


def test_skip_locked_on_postgresql(settings, factory, engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("FOR UPDATE SKIP LOCKED is PostgreSQL's; SQLite has a single writer")
    _queue_acks(settings, factory, 2)
    with factory() as holder, holder.begin():
        locked = holder.scalars(
            select(OutboxMessage.id).order_by(OutboxMessage.id).limit(1).with_for_update()
        ).all()
        # another worker, while the first row is locked by an open transaction: it gets the other row at once
        claimed = outbox._claim(factory, "worker-b", utcnow(), 10, 300)
        assert claimed and not set(claimed) & set(locked)


def test_job_poll_mailbox_uses_the_configured_maildir(settings, factory):
    from tmsi.adapters.mailbox import MaildirMailbox

    assert poller.job_poll_mailbox(settings, factory) == {"skipped": "TMSI_MAILBOX_KIND is none"}
    settings.mailbox_kind = "maildir"
    MaildirMailbox(settings.maildir_path).deliver(
        "INBOX", mails.request("203.0.113.222", sender="job@isp.example")
    )
    report = poller.job_poll_mailbox(settings, factory)
    assert (report["processed"], report["new_cases"]) == (1, 1)
    assert report["mailbox"].startswith("maildir:")


def test_the_same_delivery_seen_again_is_not_counted_twice(settings, factory):
    raw = mails.request("198.51.100.170")
    where = ingest.Delivery("memory://x", "INBOX", 7, 42)
    for _ in range(2):
        with unit_of_work(factory) as s:
            ingest.process_message(s, raw, settings, source="test", delivery=where)
    with unit_of_work(factory) as s:
        (message,) = s.scalars(select(Message).where(Message.direction == "in")).all()
        assert message.delivery_count == 1 and len(message.deliveries) == 1


def test_cli_ingest_files_and_reprocess(settings, factory, tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from tmsi.cli.mail import mail

    good = tmp_path / "request.eml"
    good.write_bytes(mails.request("203.0.113.177", sender="cli-file@isp.example"))
    bad = tmp_path / "broken.eml"
    bad.write_bytes(mails.malformed())
    monkeypatch.setenv("TMSI_DATABASE_URL", settings.database_url)
    runner = CliRunner()
    out = runner.invoke(mail, ["ingest", str(good), str(bad)])
    assert out.exit_code == 0, out.output
    lines = [json.loads(line) for line in out.output.splitlines()]
    assert [line["file"] for line in lines] == [str(good), str(bad)]
    assert lines[0]["new_case"] and lines[0]["targets"] == ["203.0.113.177/32"]
    assert lines[1]["status"] == "quarantined" and lines[1]["error"]
    again = runner.invoke(mail, ["ingest", str(good)])
    assert json.loads(again.output)["duplicate"] is True
    redo = runner.invoke(mail, ["reprocess", str(lines[1]["message_id"])])
    assert redo.exit_code == 0 and json.loads(redo.output)["status"] == "quarantined"
    wrong = runner.invoke(mail, ["reprocess", str(lines[0]["message_id"])])
    assert wrong.exit_code != 0 and "not a quarantined" in wrong.output


# --- deferred processing: the poller only stores, workers process ----------------------------------


def test_deferred_poll_stores_and_moves_then_workers_process(settings, factory):
    settings.ingest_defer = True
    box = MemoryMailbox()
    request = mails.request("203.0.113.140", sender="defer@isp.example")
    box.add("INBOX", request)
    box.add("INBOX", mails.auto_reply())
    box.add("INBOX", mails.malformed())
    report = _poll(settings, factory, box)
    assert (report.stored, report.quarantined, report.processed, report.new_cases) == (2, 1, 0, 0)
    assert box.folders["INBOX"].messages == {} and len(box.folders["Processed"].messages) == 2
    assert (
        _count(factory, Message, Message.status == MessageStatus.STORED) == 2 and _count(factory, Case) == 0
    )

    done = ingest.process_stored_batch(settings, factory)
    assert (done.processed, done.new_cases, done.replies, done.waiting) == (2, 1, 1, 0)
    assert _count(factory, Message, Message.status == MessageStatus.STORED) == 0
    assert ingest.process_stored_batch(settings, factory).processed == 0


def test_a_deferred_reply_waits_for_its_request(settings, factory):
    settings.ingest_defer = True
    request = mails.request("203.0.113.141", sender="order@isp.example")
    reply = mails.reply_to(
        request, subject="Re: Delisting request", body="also 203.0.113.142", sender="order@isp.example"
    )
    with unit_of_work(factory) as s:
        first = ingest.process_message(s, request, settings, source="t", defer=True)
        second = ingest.process_message(s, reply, settings, source="t", defer=True)
    with unit_of_work(factory) as s, pytest.raises(ingest.NotReady):
        ingest.process_stored(s, s.get(Message, second.message_id), settings)
    done = ingest.process_stored_batch(settings, factory)
    assert (done.processed, done.new_cases) == (2, 1)
    with unit_of_work(factory) as s:
        a, b = s.get(Message, first.message_id), s.get(Message, second.message_id)
        assert a.case_id == b.case_id is not None and b.kind == MessageKind.REPLY


def test_parallel_workers_process_each_stored_message_once(settings, factory):
    import threading

    for i in range(12):
        with unit_of_work(factory) as s:
            raw = mails.request(f"198.51.100.{180 + i}", sender=f"par{i}@isp.example")
            ingest.process_message(s, raw, settings, source="t", defer=True)
    reports = []
    threads = [
        threading.Thread(target=lambda: reports.append(ingest.process_stored_batch(settings, factory)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.processed for r in reports) == 12 and not any(r.errors for r in reports)
    assert _count(factory, Case) == 12 and _count(factory, OutboxMessage) == 12


def test_cli_process_stored(settings, factory, monkeypatch):
    import json

    from click.testing import CliRunner

    from tmsi.cli.mail import mail

    with unit_of_work(factory) as s:
        ingest.process_message(s, mails.request("203.0.113.199"), settings, source="t", defer=True)
    monkeypatch.setenv("TMSI_DATABASE_URL", settings.database_url)
    out = CliRunner().invoke(mail, ["process"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["new_cases"] == 1
