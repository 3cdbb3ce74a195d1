"""Ids and page numbers no database column holds, or digits ``int`` cannot read, in every place a person
or a client can type one: each is "no such row" or a clear refusal, never a 500.

Before, ``isdigit()`` let "²" through to ``int`` (ValueError) and let 20-digit numbers through to the
database (SQLite: OverflowError; PostgreSQL: bigint out of range); ``<int:...>`` routes and page
numbers passed any size on.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.ui_support import csrf_from, make_case, make_user, signed_in, token_for
from tmsi.domain.ids import MAX_ID, MAX_PAGE, parse_id, parse_page

pytestmark = pytest.mark.integration

HUGE = "99999999999999999999"  # > 2**63 - 1
BAD_IDS = [HUGE, str(MAX_ID + 1), "²", "١٢", "-1", "1.5", ""]


def test_parse_id_takes_ascii_digits_that_fit_a_64_bit_column() -> None:
    assert parse_id("42") == 42
    assert parse_id(" 7 ") == 7
    assert parse_id(str(MAX_ID)) == MAX_ID
    for text in BAD_IDS:
        assert parse_id(text) is None, text


def test_parse_page_holds_page_numbers_to_a_range() -> None:
    assert parse_page(None) == parse_page("") == 1
    assert parse_page("0") == parse_page("-5") == 1
    assert parse_page("3") == 3
    assert parse_page(HUGE) == MAX_PAGE
    with pytest.raises(ValueError):
        parse_page("abc")


@pytest.fixture
def admin(client: Any, factory: Any) -> str:
    return signed_in(client, factory, "admin")


@pytest.mark.parametrize(
    "path",
    [
        f"/cases?page={HUGE}",
        f"/cases?status=all&page={HUGE}",
        f"/mail?page={HUGE}",
        f"/audit?page={HUGE}",
        f"/mail/{HUGE}/raw",
        "/cases/{ref}/messages/" + HUGE + "/raw",
        "/cases/{ref}/messages/" + HUGE + "/html",
        "/cases/{ref}/messages/1/attachments/" + HUGE,
    ],
)
def test_pages_with_huge_numbers(client: Any, factory: Any, admin: str, path: str) -> None:
    ref = make_case(factory)
    response = client.get(path.format(ref=ref))
    assert response.status_code in (200, 404), response.status_code
    if "page=" in path:
        assert response.status_code == 200


@pytest.mark.parametrize("value", [HUGE, "²"])
def test_queue_assignee_filter_refuses_what_is_not_an_id(client: Any, admin: str, value: str) -> None:
    page = client.get(f"/cases?assignee={value}")
    assert page.status_code == 400
    assert "assignee is &#39;me&#39;, &#39;none&#39; or a user id" in page.text


@pytest.mark.parametrize("value", [HUGE, "²"])
def test_users_form_with_a_bad_user_or_token_id_is_not_found(
    client: Any, factory: Any, admin: str, value: str
) -> None:
    csrf = csrf_from(client.get("/users").text)
    no_user = client.post("/users", data={"op": "disable", "user": value, "csrf_token": csrf})
    assert no_user.status_code == 404
    user_id = make_user(factory, "other@example.test", "analyst")
    no_token = client.post(
        "/users", data={"op": "revoke", "user": str(user_id), "token": value, "csrf_token": csrf}
    )
    assert no_token.status_code == 404


@pytest.mark.parametrize("value", [HUGE, "²"])
def test_case_form_actions_with_bad_ids_are_refused_with_a_message(
    client: Any, factory: Any, admin: str, value: str
) -> None:
    ref = make_case(factory)
    csrf = csrf_from(client.get(f"/cases/{ref}").text)
    for name, data in (
        ("assign", {"assignee": value}),
        ("verify", {"targets": value}),
        ("note", {"body": "x", "version": value}),
    ):
        done = client.post(
            f"/cases/{ref}/action/{name}", data={**data, "csrf_token": csrf}, follow_redirects=True
        )
        assert done.status_code == 200, (name, done.status_code)
        assert "Not done:" in done.text, name
    bulk = client.post(
        "/cases/bulk",
        data={"op": "assign", "refs": ref, "assignee": value, "csrf_token": csrf},
        follow_redirects=True,
    )
    assert bulk.status_code == 200


@pytest.mark.parametrize("value", [HUGE, "²", int(HUGE)])
def test_api_actions_and_filters_with_bad_ids_get_400(client: Any, factory: Any, value: Any) -> None:
    make_user(factory, "bot@example.test", "lead")
    headers = {"Authorization": f"Bearer {token_for(factory, 'bot@example.test')}"}
    ref = make_case(factory)
    for name, body in (
        ("assign", {"assignee": value}),
        ("verify", {"targets": [value]}),
        ("note", {"body": "x", "version": value}),
    ):
        done = client.post(f"/api/v1/cases/{ref}/{name}", json=body, headers=headers)
        assert done.status_code == 400, (name, done.status_code, done.json)
        assert done.json["error"] == "not_done"
    listing = client.get(f"/api/v1/cases?assignee={value}", headers=headers)
    assert listing.status_code == 400 and listing.json["error"] == "invalid_filter"
    far = client.get(f"/api/v1/cases?page={HUGE}", headers=headers)
    assert far.status_code == 200 and far.json["cases"] == []
