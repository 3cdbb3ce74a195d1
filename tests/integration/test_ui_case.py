"""The case page: thread, hostile content, downloads, evidence, every action with its audit event,
optimistic lock and idempotency, replies through the outbox, delisting with a listing split."""

from __future__ import annotations

import email.policy
import ipaddress
import random
import re
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import select

from tests.integration.ui_support import (
    add_message,
    csrf_from,
    form_fields,
    make_case,
    signed_in,
)
from tmsi.db import unit_of_work, utcnow
from tmsi.models import (
    AuditEvent,
    Case,
    CaseNote,
    CaseStatus,
    CheckResult,
    Delisting,
    DnsCheck,
    Listing,
    NameVerdict,
    OutboxMessage,
    OutboxStatus,
    Resolution,
    RunStatus,
    TargetStatus,
    VerificationRun,
)
from tmsi.services import cases
from tmsi.services.listings import find_overlapping_rows_many
from tmsi.web import ui

pytestmark = pytest.mark.integration

HOSTILE = '<script>alert("x")</script><img src=x onerror="alert(1)">'


def _case(factory, ref):
    with factory() as db:
        case = cases.get_by_reference(db, ref)
        assert case is not None
        _ = case.targets
        return case


def _events(factory, ref):
    with factory() as db:
        case = cases.get_by_reference(db, ref)
        return db.scalars(
            select(AuditEvent).where(AuditEvent.case_id == case.id).order_by(AuditEvent.id)
        ).all()


def _act(client, ref, name, **data):
    page = client.get(f"/cases/{ref}")
    form = "delist" if name in {"verify", "split"} else name  # buttons of the targets form
    fields = form_fields(page.text, f"/cases/{ref}/action/{form}")
    return client.post(f"/cases/{ref}/action/{name}", data={**fields, **data}, follow_redirects=True), fields


def _raw_with_attachment() -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = "Eve <eve@isp.example>"
    msg["To"] = "dul@example.test"
    msg["Subject"] = "x"
    msg.set_content("see attached")
    msg.add_attachment(
        b"<html><script>alert(1)</script></html>",
        maintype="text",
        subtype="html",
        filename='"><img src=x onerror=alert(1)>.html',
    )
    return msg.as_bytes()


def test_unknown_case_is_404_page(client, factory):
    signed_in(client, factory, "analyst")
    response = client.get("/cases/TMSI-2026-999999")
    assert response.status_code == 404 and "There is no case TMSI-2026-999999" in response.text
    assert (
        client.post(
            "/cases/TMSI-2026-999999/action/note", data={"csrf_token": csrf_from(response.text), "body": "x"}
        ).status_code
        == 404
    )


def test_hostile_mail_never_runs(client, factory):
    ref = make_case(factory, subject=HOSTILE, name=HOSTILE)
    raw = _raw_with_attachment()
    with unit_of_work(factory) as db:
        case = cases.get_by_reference(db, ref)
        msg = add_message(
            db,
            case,
            subject=HOSTILE,
            body=HOSTILE,
            from_name=HOSTILE,
            raw=raw,
            html=f'<p onclick="x()">hi</p>{HOSTILE}<img src="http://tracker.example/p.gif">'
            '<a href="javascript:alert(1)">link</a>',
            attachments=[{"filename": HOSTILE}],
        )
        message_id = msg.id
    signed_in(client, factory, "analyst")
    page = client.get(f"/cases/{ref}")
    html = page.text
    assert page.status_code == 200
    assert "<script>alert" not in html and "<img src=x" not in html and 'onerror="alert' not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert 'sandbox=""' in html  # the HTML part is only shown in a sandboxed frame
    frame = client.get(f"/cases/{ref}/messages/{message_id}/html")
    assert "<script" not in frame.text and "onerror" not in frame.text and "onclick" not in frame.text
    assert "javascript:" not in frame.text and "<p>hi</p>" in frame.text
    assert len(frame.headers.getlist("Content-Security-Policy")) == 1  # its own, not the pages' too
    assert "sandbox" in frame.headers["Content-Security-Policy"]
    assert "default-src 'none'" in frame.headers["Content-Security-Policy"]
    # Attachment: listed by name (escaped), downloaded as opaque bytes with a safe file name.
    att = client.get(f"/cases/{ref}/messages/{message_id}/attachments/0")
    assert att.status_code == 200 and att.mimetype == "application/octet-stream"
    disposition = att.headers["Content-Disposition"]
    assert (
        disposition.startswith("attachment;")
        and "<" not in disposition
        and '"' not in disposition.split("=", 1)[1][1:-1]
    )
    assert att.data == b"<html><script>alert(1)</script></html>"
    assert client.get(f"/cases/{ref}/messages/{message_id}/attachments/5").status_code == 404
    raw_dl = client.get(f"/cases/{ref}/messages/{message_id}/raw")
    assert raw_dl.data == raw and raw_dl.headers["Content-Disposition"].startswith("attachment;")
    assert raw_dl.headers["X-Content-Type-Options"] == "nosniff"
    other = make_case(factory, targets=("198.51.100.1/32",), listings=())
    assert client.get(f"/cases/{other}/messages/{message_id}/raw").status_code == 404


def test_targets_show_coverage_verdicts_evidence_and_history(client, factory):
    ref = make_case(factory, targets=("203.0.113.0/30",), listings=("203.0.113.0/24",))
    with unit_of_work(factory) as db:
        case = cases.get_by_reference(db, ref)
        target = case.targets[0]
        run = VerificationRun(
            case_id=case.id,
            target_id=target.id,
            network=target.network,
            status=RunStatus.RUNNING,
            total=4,
            done=2,
            passed=1,
            failed=1,
            summary={},
        )
        db.add(run)
        for i, result in enumerate((CheckResult.PASS, CheckResult.FAIL)):
            db.add(
                DnsCheck(
                    target_id=target.id,
                    address=f"203.0.113.{i}",
                    version=4,
                    address_key=bytes([203, 0, 113, i]),
                    result=result,
                    name_verdict=NameVerdict.GENERIC,
                    ptr_names=[f"dyn-203-0-113-{i}.isp.example."],
                    reasons=[f"generic name <b>{i}</b>"],
                    evidence={"ptr": {"ttl": 300}},
                )
            )
    signed_in(client, factory, "analyst")
    html = client.get(f"/cases/{ref}").text
    assert "203.0.113.0/24 — generic rDNS" in html  # covering listing
    assert "dyn-203-0-113-1.isp.example." in html and "generic name &lt;b&gt;1&lt;/b&gt;" in html
    assert '"ttl": 300' in html
    assert "2/4 running" in html
    progress = client.get(f"/cases/{ref}/progress.json").json
    assert (
        progress["running"] is True and progress["runs"][0]["done"] == 2 and progress["runs"][0]["total"] == 4
    )


def test_assign_and_note_are_audited(client, factory):
    ref = make_case(factory)
    email = signed_in(client, factory, "analyst")
    response, _ = _act(client, ref, "assign", assignee="me")
    assert f"Assigned to {email}" in response.text
    response, _ = _act(client, ref, "note", body="Called the ISP <script>x</script>")
    assert "Note added." in response.text and "Called the ISP &lt;script&gt;" in response.text
    events = _events(factory, ref)
    assert [e.action for e in events][-2:] == ["case.assigned", "case.note"]
    assert events[-2].before == {"assignee": None} and events[-2].after == {"assignee": email}
    assert events[-1].actor == email


def test_stale_form_and_double_submit(client, factory):
    ref = make_case(factory)
    signed_in(client, factory, "analyst")
    page = client.get(f"/cases/{ref}")
    note = form_fields(page.text, f"/cases/{ref}/action/note")
    assign = form_fields(page.text, f"/cases/{ref}/action/assign")
    first = client.post(f"/cases/{ref}/action/note", data={**note, "body": "once"}, follow_redirects=True)
    assert "Note added." in first.text
    again = client.post(f"/cases/{ref}/action/note", data={**note, "body": "once"}, follow_redirects=True)
    assert "already submitted" in again.text
    stale = client.post(
        f"/cases/{ref}/action/assign", data={**assign, "assignee": "me"}, follow_redirects=True
    )
    assert "was changed by someone else" in stale.text and "Nothing was done" in stale.text
    with factory() as db:
        assert len(db.scalars(select(CaseNote)).all()) == 1
        assert db.scalar(select(Case.assignee_id).where(Case.reference == ref)) is None


def test_verify_now_dispatches_after_commit(app, client, factory):
    ref = make_case(factory, targets=("203.0.113.0/30", "198.51.100.1/32"), listings=())
    calls = []

    def fake_dispatch(settings, fac, target_ids, actor):
        with fac() as db:  # the request's transaction is committed before the dispatch
            assert db.scalar(select(Case.status).where(Case.reference == ref)) == CaseStatus.VERIFYING
        calls.append((target_ids, actor))
        return "started"

    app.extensions["tmsi.verify_dispatch"] = fake_dispatch
    email = signed_in(client, factory, "analyst")
    case = _case(factory, ref)
    response, _ = _act(client, ref, "verify", targets=str(case.targets[0].id))
    assert "Verification requested for 1 target(s). (started)" in response.text
    assert calls == [([case.targets[0].id], email)]
    assert [e.action for e in _events(factory, ref)][-2:] == ["case.verify_requested", "case.status"]


def test_partial_delisting_splits_the_listing(client, factory):
    ref = make_case(factory, targets=("203.0.113.0/29",), listings=("203.0.113.0/24",))
    signed_in(client, factory, "analyst")
    case = _case(factory, ref)
    response, _ = _act(
        client, ref, "delist", targets=str(case.targets[0].id), only="203.0.113.5", reason="ok"
    )
    assert "Delisted 203.0.113.5/32." in response.text
    with factory() as db:
        active = sorted(db.scalars(select(Listing.network).where(Listing.active.is_(True))))
        assert "203.0.113.5/32" not in active and "203.0.113.0/24" not in active
        assert "203.0.113.4/32" in active and "203.0.113.128/25" in active and len(active) == 8
        assert db.scalars(select(Delisting.network)).all() == ["203.0.113.5/32"]
        case = cases.get_by_reference(db, ref)
        assert case.status == CaseStatus.DELISTED and case.resolution == Resolution.PARTIALLY_DELISTED
        assert case.targets[0].status != TargetStatus.DELISTED
    bad, _ = _act(client, ref, "delist", targets=str(case.targets[0].id), only="198.51.100.1")
    assert "is not inside a selected target" in bad.text
    whole, _ = _act(client, ref, "delist", targets=str(case.targets[0].id))
    assert "Delisted 203.0.113.0/29." in whole.text
    with factory() as db:
        case = cases.get_by_reference(db, ref)
        assert case.resolution == Resolution.DELISTED and case.targets[0].status == TargetStatus.DELISTED
        assert "203.0.113.8/29" in db.scalars(select(Listing.network).where(Listing.active.is_(True))).all()
    actions = [e.action for e in _events(factory, ref)]
    assert actions.count("target.delisted") == 2


def test_reject_ask_close_reopen_split(client, factory):
    ref = make_case(factory, targets=("203.0.113.1/32", "203.0.113.2/32"))
    signed_in(client, factory, "analyst")
    response, _ = _act(client, ref, "ask", question="Which range?")
    assert "awaits the requester" in response.text
    case = _case(factory, ref)
    response, _ = _act(client, ref, "split", targets=str(case.targets[1].id))
    assert "Split into the new case" in response.text
    response, _ = _act(client, ref, "reject", reason="generic rDNS <b>still</b>", send="1")
    assert "Rejected and the reply queued." in response.text
    response, _ = _act(client, ref, "close")
    assert "Case closed." in response.text
    response, _ = _act(client, ref, "reopen")
    assert "Case reopened." in response.text
    with factory() as db:
        case = cases.get_by_reference(db, ref)
        assert case.status == CaseStatus.NEW and len(case.targets) == 1
        rows = db.scalars(select(OutboxMessage).where(OutboxMessage.case_id == case.id)).all()
        assert [r.template_key for r in rows] == ["ask_information", "rejected"]
        new = db.scalars(select(Case).where(Case.reference != ref)).one()
        assert [t.network for t in new.targets] == ["203.0.113.2/32"]
    actions = [e.action for e in _events(factory, ref)]
    for expected in ("reply.queued", "case.split", "case.status"):
        assert expected in actions


def test_reply_compose_preview_send_and_header_injection(client, factory):
    ref = make_case(factory, subject="Please delist 203.0.113.7")
    signed_in(client, factory, "analyst")
    compose = client.get(f"/cases/{ref}?reply=ask_information")
    assert (
        compose.status_code == 200
        and 'id="reply-body"' in compose.text
        and "Send</button>" not in compose.text
    )
    fields = form_fields(compose.text, f"/cases/{ref}/reply")
    data = {**fields, "to": "noc@isp.example", "subject": "Re: Please delist", "body": "Which range, please?"}
    preview = client.post(f"/cases/{ref}/reply", data={**data, "op": "preview"})
    assert (
        preview.status_code == 200
        and f"Re: Please delist [{ref}]" in preview.text
        and 'id="send-button"' in preview.text
    )
    bad = client.post(
        f"/cases/{ref}/reply", data={**data, "subject": "hi\r\nBcc: victim@example.test", "op": "send"}
    )
    assert bad.status_code == 400 and "line break" in bad.text and "Which range, please?" in bad.text
    bad_to = client.post(
        f"/cases/{ref}/reply", data={**data, "to": "a@example.test\nBcc: b@example.test", "op": "send"}
    )
    assert bad_to.status_code == 400 and "refused" in bad_to.text
    sent = client.post(f"/cases/{ref}/reply", data={**data, "op": "send"}, follow_redirects=True)
    assert "Reply queued in the outbox." in sent.text
    again = client.post(f"/cases/{ref}/reply", data={**data, "op": "send"}, follow_redirects=True)
    assert "already submitted" in again.text
    with factory() as db:
        rows = db.scalars(select(OutboxMessage)).all()
        assert len(rows) == 1 and rows[0].subject == f"Re: Please delist [{ref}]"
        assert b"Which range, please?" in rows[0].raw and not rows[0].automatic


def test_failed_send_is_visible_and_retried(client, factory):
    ref = make_case(factory)
    signed_in(client, factory, "analyst")
    _act(client, ref, "ask", question="More?")
    with unit_of_work(factory) as db:
        row = db.scalar(select(OutboxMessage))
        row.status, row.attempts, row.last_error = (
            OutboxStatus.FAILED,
            3,
            "550 5.1.1 <noc@isp.example>: unknown",
        )
        row_id = row.id
    page = client.get(f"/cases/{ref}")
    assert "550 5.1.1 &lt;noc@isp.example&gt;: unknown" in page.text and "Retry now" in page.text
    response, _ = _act(client, ref, "retry", outbox=str(row_id))
    assert "sent again now" in response.text
    with factory() as db:
        row = db.get(OutboxMessage, row_id)
        assert row.status == OutboxStatus.PENDING and row.next_attempt_at <= utcnow()
    assert "reply.retry" in [e.action for e in _events(factory, ref)]


@pytest.mark.parametrize("action", ["note", "assign", "verify", "delist", "reject", "close", "spam"])
def test_auditor_cannot_act(client, factory, action):
    ref = make_case(factory)
    signed_in(client, factory, "auditor")
    token = csrf_from(client.get(f"/cases/{ref}").text)
    assert client.post(f"/cases/{ref}/action/{action}", data={"csrf_token": token}).status_code == 403


def test_unknown_action_is_404(client, factory):
    ref = make_case(factory)
    signed_in(client, factory, "analyst")
    token = csrf_from(client.get(f"/cases/{ref}").text)
    assert client.post(f"/cases/{ref}/action/explode", data={"csrf_token": token}).status_code == 404


def test_dispatch_uses_the_task_queue_or_a_thread(settings, factory, monkeypatch):
    import tmsi.jobs
    import tmsi.services.verify
    from tmsi.services import decide

    queued, ran = [], []
    monkeypatch.setattr(tmsi.jobs, "request_verification", lambda st, target_id: queued.append(target_id))
    settings.huey_storage = "sqlite"
    assert (
        decide.dispatch_verification(settings, factory, [3, 4], "a@example.test") == "queued for the workers"
    )
    assert queued == [3, 4]
    done = __import__("threading").Event()

    def fake_job(st, fac, target_id, trigger, actor):
        ran.append((target_id, trigger, actor))
        done.set()

    monkeypatch.setattr(tmsi.services.verify, "job_verify_target", fake_job)
    settings.huey_storage = "memory"
    assert decide.dispatch_verification(settings, factory, [5], "a@example.test") == "started"
    assert done.wait(5) and ran == [(5, "manual", "a@example.test")]


def test_case_page_shows_each_authority_check_escaped(client, factory):
    ref = make_case(factory, targets=("203.0.113.0/30",))
    with unit_of_work(factory) as db:
        case = cases.get_by_reference(db, ref)
        case.authority_result = CheckResult.FAIL
        case.authority_evidence = {
            "result": "fail",
            "sender": "noc@isp.example",
            "flags": ["lookalike sender domain <b>"],
            "checks": [
                "DMARC: none for isp.example",
                "PTR registered domain: other.example <script>x</script>",
            ],
            "targets": [{"network": "203.0.113.0/30", "result": "fail", "via": "", "reasons": ["no match"]}],
        }
    signed_in(client, factory, "analyst")
    html = client.get(f"/cases/{ref}").get_data(as_text=True)
    assert "<li>DMARC: none for isp.example</li>" in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html and "<script>x</script>" not in html
    assert 'id="authority-flags"' in html and "lookalike sender domain &lt;b&gt;" in html
    assert 'id="authority-targets"' in html and "no match" in html


def test_case_page_keeps_each_targets_checks_and_runs_apart_and_bounded(client, factory):
    from datetime import timedelta

    from tmsi.web import ui

    ref = make_case(factory, targets=("203.0.113.0/30", "198.51.100.7/32"), listings=("203.0.113.0/24",))
    other = make_case(factory, targets=("192.0.2.1/32",))
    now = utcnow()
    with unit_of_work(factory) as db:
        case = cases.get_by_reference(db, ref)
        merged = cases.get_by_reference(db, other)
        assert case is not None and merged is not None
        merged.merged_into_id = case.id
        first, second = case.targets
        for n in range(ui.RUNS_PER_TARGET + 2):
            db.add(
                VerificationRun(
                    case_id=case.id,
                    target_id=first.id,
                    network=first.network,
                    summary={},
                    status=RunStatus.DONE,
                    total=4,
                    done=4,
                    requested_by=f"run-{n}@example.test",
                )
            )
        for n in range(ui.CHECK_HISTORY + 5):
            db.add(
                DnsCheck(
                    target_id=first.id,
                    address=f"203.0.113.{n % 2}",
                    version=4,
                    address_key=bytes([203, 0, 113, n % 2]),
                    result=CheckResult.FAIL,
                    name_verdict=NameVerdict.GENERIC,
                    ptr_names=[f"old-{n}.isp.example."],
                    reasons=[],
                    evidence={},
                    checked_at=now - timedelta(minutes=100 - n),
                )
            )
        db.add(
            DnsCheck(
                target_id=second.id,
                address="198.51.100.7",
                version=4,
                address_key=bytes([198, 51, 100, 7]),
                result=CheckResult.PASS,
                name_verdict=NameVerdict.STATIC,
                ptr_names=["mail.isp.example."],
                reasons=[],
                evidence={},
                checked_at=now,
            )
        )
        author = db.scalars(select(Case.assignee_id)).first()
        db.add(CaseNote(case_id=case.id, author_id=author, body="a note by nobody in particular"))
    signed_in(client, factory, "analyst")
    html = client.get(f"/cases/{ref}").text
    first_start = html.index('id="target-')
    second_start = html.index('id="target-', first_start + 1)
    first_row = html[first_start:second_start]
    second_row = html[second_start : html.index("</tbody>", second_start)]
    # Newest check per address first, history and runs cut at their limits, no target shows another's.
    last = ui.CHECK_HISTORY + 4
    assert f"old-{last}.isp.example." in first_row and f"old-{last - 1}.isp.example." in first_row
    assert f"History of checks ({ui.CHECK_HISTORY})" in first_row and "old-0.isp.example." not in first_row
    assert f"Runs ({ui.RUNS_PER_TARGET})" in first_row and "run-0@example.test" not in first_row
    assert f"run-{ui.RUNS_PER_TARGET + 1}@example.test" in first_row
    assert "mail.isp.example." in second_row and "old-" not in second_row and "Runs (" not in second_row
    assert "mail.isp.example." not in first_row
    assert "a note by nobody in particular" in html and "system ·" in html
    merged_page = client.get(f"/cases/{other}").text
    assert f">{ref}</a></dd>" in merged_page  # "Merged into" links to the surviving case


def _listings_shown(html: str) -> dict[str, list[str]]:
    """The listings the case page shows in each target's row, by the target's network."""
    return {
        network: re.findall(r"<li>(\S+) — ", cell)
        for network, cell in re.findall(
            r'<td class="network">(\S+?)(?:<| ).*?<td class="coverage">(.*?)</td>', html, re.S
        )
    }


def test_each_target_lists_exactly_its_overlapping_active_listings(client, factory):
    """All targets' listings are read at once (one statement on PostgreSQL): each target still shows only
    the active listings covering or inside it, in address order, and nothing of the other targets."""
    ref = make_case(
        factory,
        targets=("198.51.100.0/28", "198.51.100.64/30", "2001:db8:7::/48", "192.0.2.9/32", "192.0.2.77/32"),
        listings=(
            "198.51.100.0/24",  # covers the first two targets
            "198.51.100.8/29",  # inside the first
            "198.51.100.4/30",  # inside the first, withdrawn below
            "198.51.100.64/26",  # covers the second: a supernet that ends inside a byte
            "198.51.100.68/30",  # next to the second: no overlap
            "2001:db8::/32",  # covers the IPv6 target
            "2001:db8:6::/47",  # covers it too, ending inside a byte
            "2001:db8:7:1::/64",  # inside it
            "192.0.2.76/31",  # covers the last target, not the one before
        ),
    )
    with unit_of_work(factory) as db:
        withdrawn = db.scalars(select(Listing).where(Listing.network == "198.51.100.4/30")).one()
        withdrawn.active = False
    signed_in(client, factory, "analyst")
    shown = _listings_shown(client.get(f"/cases/{ref}").text)
    assert shown == {
        "198.51.100.0/28": ["198.51.100.0/24", "198.51.100.8/29"],
        "198.51.100.64/30": ["198.51.100.0/24", "198.51.100.64/26"],
        "2001:db8:7::/48": ["2001:db8::/32", "2001:db8:6::/47", "2001:db8:7:1::/64"],
        "192.0.2.9/32": [],
        "192.0.2.77/32": ["192.0.2.76/31"],
    }


def test_covering_listings_of_the_shortest_length_and_a_version_with_none(client, factory):
    """Covering CIDRs are probed from the shortest active listing's length on: one of exactly that length
    is found, a withdrawn shorter one neither counts nor shows, and a version with no listings at all
    shows none (the shortest length is then unknown)."""
    ref = make_case(
        factory,
        targets=("203.0.113.77/32", "2001:db8:9::/48"),
        listings=("203.0.113.0/24", "203.0.113.64/26", "192.0.0.0/8", "198.51.100.0/24"),
    )
    with unit_of_work(factory) as db:
        withdrawn = db.scalars(select(Listing).where(Listing.network == "192.0.0.0/8")).one()
        withdrawn.active = False
    signed_in(client, factory, "analyst")
    shown = _listings_shown(client.get(f"/cases/{ref}").text)
    assert shown == {"203.0.113.77/32": ["203.0.113.0/24", "203.0.113.64/26"], "2001:db8:9::/48": []}


def test_case_page_listings_equal_the_overlap_look_up(factory):
    """The case page reads its targets' listings with its other sections (PostgreSQL: the supernet keys
    computed in SQL); for random nested listings and targets of every size it finds exactly what
    find_overlapping_rows_many finds, in its order."""
    rng = random.Random(7)
    v4, v6 = ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("2001:db8:5::/48")

    def random_net(base: Any, low: int, high: int) -> str:
        plen = rng.randint(low, high)
        host_bits = base.max_prefixlen - plen
        offset = rng.randrange(base.num_addresses) >> host_bits << host_bits
        return str(ipaddress.ip_network((int(base.network_address) + offset, plen)))

    listed = {random_net(v4, 24, 32) for _ in range(40)} | {random_net(v6, 48, 128) for _ in range(40)}
    targets = {random_net(v4, 24, 32) for _ in range(25)} | {random_net(v6, 48, 128) for _ in range(25)}
    ref = make_case(factory, targets=tuple(sorted(targets)), listings=tuple(sorted(listed)))
    with unit_of_work(factory) as db:
        case_id = db.scalars(select(Case.id).where(Case.reference == ref)).one()
        sections = ui._case_sections(db, case_id)
        views = ui._targets_view(db, sections)
        expected = find_overlapping_rows_many(db, [ipaddress.ip_network(t) for t in targets])
    assert len(views) == len(targets)
    with_listings = 0
    for view in views:
        shown = [(row.network, row.reason) for row in view["listings"]]
        assert shown == [(row.network, row.reason) for row in expected[view["target"].network]]
        with_listings += bool(shown)
    assert with_listings >= 10  # the comparison covered targets with listings, not only empty ones


def test_every_form_of_the_case_page_has_its_own_idempotency_token(client, factory):
    """One random draw per page, numbered per form: distinct within a page and across loads, and plain
    tokens (kept as sent, not hashed)."""
    ref = make_case(factory)
    signed_in(client, factory, "analyst")
    first = re.findall(r'name="idem" value="([^"]+)"', client.get(f"/cases/{ref}").text)
    second = re.findall(r'name="idem" value="([^"]+)"', client.get(f"/cases/{ref}").text)
    assert len(first) >= 7 and len(set(first)) == len(first)
    assert not set(first) & set(second)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,23}", token) for token in first + second)


@pytest.mark.parametrize(
    "path",
    [
        "/cases/{ref}",
        "/cases/{ref}/progress.json",
        "/cases",
        "/mail",
        "/api/v1/cases/{ref}",
        "/api/v1/listings?ip=192.0.2.1",
    ],
)
def test_a_read_page_takes_one_read_connection_and_no_transaction(app, client, factory, path):
    """Signing in and the page share the request's one read connection (the read engine's pool, in
    autocommit); the transaction pool is not touched, and the connection goes back when the page ends."""
    from sqlalchemy import event

    from tmsi.app import Database

    ref = make_case(factory)
    signed_in(client, factory, "analyst")
    database: Database = app.extensions["tmsi.db"]
    checkouts = {"reads": 0, "writes": 0, "back": 0}

    def counter(name: str) -> Any:
        def count(*_args: Any) -> None:
            checkouts[name] += 1

        return count

    listeners = [
        (database.read_engine, "checkout", counter("reads")),
        (database.read_engine, "checkin", counter("back")),
        (database.engine, "checkout", counter("writes")),
    ]
    for engine, name, fn in listeners:
        event.listen(engine, name, fn)
    try:
        page = client.get(path.format(ref=ref))
    finally:
        for engine, name, fn in listeners:
            event.remove(engine, name, fn)
    assert page.status_code == 200
    assert checkouts == {"reads": 1, "writes": 0, "back": 1}


def test_the_action_menus_list_assignees_templates_and_resolutions_escaped(client, factory):
    """The assignee, reply-template and resolution menus (rendered once per distinct list and choice in a
    process): every active assignable user and stored template, hostile titles escaped, the template
    being composed selected."""
    from tmsi.models import ReplyTemplate
    from tmsi.services import replies

    ref = make_case(factory)
    email = signed_in(client, factory, "analyst")
    with unit_of_work(factory) as db:
        replies.ensure_templates(db)
        db.scalars(select(ReplyTemplate).where(ReplyTemplate.key == "rejected")).one().title = HOSTILE
    with factory() as db:
        keys = sorted(db.scalars(select(ReplyTemplate.key)))
    page = client.get(f"/cases/{ref}").text

    def select_menu(marker: str) -> str:
        start = page.index(marker)
        return page[start : page.index("</select>", start)]

    assign = select_menu('id="assign-select"')
    assert f">{email}</option>" in assign and 'value="me"' in assign
    menu = select_menu('id="reply-template"')
    assert re.findall(r'<option value="([^"]+)"', menu) == keys
    assert "<script>" not in menu and "&lt;script&gt;" in menu and " selected" not in menu
    close = select_menu('name="resolution"')
    assert re.findall(r'<option value="([^"]*)"', close) == ["", *(r.value for r in Resolution)]
    composing = client.get(f"/cases/{ref}?reply=delisted").text
    menu = composing[composing.index('id="reply-template"') :]
    assert '<option value="delisted" selected>' in menu[: menu.index("</select>")]


def test_before_any_template_is_stored_the_menu_offers_the_default_templates(client, factory):
    from tmsi.models import ReplyTemplate
    from tmsi.services import replies

    ref = make_case(factory)
    signed_in(client, factory, "analyst")
    with factory() as db:
        assert not db.scalars(select(ReplyTemplate.key)).all()
    page = client.get(f"/cases/{ref}").text
    menu = page[page.index('id="reply-template"') :]
    offered = re.findall(r'<option value="([^"]+)"', menu[: menu.index("</select>")])
    assert offered == list(replies.default_templates())
