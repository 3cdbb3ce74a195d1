"""Session cookies remembered once verified (tmsi.web.sessions): checked once per cookie text, and still
refused when altered, expired, or signed with a key the app no longer has."""

from __future__ import annotations

import time
from typing import Any

import pytest
from itsdangerous import URLSafeTimedSerializer

from tests.integration.ui_support import signed_in
from tmsi.web import sessions
from tmsi.web.sessions import VerifiedCookieSessions

pytestmark = pytest.mark.integration


def _cookie(client: Any) -> str:
    found = client.get_cookie("session")
    assert found is not None
    return str(found.value)


def _count_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = URLSafeTimedSerializer.loads

    def counting(self: Any, s: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(s)
        return original(self, s, *args, **kwargs)

    monkeypatch.setattr(URLSafeTimedSerializer, "loads", counting)
    return calls


def test_a_cookie_is_verified_once_and_then_remembered(app, client, factory, monkeypatch):
    assert isinstance(app.session_interface, VerifiedCookieSessions)
    email = signed_in(client, factory, "analyst")
    loads = _count_loads(monkeypatch)
    for _ in range(3):
        page = client.get("/cases")
        assert page.status_code == 200 and email in page.text
    assert loads == [_cookie(client)]  # the first request verified it; the next two did not


def test_an_altered_cookie_is_refused(app, client, factory):
    signed_in(client, factory, "analyst")
    good = _cookie(client)
    assert client.get("/cases").status_code == 200  # remembered now
    payload, timestamp, signature = good.rsplit(".", 2)
    forged_signature = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    for forged in (f"{payload}.{timestamp}.{forged_signature}", f"{payload}x.{timestamp}.{signature}"):
        client.set_cookie("session", forged)
        response = client.get("/cases")
        assert response.status_code == 302 and "/login" in response.headers["Location"]
    client.set_cookie("session", good)
    assert client.get("/cases").status_code == 200


def test_a_remembered_cookie_still_expires(app, client, factory, monkeypatch):
    signed_in(client, factory, "analyst")
    assert client.get("/cases").status_code == 200  # remembered now
    lifetime = app.permanent_session_lifetime.total_seconds()

    class Later:
        @staticmethod
        def time() -> float:
            return time.time() + lifetime + 5

    # Only the session interface's clock moves on (the idle check of signing in keeps the real one), so
    # a refusal here is the remembered cookie's own age test.
    monkeypatch.setattr(sessions, "time", Later)
    response = client.get("/cases")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_a_new_secret_key_refuses_cookies_signed_with_the_old(app, client, factory):
    signed_in(client, factory, "analyst")
    assert client.get("/cases").status_code == 200  # remembered under the old key
    app.secret_key = "a-rotated-secret"
    response = client.get("/cases")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_each_request_gets_its_own_copy_of_the_contents(app):
    interface = app.session_interface
    serializer = interface.get_signing_serializer(app)
    text = serializer.dumps({"uid": 7, "_flashes": [("info", "first")]})
    headers = {"Cookie": f"{app.config['SESSION_COOKIE_NAME']}={text}"}
    with app.test_request_context("/", headers=headers) as ctx:
        first = interface.open_session(app, ctx.request)
        first["_flashes"].append(("info", "added by this request"))
        first["uid"] = 8
    with app.test_request_context("/", headers=headers) as ctx:
        second = interface.open_session(app, ctx.request)
    assert second == {"uid": 7, "_flashes": [("info", "first")]}


def test_the_memory_is_bounded(app):
    interface = VerifiedCookieSessions(size=3)
    serializer = interface.get_signing_serializer(app)
    name = app.config["SESSION_COOKIE_NAME"]
    for uid in range(5):
        cookie = f"{name}={serializer.dumps({'uid': uid})}"
        with app.test_request_context("/", headers={"Cookie": cookie}) as ctx:
            assert interface.open_session(app, ctx.request) == {"uid": uid}
    assert len(interface._verified) == 3


def test_the_sign_in_cookie_already_carries_the_forms_csrf_secret(client, factory):
    """So the pages after signing in have nothing to add to the session: no new cookie per page (a client
    that keeps the sign-in cookie would otherwise be sent a freshly signed one with every page)."""
    signed_in(client, factory, "analyst")
    for _ in range(2):
        page = client.get("/cases")
        assert page.status_code == 200 and 'name="csrf_token"' in page.text
        assert "Set-Cookie" not in page.headers
