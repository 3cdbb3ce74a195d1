"""A NUL character (0x00) or an unpaired surrogate anywhere a person or a client can put text is refused
with a 400 and a clear message. PostgreSQL stores no NUL in text and no database takes a surrogate, so
before this each of these reached the database as an error, a 500 (mail keeps such text replaced:
services.ingest)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from tests.integration.ui_support import csrf_from, make_case, make_user, signed_in, token_for
from tmsi.models import CaseNote, User
from tmsi.web.errors import BAD_TEXT_REFUSED, JSON_TOO_DEEP

pytestmark = pytest.mark.integration


@pytest.fixture
def bot(factory: Any) -> dict[str, str]:
    make_user(factory, "bot@example.test", "lead")
    return {"Authorization": f"Bearer {token_for(factory, 'bot@example.test')}"}


def _count(factory: Any, model: Any) -> int:
    with factory() as db:
        return int(db.scalar(select(func.count()).select_from(model)) or 0)


@pytest.mark.parametrize(
    ("action", "body"),
    [
        ("note", {"body": "a\x00b"}),
        ("reject", {"reason": "spam\x00"}),
        ("assign", {"assignee": "a\x00@example.test"}),
        ("reply", {"template": "ack", "subject": "s", "body": "b\x00"}),
        ("note", {"body": "ok", "extra": {"deep": ["x\x00"]}}),
        ("note", {"body": "ok", "k\x00": 1}),
        ("note", {"body": "\ud800"}),
        ("reject", {"reason": "half a pair: \udfff"}),
    ],
)
def test_api_action_bodies(client: Any, factory: Any, bot: dict[str, str], action: str, body: Any) -> None:
    ref = make_case(factory)
    notes = _count(factory, CaseNote)
    done = client.post(f"/api/v1/cases/{ref}/{action}", json=body, headers=bot)
    assert done.status_code == 400
    assert done.json == {"error": "bad_request", "message": BAD_TEXT_REFUSED}
    assert _count(factory, CaseNote) == notes


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/cases?q=a%00b",
        "/api/v1/cases?domain=isp%00.example",
        "/api/v1/cases/TMSI-2026-000001%00",
        "/api/v1/lookup?ip=192.0.2.1%00",
    ],
)
def test_api_paths_and_queries(client: Any, bot: dict[str, str], path: str) -> None:
    answer = client.get(path, headers=bot)
    assert answer.status_code == 400 and answer.json["message"] == BAD_TEXT_REFUSED


@pytest.mark.parametrize("path", ["/cases?q=a%00b", "/cases?domain=a%00", "/mail?q=%00", "/audit?q=%00"])
def test_pages(client: Any, factory: Any, path: str) -> None:
    signed_in(client, factory, "admin")
    page = client.get(path)
    assert page.status_code == 400 and BAD_TEXT_REFUSED in page.text


def test_public_lookup_and_sign_in(client: Any) -> None:
    assert client.get("/lookup?ip=192.0.2.1%00").status_code == 400
    csrf = csrf_from(client.get("/login").text)
    refused = client.post("/login", data={"email": "a\x00@example.test", "password": "x", "csrf_token": csrf})
    assert refused.status_code == 400 and BAD_TEXT_REFUSED in refused.text


def test_forms(client: Any, factory: Any) -> None:
    signed_in(client, factory, "admin")
    ref = make_case(factory)
    csrf = csrf_from(client.get("/users").text)
    users = _count(factory, User)
    created = client.post(
        "/users",
        data={
            "op": "create",
            "email": "new@example.test",
            "role": "analyst",
            "name": "N\x00",
            "csrf_token": csrf,
        },
    )
    assert created.status_code == 400 and _count(factory, User) == users
    note = client.post(f"/cases/{ref}/action/note", data={"body": "x\x00y", "csrf_token": csrf})
    assert note.status_code == 400 and _count(factory, CaseNote) == 0
    fine = client.post(f"/cases/{ref}/action/note", data={"body": "x y", "csrf_token": csrf})
    assert fine.status_code == 302 and _count(factory, CaseNote) == 1


@pytest.mark.parametrize("depth", [40, 100_000])
def test_json_nested_too_deeply(client: Any, factory: Any, bot: dict[str, str], depth: int) -> None:
    """Before, the JSON parser (or a walk over its result) ran out of stack: RecursionError, a 500."""
    ref = make_case(factory)
    headers = {**bot, "Content-Type": "application/json"}
    for body in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        answer = client.post(f"/api/v1/cases/{ref}/note", data=body, headers=headers)
        assert answer.status_code == 400 and answer.json["message"] == JSON_TOO_DEEP
