"""The JSON case API: OpenAPI document (valid 3.1, every route exists, responses match), tokens, actions."""

from __future__ import annotations

import re

import jsonschema
import pytest
from openapi_spec_validator import validate
from sqlalchemy import select

from tests.integration.ui_support import make_case, make_user, token_for
from tmsi.models import CaseNote
from tmsi.web.openapi import openapi_document

pytestmark = pytest.mark.integration


@pytest.fixture
def bot(factory):
    make_user(factory, "bot@example.test", "analyst")
    return {"Authorization": f"Bearer {token_for(factory, 'bot@example.test')}"}


def _check(doc, name, instance):
    schema = {**doc["components"]["schemas"][name], "components": doc["components"]}
    jsonschema.Draft202012Validator(schema).validate(instance)


def test_openapi_document_is_valid_and_every_route_exists(app, client):
    served = client.get("/api/v1/openapi.json")
    assert served.status_code == 200
    doc = served.json
    assert doc == openapi_document() and doc["openapi"] == "3.1.0"
    validate(doc)  # the OpenAPI 3.1 meta-schema
    rules = {
        (re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", r.rule), m)
        for r in app.url_map.iter_rules()
        for m in r.methods
    }
    for path, operations in doc["paths"].items():
        for method in operations:
            assert (path, method.upper()) in rules, (method, path)


def test_list_and_get_match_the_documented_schemas(client, factory, bot):
    ref = make_case(factory)
    doc = openapi_document()
    listing = client.get("/api/v1/cases?status=all&per_page=10", headers=bot)
    assert listing.status_code == 200 and listing.json["total"] == 1
    _check(doc, "CaseList", listing.json)
    detail = client.get(f"/api/v1/cases/{ref}", headers=bot)
    _check(doc, "CaseDetail", detail.json)
    assert detail.json["targets"][0]["network"] == "203.0.113.0/29"
    assert detail.json["timeline"][0]["action"] == "case.opened"
    missing = client.get("/api/v1/cases/TMSI-2026-999999", headers=bot)
    assert missing.status_code == 404
    _check(doc, "Error", missing.json)
    bad = client.get("/api/v1/cases?net=nonsense", headers=bot)
    assert bad.status_code == 400 and bad.json["error"] == "invalid_filter"


def test_actions_with_version_and_idempotency(client, factory, bot):
    ref = make_case(factory)
    doc = openapi_document()
    version = client.get(f"/api/v1/cases/{ref}", headers=bot).json["version"]
    headers = {**bot, "Idempotency-Key": "note-1"}
    done = client.post(
        f"/api/v1/cases/{ref}/note", json={"body": "from the API", "version": version}, headers=headers
    )
    assert done.status_code == 200, done.json
    _check(doc, "ActionResult", done.json)
    assert done.json["case"]["version"] > version
    again = client.post(f"/api/v1/cases/{ref}/note", json={"body": "from the API"}, headers=headers)
    assert again.status_code == 409 and again.json["error"] == "already_done"
    stale = client.post(
        f"/api/v1/cases/{ref}/assign", json={"assignee": "me", "version": version}, headers=bot
    )
    assert stale.status_code == 409 and stale.json["error"] == "stale"
    with factory() as db:
        assert len(db.scalars(select(CaseNote)).all()) == 1
    assigned = client.post(f"/api/v1/cases/{ref}/assign", json={"assignee": "bot@example.test"}, headers=bot)
    assert assigned.json["case"]["assignee"] is None or assigned.status_code == 200
    assert client.get(f"/api/v1/cases/{ref}", headers=bot).json["assignee"] == "bot@example.test"
    injected = client.post(
        f"/api/v1/cases/{ref}/reply",
        json={"template": "ask_information", "subject": "x\r\nBcc: a@example.test"},
        headers=bot,
    )
    assert injected.status_code == 400 and injected.json["error"] == "header_injection"
    assert client.post(f"/api/v1/cases/{ref}/explode", json={}, headers=bot).status_code == 404
    assert (
        client.post(
            f"/api/v1/cases/{ref}/note", data="[1]", content_type="application/json", headers=bot
        ).status_code
        == 400
    )
    assert (
        client.post("/api/v1/cases/TMSI-2026-999999/note", json={"body": "x"}, headers=bot).status_code == 404
    )


def test_auditor_token_reads_but_cannot_act(client, factory):
    ref = make_case(factory)
    make_user(factory, "aud@example.test", "auditor")
    headers = {"Authorization": f"Bearer {token_for(factory, 'aud@example.test')}"}
    assert client.get(f"/api/v1/cases/{ref}", headers=headers).status_code == 200
    denied = client.post(f"/api/v1/cases/{ref}/note", json={"body": "x"}, headers=headers)
    assert denied.status_code == 403 and denied.json["error"] == "forbidden"


def test_every_action_through_the_api(app, client, factory, bot):
    calls = []
    app.extensions["tmsi.verify_dispatch"] = lambda settings, fac, ids, actor: calls.append(ids) or "started"
    ref = make_case(factory, targets=("203.0.113.0/30", "203.0.113.8/30"), listings=("203.0.113.0/24",))
    other = make_case(factory, targets=("203.0.113.64/32",), listings=())
    detail = client.get(f"/api/v1/cases/{ref}", headers=bot).json
    first, second = (t["id"] for t in detail["targets"])

    def act(action, **body):
        response = client.post(f"/api/v1/cases/{ref}/{action}", json=body, headers=bot)
        assert response.status_code == 200, (action, response.json)
        return response.json

    assert act("verify", targets=[first])["verification"] == "started" and calls == [[first]]
    assert act("merge", cases=[other])["message"].startswith(f"Merged {other}")
    new_ref = act("split", targets=[second])["data"]["new_case"]
    assert act("delist", targets=[first], only="203.0.113.1")["data"]["removed"] == ["203.0.113.1/32"]
    assert act("ask", question="Anything else?")["case"]["status"] == "awaiting_requester"
    reply = act("reply", template="ask_information", body="Plain body", subject="About your request")
    outbox_id = reply["data"]["outbox_id"]
    assert act("retry", outbox=outbox_id)["ok"]
    assert act("reject", reason="still generic", send=False)["case"]["status"] == "rejected"
    assert act("close", resolution="rejected")["case"]["status"] == "closed"
    assert act("reopen")["case"]["status"] == "new"
    assert act("spam")["case"]["resolution"] == "spam"
    final = client.get(f"/api/v1/cases/{ref}", headers=bot).json
    assert sorted(t["network"] for t in final["targets"]) == ["203.0.113.0/30", "203.0.113.64/32"]
    new = client.get(f"/api/v1/cases/{new_ref}", headers=bot).json
    assert [t["network"] for t in new["targets"]] == ["203.0.113.8/30"]
    actions = [e["action"] for e in final["timeline"]]
    for expected in (
        "case.verify_requested",
        "case.merged",
        "case.split",
        "target.delisted",
        "reply.queued",
        "reply.retry",
        "case.status",
    ):
        assert expected in actions, expected
    bad = client.post(f"/api/v1/cases/{ref}/close", json={"resolution": "bogus"}, headers=bot)
    assert bad.status_code == 400 and "unknown resolution" in bad.json["message"]
