"""Ingest against a real Dovecot and a real SMTP sink: poll, move, acknowledge, and survive crashes."""

from __future__ import annotations

import email
import threading
import time
from email import policy

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from tests.integration import ingest_helpers as mails
from tmsi.adapters.mailbox import ImapMailbox, MailboxError
from tmsi.adapters.mailer import SmtpMailer
from tmsi.db import unit_of_work, utcnow
from tmsi.models import Case, CaseStatus, Message, MessageKind, OutboxMessage, OutboxStatus
from tmsi.services import cases, outbox, poller

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def _imap_user_pool(dovecot):
    """Fresh Dovecot users, created in one go: Dovecot takes seconds to notice a changed passwd-file."""
    names = [f"ingest{i}-{int(time.time())}@example.test" for i in range(24)]
    for name in names:
        dovecot.users[name] = "pw"
    dovecot._write_users()
    deadline = time.monotonic() + 20
    while True:
        try:
            dovecot.client(names[-1], "pw").logout()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return iter(names)


@pytest.fixture
def imap_user(_imap_user_pool):
    """A user of its own per test: its own INBOX, Processed and Quarantine."""
    return next(_imap_user_pool), "pw"


@pytest.fixture
def imap_settings(settings, dovecot, imap_user, smtp_sink):
    user, password = imap_user
    settings.mailbox_kind = "imap"
    settings.imap_host, settings.imap_port, settings.imap_tls = "127.0.0.1", dovecot.port, "starttls"
    settings.imap_user, settings.imap_password, settings.imap_ca_file = user, password, dovecot.ca_file
    settings.smtp_host, settings.smtp_port, settings.smtp_tls = smtp_sink.host, smtp_sink.port, "none"
    settings.imap_batch_size = 3  # several batches even in small tests
    return settings


def _mailbox(settings, **overrides):
    box = ImapMailbox.from_settings(settings)
    for key, value in overrides.items():
        setattr(box, key, value)
    return box


def _folder_counts(dovecot, user):
    client = dovecot.client(user)
    try:
        return {
            folder: client.folder_status(folder, [b"MESSAGES"])[b"MESSAGES"]
            for folder in ("INBOX", "Processed", "Quarantine")
            if client.folder_exists(folder)
        }
    finally:
        client.logout()


def _count(factory, model, *where):
    with unit_of_work(factory) as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def test_batch_poll_moves_folders_and_sends_threaded_acknowledgements(
    imap_settings, factory, dovecot, smtp_sink
):
    user = imap_settings.imap_user
    requests = [
        mails.request("203.0.113.7", sender="noc@isp.example"),
        mails.request("198.51.100.0/28", sender="hostmaster@cable.example"),
        mails.request("2001:db8:1::25", sender="ipv6@fibre.example"),
        mails.request("203.0.113.10-203.0.113.20", sender="ops@dsl.example"),
    ]
    for raw in requests:
        dovecot.append("INBOX", raw, user=user)
    for raw in (mails.auto_reply(), mails.mailing_list(), mails.ticket_ack(), mails.malformed()):
        dovecot.append("INBOX", raw, user=user)

    box = _mailbox(imap_settings)
    try:
        report = poller.poll_once(imap_settings, factory, box)
    finally:
        box.close()

    assert (report.seen, report.processed, report.quarantined, report.new_cases, report.replies) == (
        8,
        7,
        1,
        4,
        4,
    )
    assert report.errors == [] and report.uidvalidity > 0
    assert _folder_counts(dovecot, user) == {"INBOX": 0, "Processed": 7, "Quarantine": 1}
    with unit_of_work(factory) as s:
        assert [c.status for c in s.scalars(select(Case))] == [CaseStatus.VERIFYING] * 4
        ranged = s.scalar(select(Case).where(Case.requester_email == "ops@dsl.example"))
        assert [t.network for t in ranged.targets] == [
            "203.0.113.10/31",
            "203.0.113.12/30",
            "203.0.113.16/30",
            "203.0.113.20/32",
        ]
        request_ids = {
            m.from_addr: m.message_id_header
            for m in s.scalars(select(Message).where(Message.kind == MessageKind.REQUEST))
        }

    smtp_sink.clear()
    sent = outbox.send_due(factory, SmtpMailer.from_settings(imap_settings), imap_settings)
    assert (sent.claimed, sent.sent) == (4, 4)
    envelopes = smtp_sink.wait_for(4)
    assert len(envelopes) == 4
    assert sorted(e.rcpt_tos[0] for e in envelopes) == sorted(request_ids)
    for envelope in envelopes:
        ack = email.message_from_bytes(envelope.content, policy=policy.default)
        requester = envelope.rcpt_tos[0]
        assert envelope.mail_from == "dul@example.test"
        assert ack["Message-ID"].endswith("@example.test>")
        assert ack["In-Reply-To"] == request_ids[requester]
        assert request_ids[requester] in ack["References"]
        assert "[TMSI-" in ack["Subject"] and ack["Auto-Submitted"] == "auto-replied"
    # a second pass finds nothing to do
    box = _mailbox(imap_settings)
    try:
        again = poller.poll_once(imap_settings, factory, box)
    finally:
        box.close()
    assert (again.seen, again.moved_only) == (0, 0)
    assert outbox.send_due(factory, SmtpMailer.from_settings(imap_settings), imap_settings).claimed == 0


class CrashingMove(ImapMailbox):
    """The process dies after the commit and before the move (the move raises)."""

    def move(self, folder, uids, destination):
        raise MailboxError("killed before MOVE")


def test_crash_between_commit_and_move_then_restart(imap_settings, factory, dovecot, monkeypatch):
    monkeypatch.setattr(poller, "MOVE_EVERY", 1)  # move after every IMAP batch, as a busy pass does
    user = imap_settings.imap_user
    for i in range(5):
        dovecot.append("INBOX", mails.request(f"203.0.113.{40 + i}", sender=f"noc{i}@isp.example"), user=user)
    crashing = CrashingMove.from_settings(imap_settings)
    crashing.__class__ = CrashingMove
    try:
        first = poller.poll_once(imap_settings, factory, crashing)
    finally:
        crashing.close()
    # The first batch (3) committed, then the "crash" at its MOVE; the feeder may have fetched the second
    # batch meanwhile, and the poller may have committed it too: either way nothing has moved.
    assert first.errors and first.processed in (3, 5)
    assert _folder_counts(dovecot, user)["INBOX"] == 5

    box = _mailbox(imap_settings)
    try:
        second = poller.poll_once(imap_settings, factory, box)
    finally:
        box.close()
    assert second.moved_only == first.processed and second.duplicates == 0
    assert first.processed + second.processed == 5
    assert _folder_counts(dovecot, user) == {"INBOX": 0, "Processed": 5, "Quarantine": 0}
    assert _count(factory, Message, Message.direction == "in") == 5
    assert _count(factory, Case) == 5 and _count(factory, OutboxMessage) == 5


class KilledAfterSmtp(SmtpMailer):
    """Delivers, then the process dies before the database learns it was sent."""

    def send(self, mail_from, rcpt_to, raw):
        super().send(mail_from, rcpt_to, raw)
        raise KeyboardInterrupt("killed after the SMTP transaction")


class KilledBeforeSmtp(SmtpMailer):
    def send(self, mail_from, rcpt_to, raw):
        raise KeyboardInterrupt("killed before the SMTP transaction")


def test_crash_between_outbox_write_and_send_then_restart(imap_settings, factory, dovecot, smtp_sink):
    user = imap_settings.imap_user
    dovecot.append("INBOX", mails.request("198.51.100.5", sender="a@isp.example"), user=user)
    dovecot.append("INBOX", mails.request("198.51.100.6", sender="b@isp.example"), user=user)
    box = _mailbox(imap_settings)
    try:
        poller.poll_once(imap_settings, factory, box)
    finally:
        box.close()
    smtp_sink.clear()
    now = utcnow()
    kw = {"host": imap_settings.smtp_host, "port": imap_settings.smtp_port}
    with pytest.raises(KeyboardInterrupt):
        outbox.send_due(factory, KilledBeforeSmtp(**kw), imap_settings, now=now, limit=1)
    with pytest.raises(KeyboardInterrupt):
        outbox.send_due(factory, KilledAfterSmtp(**kw), imap_settings, now=now, limit=1)
    assert len(smtp_sink.messages) == 1  # only the second crash happened after the SMTP server accepted
    # restart: the claims are still leased, nothing is sent twice meanwhile
    assert outbox.send_due(factory, SmtpMailer(**kw), imap_settings, now=now).claimed == 0
    after = outbox.send_due(factory, SmtpMailer(**kw), imap_settings, now=now + outbox_lease())
    assert after.sent == 2
    envelopes = smtp_sink.wait_for(3)
    ids = [email.message_from_bytes(e.content)["Message-ID"] for e in envelopes]
    # the one resend is the mail accepted just before the crash, with the same Message-ID
    assert len(set(ids)) == 2 and ids[0] in ids[1:]
    with unit_of_work(factory) as s:
        assert set(s.scalars(select(OutboxMessage.status))) == {OutboxStatus.SENT}


def outbox_lease():
    from datetime import timedelta

    return timedelta(seconds=outbox.CLAIM_LEASE_SECONDS + 1)


def test_uidvalidity_change_by_recreating_the_folder(imap_settings, factory, dovecot):
    user = imap_settings.imap_user
    imap_settings.imap_source_folder = "Incoming"
    raws = [mails.request(f"203.0.113.{80 + i}", sender=f"u{i}@isp.example") for i in range(3)]
    for raw in raws:
        dovecot.append("Incoming", raw, user=user)
    crashing = CrashingMove.from_settings(imap_settings)
    crashing.__class__ = CrashingMove
    try:
        first = poller.poll_once(imap_settings, factory, crashing)
    finally:
        crashing.close()
    assert first.processed == 3
    client = dovecot.client(user)
    client.delete_folder("Incoming")
    client.create_folder("Incoming")
    client.logout()
    for raw in [*raws, mails.request("203.0.113.99", sender="late@isp.example")]:
        dovecot.append("Incoming", raw, user=user)

    box = _mailbox(imap_settings)
    try:
        second = poller.poll_once(imap_settings, factory, box)
    finally:
        box.close()
    assert second.uidvalidity_reset and second.uidvalidity != first.uidvalidity
    assert (second.seen, second.duplicates, second.processed) == (4, 3, 1)
    assert _count(factory, Message, Message.direction == "in") == 4 and _count(factory, Case) == 4
    with unit_of_work(factory) as s:
        assert set(s.scalars(select(Message.delivery_count).where(Message.direction == "in"))) == {1}


def test_duplicate_delivery_and_reply_threading_over_imap(imap_settings, factory, dovecot, smtp_sink):
    user = imap_settings.imap_user
    raw = mails.request("192.0.2.200", sender="dup@isp.example")
    dovecot.append("INBOX", raw, user=user)
    dovecot.append("INBOX", raw, user=user)
    box = _mailbox(imap_settings)
    try:
        report = poller.poll_once(imap_settings, factory, box)
        assert (report.processed, report.duplicates, report.new_cases) == (1, 1, 1)
        with unit_of_work(factory) as s:
            message = s.scalar(select(Message).where(Message.direction == "in"))
            assert message.delivery_count == 2 and len(message.deliveries) == 2
            case = s.get(Case, message.case_id)
            cases.transition(s, case, CaseStatus.CLOSED)
            reference = case.reference
        smtp_sink.clear()
        outbox.send_due(factory, SmtpMailer.from_settings(imap_settings), imap_settings)
        ack = smtp_sink.wait_for(1)[0].content
        reply = mails.reply_to(
            ack, subject="Re: Delisting request", body="The PTR is fixed now.", sender="dup@isp.example"
        )
        dovecot.append("INBOX", reply, user=user)
        dovecot.append("INBOX", mails.auto_reply(f"Re: [{reference}]"), user=user)
        second = poller.poll_once(imap_settings, factory, box)
    finally:
        box.close()
    assert (second.processed, second.new_cases, second.replies) == (2, 0, 0)
    with unit_of_work(factory) as s:
        case = cases.get_by_reference(s, reference)
        assert case.status == CaseStatus.VERIFYING  # reopened by the person's reply, not by the auto-reply
        kinds = [m.kind for m in case.messages if m.direction == "in"]
        assert kinds == [MessageKind.REQUEST, MessageKind.REPLY, MessageKind.AUTO_REPLY]
        assert case.flags["auto_generated"] is True
    assert _count(factory, Case) == 1


@pytest.mark.slow
def test_twenty_megabyte_message(imap_settings, factory, dovecot):
    user = imap_settings.imap_user
    raw = mails.large_request()
    assert len(raw) > 20 * 1024 * 1024
    dovecot.append("INBOX", raw, user=user)
    box = _mailbox(imap_settings)
    try:
        report = poller.poll_once(imap_settings, factory, box)
    finally:
        box.close()
    assert (report.processed, report.new_cases) == (1, 1) and report.bytes >= len(raw) - 1000
    with unit_of_work(factory) as s:
        message = s.scalar(select(Message).where(Message.direction == "in"))
        assert message.raw_size == len(message.raw) and message.raw.replace(b"\r\n", b"\n") == raw.replace(
            b"\r\n", b"\n"
        )
        assert [a["filename"] for a in message.attachments] == ["logs.bin"]
        assert [t.network for t in s.get(Case, message.case_id).targets] == ["198.51.100.77/32"]
    assert _folder_counts(dovecot, user)["Processed"] == 1


def test_move_without_the_move_extension_uses_copy_and_uid_expunge(imap_settings, dovecot):
    user = imap_settings.imap_user
    keep = dovecot.append("INBOX", mails.request("203.0.113.1"), user=user)
    move = dovecot.append("INBOX", mails.request("203.0.113.2"), user=user)
    box = _mailbox(imap_settings)
    try:
        box.ensure_folders(["Processed"])
        box.select("INBOX")
        box._capabilities = frozenset(c for c in box._capabilities if c != b"MOVE")
        # someone else's \Deleted message must survive our expunge (UID EXPUNGE only touches ours)
        box.client.add_flags([keep], [b"\\Deleted"])
        box.move("INBOX", [move], "Processed")
        assert box.uids_after("INBOX") == [keep]
    finally:
        box.close()
    assert _folder_counts(dovecot, user)["Processed"] == 1


def test_idle_wakes_up_on_new_mail(imap_settings, dovecot):
    user = imap_settings.imap_user
    box = _mailbox(imap_settings)
    try:
        box.select("INBOX")
        assert box.has_capability("IDLE")
        timer = threading.Timer(0.5, lambda: dovecot.append("INBOX", mails.request(), user=user))
        timer.start()
        started = time.monotonic()
        assert box.wait("INBOX", 10.0) is True
        assert time.monotonic() - started < 8.0
        timer.join()
        assert len(box.uids_after("INBOX")) == 1
    finally:
        box.close()


def test_tls_modes_and_certificate_verification(imap_settings, dovecot):
    user, password = imap_settings.imap_user, imap_settings.imap_password
    implicit = ImapMailbox(
        host="localhost",
        port=dovecot.tls_port,
        user=user,
        password=password,
        tls="implicit",
        ca_file=dovecot.ca_file,
    )
    try:
        assert implicit.select("INBOX") > 0
    finally:
        implicit.close()
    untrusted = ImapMailbox(
        host="localhost", port=dovecot.tls_port, user=user, password=password, tls="implicit"
    )
    with pytest.raises(MailboxError, match="cannot connect"):
        untrusted.select("INBOX")
    unverified = ImapMailbox(
        host="127.0.0.1", port=dovecot.port, user=user, password=password, tls="starttls", verify_tls=False
    )
    try:
        assert unverified.select("INBOX") > 0
    finally:
        unverified.close()
    wrong = ImapMailbox(host="127.0.0.1", port=dovecot.port, user=user, password="wrong", tls="none")
    with pytest.raises(MailboxError, match="login refused"):
        wrong.select("INBOX")


def test_cli_poll_and_send(imap_settings, factory, dovecot, smtp_sink, monkeypatch):
    from tmsi.cli.mail import mail

    user = imap_settings.imap_user
    dovecot.append("INBOX", mails.request("203.0.113.123", sender="cli@isp.example"), user=user)
    env = {
        "TMSI_DATABASE_URL": imap_settings.database_url,
        "TMSI_MAILBOX_KIND": "imap",
        "TMSI_IMAP_HOST": "127.0.0.1",
        "TMSI_IMAP_PORT": str(dovecot.port),
        "TMSI_IMAP_TLS": "starttls",
        "TMSI_IMAP_CA_FILE": dovecot.ca_file,
        "TMSI_IMAP_USER": user,
        "TMSI_IMAP_PASSWORD": imap_settings.imap_password,
        "TMSI_SMTP_HOST": smtp_sink.host,
        "TMSI_SMTP_PORT": str(smtp_sink.port),
        "TMSI_SMTP_TLS": "none",
        "TMSI_MAILBOX_ADDRESS": "dul@example.test",
        "TMSI_MAIL_DOMAIN": "example.test",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    polled = runner.invoke(mail, ["poll"])
    assert polled.exit_code == 0, polled.output
    import json

    report = json.loads(polled.output)
    assert (report["processed"], report["new_cases"], report["replies"]) == (1, 1, 1)
    smtp_sink.clear()
    sent = runner.invoke(mail, ["send"])
    assert sent.exit_code == 0 and json.loads(sent.output)["sent"] == 1
    assert smtp_sink.wait_for(1)[0].rcpt_tos == ["cli@isp.example"]


def test_job_send_outbox_uses_the_configured_smtp(imap_settings, factory, dovecot, smtp_sink):
    from tmsi.services.poller import job_poll_mailbox

    dovecot.append(
        "INBOX", mails.request("198.51.100.201", sender="job@isp.example"), user=imap_settings.imap_user
    )
    assert job_poll_mailbox(imap_settings, factory)["new_cases"] == 1
    smtp_sink.clear()
    assert outbox.job_send_outbox(imap_settings, factory)["sent"] == 1
    assert smtp_sink.wait_for(1)[0].rcpt_tos == ["job@isp.example"]


def test_smtp_starttls_verifies_the_certificate(dovecot):
    """SmtpMailer over STARTTLS against an aiosmtpd server using the test CA's certificate."""
    import ssl

    from aiosmtpd.controller import Controller

    from tests.services.ports import free_port
    from tmsi.adapters.mailer import MailerError

    received = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            received.append(envelope.content)
            return "250 OK"

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(dovecot.directory / "cert.pem", dovecot.directory / "key.pem")
    port = free_port()
    controller = Controller(
        Handler(), hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True
    )
    controller.start()
    try:
        raw = mails.request("203.0.113.250")
        trusted = SmtpMailer(host="127.0.0.1", port=port, tls="starttls", ca_file=dovecot.ca_file, timeout=10)
        trusted.send("dul@example.test", ["noc@isp.example"], raw)
        trusted.close()
        assert len(received) == 1
        untrusted = SmtpMailer(host="127.0.0.1", port=port, tls="starttls", timeout=10)
        with pytest.raises(MailerError, match=r"SSL|certificate"):
            untrusted.send("dul@example.test", ["noc@isp.example"], raw)
        plain = SmtpMailer(host="127.0.0.1", port=port, tls="none", timeout=10)
        with pytest.raises(MailerError) as refused:
            plain.send("dul@example.test", ["noc@isp.example"], raw)
        assert refused.value.permanent  # 530 Must issue a STARTTLS command first
        assert len(received) == 1
    finally:
        controller.stop()
