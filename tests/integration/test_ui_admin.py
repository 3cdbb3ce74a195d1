"""Reply templates (lead edits, live preview in the sandbox), users (admin), audit log (read-only)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.integration.ui_support import csrf_from, make_case, signed_in
from tmsi.models import AuditEvent, ReplyTemplate, Role, User

pytestmark = pytest.mark.integration


def test_templates_are_listed_for_everyone_and_edited_by_leads(client, factory):
    ref = make_case(factory, subject="Delist please")
    signed_in(client, factory, "analyst", "ana@example.test")
    listing = client.get("/templates")
    assert (
        listing.status_code == 200 and "acknowledgement" in listing.text and "still_failing" in listing.text
    )
    page = client.get(f"/templates/acknowledgement?case={ref}")
    assert page.status_code == 200 and f"opened case {ref}" in page.text and "Save" not in page.text
    denied = client.post(
        "/templates/acknowledgement",
        data={"csrf_token": csrf_from(page.text), "op": "save", "subject": "x", "body": "y"},
    )
    assert denied.status_code == 403


def test_lead_saves_a_template_and_a_broken_one_is_refused(client, factory):
    ref = make_case(factory, subject="Delist please")
    signed_in(client, factory, "lead", "lead@example.test")
    page = client.get("/templates/rejected")
    token = csrf_from(page.text)
    base = {"csrf_token": token, "case": ref}
    broken = client.post(
        "/templates/rejected",
        data={
            **base,
            "op": "save",
            "subject": "Re: {{ case.subject }}",
            "body": "{{ case.__class__.__mro__ }} {% for %}",
        },
    )
    assert broken.status_code == 400 and "template error" in broken.text
    sneaky = client.post(
        "/templates/rejected",
        data={
            **base,
            "op": "preview",
            "subject": "x",
            "body": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        },
    )
    assert sneaky.status_code == 400 and "template error" in sneaky.text
    saved = client.post(
        "/templates/rejected",
        data={
            **base,
            "op": "save",
            "subject": "Re: {{ case.subject }}",
            "body": "Sorry {{ case.reference }}: {{ extra.reason }}",
        },
        follow_redirects=True,
    )
    assert "Template rejected saved." in saved.text and f"Sorry {ref}: (reason)" in saved.text
    with factory() as db:
        tpl = db.scalar(select(ReplyTemplate).where(ReplyTemplate.key == "rejected"))
        assert (
            tpl.body == "Sorry {{ case.reference }}: {{ extra.reason }}"
            and tpl.updated_by == "lead@example.test"
        )
        event = db.scalar(select(AuditEvent).where(AuditEvent.action == "template.updated"))
        assert event.after["body"] == tpl.body and "extra.reason" in event.before["body"]
    assert client.post("/templates/nope", data={**base, "op": "save"}).status_code == 404


def test_live_preview_endpoint(client, factory):
    ref = make_case(factory, subject="<b>hi</b>")
    signed_in(client, factory, "auditor")
    token = csrf_from(client.get("/templates").text)
    ok = client.post(
        "/templates/preview",
        json={"subject": "Re: {{ case.subject }}", "body": "{{ case.reference }}", "case": ref},
        headers={"X-CSRFToken": token},
    )
    assert ok.status_code == 200 and ok.json == {
        "ok": True,
        "subject": "Re: <b>hi</b>",
        "body": ref,
        "reference": ref,
    }
    err = client.post(
        "/templates/preview",
        json={"subject": "", "body": "{{ nope.x }}", "case": ref},
        headers={"X-CSRFToken": token},
    )
    assert err.json["ok"] is False and "undefined" in err.json["error"]
    missing = client.post(
        "/templates/preview", json={"body": "x", "case": "TMSI-1999-000001"}, headers={"X-CSRFToken": token}
    )
    assert missing.json["ok"] is False and "no case" in missing.json["error"]
    assert client.post("/templates/preview", json={"body": "x"}).status_code == 400  # CSRF header required
    for not_an_object in ([1], "x", 1):
        refused = client.post("/templates/preview", json=not_an_object, headers={"X-CSRFToken": token})
        assert refused.status_code == 400 and refused.json["ok"] is False


@pytest.mark.parametrize("body", ["{{ 1 / 0 }}", "{{ 'x' * 10**9 }}", "{{ 2 ** 100000 }}", "{{ 'a' + 1 }}"])
def test_live_preview_of_a_template_that_fails_says_why(client, factory, body):
    ref = make_case(factory)
    signed_in(client, factory, "lead")
    token = csrf_from(client.get("/templates").text)
    answer = client.post(
        "/templates/preview", json={"subject": "s", "body": body, "case": ref}, headers={"X-CSRFToken": token}
    )
    assert answer.status_code == 200
    assert answer.json["ok"] is False and answer.json["error"].startswith("template error")


def test_admin_manages_users_and_tokens(client, factory):
    signed_in(client, factory, "admin", "root@example.test")
    page = client.get("/users")
    token = csrf_from(page.text)
    created = client.post(
        "/users",
        data={
            "csrf_token": token,
            "op": "create",
            "email": "New@Example.test",
            "role": "analyst",
            "password": "a good long password",
        },
        follow_redirects=True,
    )
    assert "User new@example.test created." in created.text
    with factory() as db:
        uid = db.scalar(select(User.id).where(User.email == "new@example.test"))
    client.post("/users", data={"csrf_token": token, "op": "role", "user": uid, "role": "lead"})
    issued = client.post("/users", data={"csrf_token": token, "op": "token", "user": uid})
    assert 'id="new-token">tmsi_' in issued.text
    client.post("/users", data={"csrf_token": token, "op": "disable", "user": uid})
    dup = client.post(
        "/users",
        data={"csrf_token": token, "op": "create", "email": "new@example.test", "role": "analyst"},
        follow_redirects=True,
    )
    assert "already exists" in dup.text
    with factory() as db:
        root = db.scalar(select(User.id).where(User.email == "root@example.test"))
    selfish = client.post(
        "/users", data={"csrf_token": token, "op": "disable", "user": root}, follow_redirects=True
    )
    assert "cannot disable yourself" in selfish.text
    with factory() as db:
        user = db.get(User, uid)
        assert user.role == Role.LEAD and not user.active and user.tokens[0].revoked_at is not None
        actions = db.scalars(
            select(AuditEvent.action).where(AuditEvent.object_type.in_(["user", "api_token"]))
        ).all()
        for expected in ("user.created", "user.role", "token.issued", "user.disabled", "token.revoked"):
            assert expected in actions


def test_audit_page_filters(client, factory):
    ref = make_case(factory)
    make_case(factory, targets=("198.51.100.1/32",))
    signed_in(client, factory, "auditor", "aud@example.test")
    all_events = client.get("/audit")
    assert (
        all_events.status_code == 200 and "case.opened" in all_events.text and "auth.login" in all_events.text
    )
    only = client.get(f"/audit?case={ref}")
    assert only.text.count("case.opened") == 1
    assert "auth.login" not in client.get("/audit?action=case.").text
    assert "case.opened" not in client.get("/audit?actor=aud@example.test").text
    assert "case.opened" not in client.get("/audit?until=2000-01-01").text
    bad = client.get("/audit?since=yesterday")
    assert bad.status_code == 400 and "use a date" in bad.text
