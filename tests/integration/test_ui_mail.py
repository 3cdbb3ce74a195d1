"""The mail outside cases page: roles, the quarantine list and its filters, hostile mail shown as text, raw
downloads, and reprocessing (CSRF, audit, once only). Messages are stored by the real ingest functions."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tests.integration import ingest_helpers as mail
from tests.integration.ui_support import csrf_from, form_fields, make_case, signed_in
from tmsi.db import unit_of_work
from tmsi.models import AuditEvent, Case, Message, MessageStatus, User
from tmsi.services import ingest

pytestmark = pytest.mark.integration

HOSTILE = '<script>alert("x")</script>'


def _ingest(factory, settings, raw: bytes) -> int:
    with unit_of_work(factory) as db:
        return ingest.process_message(db, raw, settings, source="test").message_id


def _failed_processing(factory, settings, monkeypatch, raw: bytes) -> int:
    """A good message whose first processing failed: quarantined, and processed when run again."""

    def broken(*_args, **_kw):
        raise RuntimeError("resolver down")

    with monkeypatch.context() as patch:
        patch.setattr(ingest, "_process", broken)
        message_id = _ingest(factory, settings, raw)
    return message_id


def _message(factory, message_id: int) -> Message:
    with factory() as db:
        message = db.get(Message, message_id)
        assert message is not None
        return message


def _rows(html: str) -> str:
    return html[html.index('id="mail-table"') :]


def test_anonymous_is_sent_to_sign_in(app, client):
    app.config["WTF_CSRF_ENABLED"] = False  # so that the POST reaches the sign-in check
    for method, url in (("GET", "/mail"), ("GET", "/mail/1/raw"), ("POST", "/mail/1/reprocess")):
        response = client.open(url, method=method)
        assert response.status_code == 302 and "/login" in response.headers["Location"], (method, url)


@pytest.mark.parametrize("role", ["analyst", "lead", "admin", "auditor"])
def test_every_role_sees_the_page(client, factory, role):
    signed_in(client, factory, role)
    response = client.get("/mail")
    assert response.status_code == 200 and "Mail outside cases" in response.text
    assert 'href="/mail"' in client.get("/cases").text


def test_auditor_may_not_reprocess(client, factory, settings):
    message_id = _ingest(factory, settings, mail.malformed())
    signed_in(client, factory, "auditor")
    page = client.get("/mail")
    assert f'id="message-{message_id}"' in page.text and "Reprocess</button>" not in page.text
    response = client.post(f"/mail/{message_id}/reprocess", data={"csrf_token": csrf_from(page.text)})
    assert response.status_code == 403
    with factory() as db:
        assert db.scalar(select(AuditEvent).where(AuditEvent.action == "message.reprocessed")) is None


def test_quarantine_is_listed_with_its_reason_and_case_mail_is_not(client, factory, settings):
    garbage = _ingest(factory, settings, mail.malformed())
    ref = make_case(factory, subject="Case mail, not outside")
    signed_in(client, factory, "analyst")
    page = client.get("/mail")
    assert page.status_code == 200
    rows = _rows(page.text)
    reason = _message(factory, garbage).quarantine_reason
    assert reason and reason.startswith("cannot parse")
    assert f'id="message-{garbage}"' in rows and reason in rows and "quarantined" in rows
    assert f'href="/mail/{garbage}/raw"' in rows
    assert "Case mail, not outside" not in rows and ref not in rows


def test_quarantined_mail_shows_its_sender_and_subject(client, factory, settings, monkeypatch):
    # The parser refuses it (NUL bytes in the header block), but From and Subject are readable.
    binary = _ingest(
        factory,
        settings,
        b"From: =?utf-8?q?NOC_M=C3=BCller?= <noc@isp.example>\r\nSubject: Delist\r\n 192.0.2.9 "
        + HOSTILE.encode()
        + b"\r\nX-Junk: "
        + b"\x00" * 20
        + b"\r\n\r\nbody\r\n",
    )
    failed = _failed_processing(factory, settings, monkeypatch, mail.request("203.0.113.8"))
    stored = _message(factory, binary)
    assert stored.status == MessageStatus.QUARANTINED and "NUL" in (stored.quarantine_reason or "")
    assert (stored.from_name, stored.from_addr) == ("NOC Müller", "noc@isp.example")
    assert stored.subject == f"Delist 192.0.2.9 {HOSTILE}"
    assert _message(factory, failed).subject  # kept although its processing was rolled back
    signed_in(client, factory, "analyst")
    rows = _rows(client.get("/mail").text)
    assert "noc@isp.example" in rows and "Delist 192.0.2.9 &lt;script&gt;" in rows and HOSTILE not in rows
    assert _message(factory, failed).subject in rows


def test_filters_change_what_is_listed(client, factory, settings):
    garbage = _ingest(factory, settings, mail.malformed())
    ooo = _ingest(factory, settings, mail.auto_reply("Delisting of 203.0.113.9"))
    announce = _ingest(factory, settings, mail.mailing_list())
    assert _message(factory, ooo).case_id is None and _message(factory, ooo).status == MessageStatus.PROCESSED
    signed_in(client, factory, "analyst")

    def listed(**args) -> set[int]:
        response = client.get("/mail", query_string=args)
        assert response.status_code == 200, response.text
        rows = _rows(response.text)
        return {m for m in (garbage, ooo, announce) if f'id="message-{m}"' in rows}

    assert listed() == {garbage}  # quarantined by default
    assert listed(status="processed") == {ooo, announce}
    assert listed(status="stored") == set()
    assert listed(status="all") == {garbage, ooo, announce}
    assert listed(status="all", kind="auto_reply") == {ooo}
    assert listed(status="all", kind="list") == {announce}
    assert listed(status="all", q="OUT OF OFFICE") == {ooo}  # subject, any case
    assert listed(status="all", q="lists.example") == {announce}  # sender
    assert listed(status="all", q="100%_") == set()  # LIKE wildcards are text
    bad = client.get("/mail", query_string={"status": "bogus", "kind": "nope"})
    assert bad.status_code == 400 and "status: one of" in bad.text and "kind: one of" in bad.text


def test_hostile_subject_and_sender_are_text(client, factory, settings):
    raw = mail.request(subject=HOSTILE, name='"<b>Eve</b>"', headers={"Auto-Submitted": "auto-replied"})
    message_id = _ingest(factory, settings, raw)
    assert _message(factory, message_id).from_name == "<b>Eve</b>"
    signed_in(client, factory, "analyst")
    page = client.get("/mail", query_string={"status": "all"})
    assert f'id="message-{message_id}"' in page.text
    assert "<script>alert" not in page.text and "<b>" not in page.text
    assert (
        "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text
        and "&lt;b&gt;Eve&lt;/b&gt;" in page.text
    )


def test_raw_download_is_the_stored_bytes(client, factory, settings):
    raw = mail.malformed()
    message_id = _ingest(factory, settings, raw)
    ref = make_case(factory)
    with factory() as db:
        in_case = db.scalar(select(Message.id).where(Message.case_id.is_not(None)))
    signed_in(client, factory, "auditor")
    response = client.get(f"/mail/{message_id}/raw")
    assert response.status_code == 200 and response.data == raw
    assert response.mimetype == "application/octet-stream"
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/mail/999999/raw").status_code == 404
    assert in_case is not None and ref
    assert client.get(f"/mail/{in_case}/raw").status_code == 404


def test_reprocess_needs_the_csrf_token(client, factory, settings):
    message_id = _ingest(factory, settings, mail.malformed())
    signed_in(client, factory, "analyst")
    response = client.post(f"/mail/{message_id}/reprocess")
    assert response.status_code == 400 and "Form expired" in response.text
    assert _message(factory, message_id).status == MessageStatus.QUARANTINED
    with factory() as db:
        assert db.scalar(select(AuditEvent).where(AuditEvent.action == "message.reprocessed")) is None


def test_reprocess_garbage_stays_quarantined_audited(client, factory, settings):
    message_id = _ingest(factory, settings, mail.malformed())
    email = signed_in(client, factory, "analyst")
    page = client.get("/mail", query_string={"status": "quarantined", "q": "", "page": "1"})
    fields = form_fields(page.text, f"/mail/{message_id}/reprocess")
    assert fields["status"] == "quarantined"
    response = client.post(f"/mail/{message_id}/reprocess", data=fields)
    assert response.status_code == 302 and response.headers["Location"].endswith("/mail?status=quarantined")
    after = client.get(response.headers["Location"])
    assert f"Message {message_id}: still quarantined: " in after.text
    assert _message(factory, message_id).status == MessageStatus.QUARANTINED
    with factory() as db:
        event = db.scalar(select(AuditEvent).where(AuditEvent.action == "message.reprocessed"))
        assert event is not None and event.actor == email and event.object_id == str(message_id)
        assert event.object_type == "message" and event.detail["previous_reason"].startswith("cannot parse")
        assert event.actor_id == db.scalar(select(User.id).where(User.email == email))


def test_reprocess_opens_the_case_once(client, factory, settings, monkeypatch):
    message_id = _failed_processing(factory, settings, monkeypatch, mail.request("203.0.113.7"))
    assert _message(factory, message_id).quarantine_reason.startswith("processing failed: RuntimeError")
    signed_in(client, factory, "lead")
    page = client.get("/mail", query_string={"status": "all", "kind": ""})
    fields = form_fields(page.text, f"/mail/{message_id}/reprocess")
    first = client.post(f"/mail/{message_id}/reprocess", data=fields, follow_redirects=True)
    message = _message(factory, message_id)
    assert message.status == MessageStatus.PROCESSED and message.case_id is not None
    with factory() as db:
        reference = db.scalar(select(Case.reference).where(Case.id == message.case_id))
    assert f"Message {message_id}: processed: opened case {reference}" in first.text
    assert f'id="message-{message_id}"' not in _rows(first.text)  # in a case now
    assert first.request.args.to_dict() == {"status": "all"}

    again = client.post(f"/mail/{message_id}/reprocess", data=fields, follow_redirects=True)
    assert again.status_code == 200
    assert f"Message {message_id} is already processed (case {reference}): nothing done." in again.text
    with factory() as db:
        events = db.scalars(select(AuditEvent).where(AuditEvent.action == "message.reprocessed")).all()
        cases_opened = db.scalar(select(func.count()).select_from(Case))
    assert len(events) == 1 and cases_opened == 1
    assert client.post("/mail/999999/reprocess", data=fields).status_code == 404
