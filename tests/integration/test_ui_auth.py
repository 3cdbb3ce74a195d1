"""Sign-in, sessions, CSRF, rate limit, security headers, roles on every route, API tokens, the users CLI."""

from __future__ import annotations

import re
import time

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from tests.integration.ui_support import (
    PASSWORD,
    csrf_from,
    login,
    make_case,
    make_user,
    signed_in,
    token_for,
)
from tmsi.db import unit_of_work
from tmsi.models import ApiToken, AuditEvent, User
from tmsi.services import users
from tmsi.web import auth

pytestmark = pytest.mark.integration


def test_password_is_argon2_and_login_sets_a_hardened_session(client, factory):
    make_user(factory, "ana@example.test", "analyst")
    with factory() as db:
        user = db.scalar(select(User).where(User.email == "ana@example.test"))
        assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash
    response = login(client, "ana@example.test")
    assert response.status_code == 302 and response.headers["Location"].endswith("/cases")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert client.get("/cases").status_code == 200
    with factory() as db:
        actions = db.scalars(select(AuditEvent.action).where(AuditEvent.actor == "ana@example.test")).all()
        assert "auth.login" in actions


def test_secure_cookie_when_configured(settings, factory):
    from tmsi import create_app

    settings.session_cookie_secure = True
    app = create_app(settings)
    make_user(factory, "sec@example.test", "analyst")
    response = login(app.test_client(), "sec@example.test")
    assert "Secure" in response.headers["Set-Cookie"]


def test_wrong_password_and_unknown_user_fail_the_same_way(client, factory):
    make_user(factory, "ana@example.test", "analyst")
    bad = login(client, "ana@example.test", "wrong password!")
    unknown = login(client, "nobody@example.test", "wrong password!")
    assert bad.status_code == unknown.status_code == 401
    assert "Unknown e-mail address or wrong password." in bad.text
    assert client.get("/cases").status_code == 302
    with factory() as db:
        assert db.scalar(select(User.failed_logins).where(User.email == "ana@example.test")) == 1


def test_login_is_rate_limited(client, factory):
    make_user(factory, "ana@example.test", "analyst")
    codes = [login(client, "ana@example.test", "bad password").status_code for _ in range(11)]
    assert codes[:10] == [401] * 10 and codes[10] == 429
    assert "Too many" in login(client, "ana@example.test").text


def test_missing_or_expired_csrf_is_a_clear_400_not_a_500(app, client, factory):
    make_user(factory, "ana@example.test", "analyst")
    missing = client.post("/login", data={"email": "ana@example.test", "password": PASSWORD})
    assert (
        missing.status_code == 400
        and "Form expired" in missing.text
        and "Nothing was changed" in missing.text
    )
    app.config["WTF_CSRF_TIME_LIMIT"] = 1
    token = csrf_from(client.get("/login").text)
    time.sleep(2.1)
    expired = client.post(
        "/login", data={"email": "ana@example.test", "password": PASSWORD, "csrf_token": token}
    )
    assert expired.status_code == 400 and "expired" in expired.text.lower()


def test_idle_timeout_ends_the_session(client, factory, settings):
    signed_in(client, factory, "analyst")
    with client.session_transaction() as sess:
        sess["seen"] = int(time.time()) - settings.session_idle_minutes * 60 - 5
    response = client.get("/cases")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert "inactivity" in client.get(response.headers["Location"]).text


def test_last_seen_moves_on_at_most_once_a_minute(client, factory):
    """An unchanged session is not re-signed on every page; once the last-seen time is a minute old it
    moves on, and the cookie (with its expiry) is sent again."""
    signed_in(client, factory, "analyst")
    client.get("/cases")  # the first page stores the CSRF token in the session
    recent = int(time.time()) - 30
    with client.session_transaction() as sess:
        sess["seen"] = recent
    response = client.get("/cases")
    assert response.status_code == 200 and "Set-Cookie" not in response.headers
    with client.session_transaction() as sess:
        assert sess["seen"] == recent
        sess["seen"] = int(time.time()) - auth.SEEN_STEP - 1
    response = client.get("/cases")
    assert response.status_code == 200 and "session=" in response.headers.get("Set-Cookie", "")
    with client.session_transaction() as sess:
        assert sess["seen"] >= int(time.time()) - 2


def test_disabled_user_and_changed_password_end_sessions(client, factory):
    signed_in(client, factory, "analyst", "ana@example.test")
    with unit_of_work(factory) as db:
        users.set_password(db, users.get_by_email(db, "ana@example.test"), "another password 1")
    assert client.get("/cases").status_code == 302
    login(client, "ana@example.test", "another password 1")
    assert client.get("/cases").status_code == 200
    with unit_of_work(factory) as db:
        users.set_active(db, users.get_by_email(db, "ana@example.test"), False)
    assert client.get("/cases").status_code == 302
    assert login(client, "ana@example.test", "another password 1").status_code == 401


def test_logout_needs_post_with_csrf(client, factory):
    signed_in(client, factory, "analyst")
    page = client.get("/logout")
    assert page.status_code == 200
    assert client.post("/logout").status_code == 400
    assert client.post("/logout", data={"csrf_token": csrf_from(page.text)}).status_code == 302
    assert client.get("/cases").status_code == 302


def test_next_parameter_cannot_redirect_elsewhere(client, factory):
    make_user(factory, "ana@example.test", "analyst")
    page = client.get("/login")
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        response = client.post(
            "/login",
            data={
                "email": "ana@example.test",
                "password": PASSWORD,
                "next": target,
                "csrf_token": csrf_from(page.text),
            },
        )
        assert response.headers["Location"] == "/cases", target
        client.post("/logout", data={"csrf_token": csrf_from(client.get("/logout").text)})
        page = client.get("/login")
    response = client.post(
        "/login",
        data={
            "email": "ana@example.test",
            "password": PASSWORD,
            "next": "/audit?x=1",
            "csrf_token": csrf_from(page.text),
        },
    )
    assert response.headers["Location"] == "/audit?x=1"


def test_security_headers_on_pages(client, factory):
    page = client.get("/login")
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "same-origin"
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert "Cache-Control" not in page.headers  # signed out: nothing personal on the page
    assert "<script>" not in page.text and "onclick" not in page.text  # all JS comes from static files
    signed_in(client, factory, "analyst")
    queue = client.get("/cases")
    assert queue.headers["Cache-Control"] == "no-store"  # signed in: never kept by a cache
    for name in ("Content-Security-Policy", "X-Content-Type-Options", "Cache-Control", "X-Frame-Options"):
        assert len(queue.headers.getlist(name)) == 1, name


def _ui_and_api_routes(app):
    out = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint.split(".")[0] not in {
            "ui",
            "api_cases",
            "mailbox",
            "dashboard",
        } or rule.endpoint in {
            "ui.static",
            "dashboard.static",  # the chart library's files, public like the style sheets
            "api_cases.openapi",
        }:
            continue
        url = rule.rule
        for arg, value in (
            ("<reference>", "TMSI-2026-000001"),
            ("<name>", "note"),
            ("<int:message_id>", "1"),
            ("<int:index>", "0"),
            ("<key>", "acknowledgement"),
            ("<action>", "note"),
        ):
            url = url.replace(arg, value)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            out.append((method, url))
    return out


def test_every_page_and_api_call_needs_a_signed_in_user(app, client):
    routes = _ui_and_api_routes(app)
    assert len(routes) >= 19
    app.config["WTF_CSRF_ENABLED"] = False  # so that the POSTs reach the role check
    for method, url in routes:
        response = client.open(url, method=method)
        if url.startswith("/api/"):
            assert response.status_code == 401, (method, url)
            assert response.json["error"] == "unauthorized"
        else:
            assert response.status_code == 302 and "/login" in response.headers["Location"], (method, url)


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        ("analyst", {"/cases", "/templates"}),
        ("lead", {"/cases", "/templates", "/audit"}),
        ("admin", {"/cases", "/templates", "/audit", "/users"}),
        ("auditor", {"/cases", "/templates", "/audit", "/users"}),
    ],
)
def test_pages_per_role(client, factory, role, allowed):
    signed_in(client, factory, role)
    for url in ("/cases", "/templates", "/audit", "/users"):
        response = client.get(url)
        assert response.status_code == (200 if url in allowed else 403), (role, url)
        if response.status_code == 403:
            assert "Forbidden" in response.text and "may not" in response.text


def test_auditor_changes_nothing(app, client, factory):
    ref = make_case(factory)
    signed_in(client, factory, "auditor")
    page = client.get(f"/cases/{ref}")
    assert page.status_code == 200 and "Add note" not in page.text
    token = csrf_from(page.text)
    for url in (
        f"/cases/{ref}/action/note",
        f"/cases/{ref}/reply",
        "/cases/bulk",
        "/users",
        "/templates/acknowledgement",
    ):
        response = client.post(
            url, data={"csrf_token": token, "body": "x", "refs": ref, "op": "spam", "subject": "x"}
        )
        assert response.status_code == 403, url
    with factory() as db:
        assert db.scalar(select(AuditEvent).where(AuditEvent.action == "case.note")) is None


def test_api_bearer_tokens(client, factory):
    ref = make_case(factory)
    make_user(factory, "bot@example.test", "analyst")
    token = token_for(factory, "bot@example.test")
    with factory() as db:
        stored = db.scalars(select(ApiToken.token_hash)).all()
        assert token not in stored and len(stored[0]) == 64
    ok = client.get("/api/v1/cases", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and ok.json["total"] == 1
    assert (
        client.get(f"/api/v1/cases/{ref}", headers={"Authorization": f"Bearer {token}x"}).status_code == 401
    )
    assert client.get("/api/v1/cases", headers={"Authorization": "Bearer not-a-token"}).status_code == 401
    with unit_of_work(factory) as db:
        row = db.scalar(select(ApiToken))
        assert row.last_used_at is not None
        users.revoke_token(db, row)
    assert client.get("/api/v1/cases", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_session_cookie_may_read_the_api_but_not_write(client, factory):
    ref = make_case(factory)
    signed_in(client, factory, "analyst")
    assert client.get(f"/api/v1/cases/{ref}").status_code == 200
    response = client.post(f"/api/v1/cases/{ref}/note", json={"body": "x"})
    assert response.status_code == 401 and response.json["error"] == "token_required"


def test_users_cli(settings, factory, monkeypatch):
    from tmsi.cli import main

    monkeypatch.setenv("TMSI_DATABASE_URL", settings.database_url)
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["users", "create", "Lead@Example.test", "--role", "lead", "--password-stdin"],
        input="a long enough password\n",
    )
    assert result.exit_code == 0, result.output
    assert "created lead@example.test (lead)" in result.output
    again = runner.invoke(
        main, ["users", "create", "lead@example.test", "--password-stdin"], input="x" * 12 + "\n"
    )
    assert again.exit_code != 0 and "already exists" in again.output
    short = runner.invoke(main, ["users", "create", "s@example.test", "--password-stdin"], input="short\n")
    assert short.exit_code != 0 and "at least" in short.output
    assert runner.invoke(main, ["users", "set-role", "lead@example.test", "admin"]).exit_code == 0
    token = runner.invoke(main, ["users", "token", "lead@example.test"])
    assert token.exit_code == 0 and re.fullmatch(r"tmsi_[A-Za-z0-9_-]{40,}\n", token.output)
    assert runner.invoke(main, ["users", "disable", "lead@example.test"]).exit_code == 0
    with factory() as db:
        user = users.get_by_email(db, "lead@example.test")
        assert user.role.value == "admin" and not user.active
        assert all(t.revoked_at is not None for t in user.tokens)
        assert users.user_for_token(db, token.output.strip()) is None
    assert runner.invoke(main, ["users", "token", "lead@example.test"]).exit_code != 0


def test_login_is_rate_limited_per_account_too(app, factory):
    make_user(factory, "ana@example.test", "analyst")
    codes = []
    for i in range(31):  # from 31 different addresses, against one account
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = f"192.0.2.{i + 1}"
        codes.append(login(client, "ana@example.test", "bad password").status_code)
    assert codes[:30] == [401] * 30 and codes[30] == 429
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "192.0.2.200"
    make_user(factory, "bob@example.test", "analyst")
    assert login(other, "bob@example.test").status_code == 302
