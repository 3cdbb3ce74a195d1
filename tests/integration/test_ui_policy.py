"""The leads' policy page and what the policy changes (automatic replies, automatic delisting)."""

from __future__ import annotations

from sqlalchemy import select

from tests.integration.ui_support import csrf_from, signed_in
from tmsi.db import unit_of_work
from tmsi.models import AuditEvent, PolicySetting
from tmsi.services import cases, policy, replies


def test_leads_change_policy_auditors_read_analysts_are_refused(client, factory):
    signed_in(client, factory, "analyst")
    assert client.get("/policy").status_code == 403
    auditor = client.application.test_client()
    signed_in(auditor, factory, "auditor")
    page = auditor.get("/policy")
    assert page.status_code == 200 and 'id="save-policy"' not in page.text
    assert (
        auditor.post("/policy", data={"csrf_token": csrf_from(page.text), "auto_delist": "yes"}).status_code
        == 403
    )

    lead = client.application.test_client()
    email = signed_in(lead, factory, "lead")
    page = lead.get("/policy")
    assert 'id="save-policy"' in page.text and 'href="/policy"' in page.text
    token = csrf_from(page.text)
    assert lead.post("/policy", data={"auto_delist": "yes"}).status_code == 400  # no CSRF token
    bad = lead.post("/policy", data={"csrf_token": token, "autoreply_per_sender_per_hour": "lots"})
    assert bad.status_code == 400 and "not a whole number" in bad.text
    ok = lead.post(
        "/policy", data={"csrf_token": token, "auto_delist": "yes", "autoreply_per_sender_per_hour": "1"}
    )
    assert ok.status_code == 302
    with factory() as db:
        assert {r.key: r.value["value"] for r in db.scalars(select(PolicySetting))} == {
            "auto_delist": True,
            "autoreply_per_sender_per_hour": 1,
        }
        events = db.scalars(select(AuditEvent).where(AuditEvent.action == "policy.changed")).all()
        assert {(e.object_id, e.actor, e.after["value"]) for e in events} == {
            ("auto_delist", email, True),
            ("autoreply_per_sender_per_hour", email, 1),
        }
    assert "set here" in lead.get("/policy").text


def test_policy_overrides_the_configured_rate_limit(factory, settings):
    settings.autoreply_per_sender_per_hour = 5
    with unit_of_work(factory) as db:
        policy.set_value(db, "autoreply_per_sender_per_hour", "1", actor="lead@example.test")
    with unit_of_work(factory) as db:
        assert policy.effective(db, settings).autoreply_per_sender_per_hour == 1
        assert settings.autoreply_per_sender_per_hour == 5  # the deployment's settings are untouched
        case = cases.open_case(db, subject="x", requester_email="noc@isp.example")
        sent = [replies.queue_reply(db, case, "acknowledgement", settings) for _ in range(2)]
        assert [row is not None for row in sent] == [True, False]
