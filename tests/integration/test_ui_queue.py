"""The queue page and its service: filters, full-text and network search, counts, pagination, bulk actions."""

from __future__ import annotations

import ipaddress
import time

import pytest
from sqlalchemy import select

from tests.integration.ui_support import csrf_from, form_fields, make_case, make_user, signed_in
from tmsi.db import unit_of_work
from tmsi.models import Case, CaseStatus, CheckResult, Message, Resolution
from tmsi.services import queue

pytestmark = pytest.mark.integration


def _refs(html: str) -> list[str]:
    import re

    return re.findall(r'class="case-link">(TMSI-[0-9-]+)<', html)


def test_cases_overlapping_finds_supernets_subnets_and_equal(session):
    from tests.integration.ui_support import add_target
    from tmsi.services import cases

    made = {}
    for net in ("203.0.113.0/24", "203.0.113.8/29", "203.0.113.77/32", "198.51.100.0/24", "2001:db8:1::/48"):
        case = cases.open_case(session, subject=net, requester_email="noc@isp.example")
        add_target(session, case, net)
        made[net] = case.id

    def found(query: str) -> set[int]:
        return set(session.scalars(queue.cases_overlapping(ipaddress.ip_network(query))))

    assert found("203.0.113.9") == {made["203.0.113.0/24"], made["203.0.113.8/29"]}
    assert found("203.0.113.0/25") == {
        made["203.0.113.0/24"],
        made["203.0.113.8/29"],
        made["203.0.113.77/32"],
    }
    assert found("203.0.0.0/16") == {made[n] for n in ("203.0.113.0/24", "203.0.113.8/29", "203.0.113.77/32")}
    assert found("192.0.2.0/24") == set()
    assert found("2001:db8:1:2::1") == {made["2001:db8:1::/48"]}
    assert found("2001:db8::/32") == {made["2001:db8:1::/48"]}


def test_queue_filters_and_search(client, factory):
    a = make_case(
        factory,
        subject="Delist our pool",
        email="noc@isp.example",
        targets=("203.0.113.0/29",),
        waiting_hours=50,
        authority_result=CheckResult.PASS,
        verification_result=CheckResult.FAIL,
        search_text="customer mentions hostmaster ticket 4711",
    )
    b = make_case(
        factory,
        subject="blocked again",
        email="abuse@other.example",
        targets=("198.51.100.7/32",),
        listings=("198.51.100.0/24",),
        waiting_hours=2,
    )
    c = make_case(
        factory,
        subject="closed one",
        email="noc@isp.example",
        targets=("192.0.2.128/32",),
        listings=(),
        status=CaseStatus.CLOSED,
    )
    signed_in(client, factory, "analyst")
    default = client.get("/cases")
    assert default.status_code == 200
    assert _refs(default.text) == [a, b]  # open cases only, longest waiting first
    assert _refs(client.get("/cases?sort=-waiting").text) == [b, a]
    assert _refs(client.get("/cases?status=all").text) == [a, b, c]
    assert _refs(client.get("/cases?status=closed").text) == [c]
    assert _refs(client.get("/cases?domain=other.example").text) == [b]
    assert _refs(client.get("/cases?authority=pass").text) == [a]
    assert _refs(client.get("/cases?verification=fail").text) == [a]
    assert _refs(client.get("/cases?age=1d").text) == [a]
    assert _refs(client.get("/cases?q=HOSTMASTER").text) == [a]
    assert _refs(client.get("/cases?q=abuse@other").text) == [b]
    assert _refs(client.get(f"/cases?q={b.lower()}").text) == [b]
    assert _refs(client.get("/cases?net=198.51.100.0/24").text) == [b]
    assert _refs(client.get("/cases?net=203.0.113.5&status=all").text) == [a]
    assert _refs(client.get("/cases?net=192.0.2.0/24&status=all").text) == [c]
    assert _refs(client.get("/cases?q=100%25_").text) == []  # LIKE wildcards are literal
    counts = default.text[default.text.index('id="status-counts"') :]
    assert "new <b>2</b>" in counts and "closed <b>1</b>" in counts


def test_bad_filters_are_400_with_a_message_not_500(client, factory):
    signed_in(client, factory, "analyst")
    for query, text in (
        ("net=203.0.113.300", "not"),
        ("status=bogus", "unknown status"),
        ("age=2y", "unknown age"),
        ("page=x", "numbers"),
        ("assignee=<script>", "assignee"),
    ):
        response = client.get(f"/cases?{query}")
        assert response.status_code == 400 and text in response.text, query
        assert "<script>" not in response.text


def test_pagination(client, factory):
    refs = [
        make_case(
            factory, subject=f"case {i}", targets=(f"203.0.113.{i}/32",), listings=(), waiting_hours=100 - i
        )
        for i in range(7)
    ]
    signed_in(client, factory, "analyst")
    first = client.get("/cases?per_page=3")
    assert _refs(first.text) == refs[:3] and "page 1 of 3" in first.text and 'rel="next"' in first.text
    third = client.get("/cases?per_page=3&page=3")
    assert _refs(third.text) == refs[6:] and 'rel="next"' not in third.text and 'rel="prev"' in third.text


def test_assignee_filter_and_bulk_assign(client, factory):
    a = make_case(factory, targets=("203.0.113.1/32",))
    b = make_case(factory, targets=("203.0.113.2/32",))
    email = signed_in(client, factory, "analyst")
    page = client.get("/cases")
    fields = form_fields(page.text, "/cases/bulk")
    response = client.post("/cases/bulk", data={**fields, "op": "assign", "assignee": "me", "refs": [a, b]})
    assert response.status_code == 302
    assert _refs(client.get("/cases?assignee=me").text) == [a, b]
    assert _refs(client.get("/cases?assignee=none").text) == []
    with factory() as db:
        user_id = db.scalar(select(Case.assignee_id).where(Case.reference == a))
        assert email in client.get(f"/cases?assignee={user_id}").text
    # The same form again is refused as a repeat, not done twice.
    again = client.post(
        "/cases/bulk",
        data={**fields, "op": "assign", "assignee": "none", "refs": [a, b]},
        follow_redirects=True,
    )
    assert "already submitted" in again.text
    assert _refs(client.get("/cases?assignee=me").text) == [a, b]


def test_bulk_close_as_spam_and_merge(client, factory):
    a = make_case(factory, targets=("203.0.113.1/32",), waiting_hours=5)
    b = make_case(factory, targets=("203.0.113.2/32",), waiting_hours=4)
    c = make_case(factory, targets=("203.0.113.3/32",), waiting_hours=3)
    d = make_case(factory, targets=("203.0.113.4/32",), waiting_hours=2)
    signed_in(client, factory, "lead")
    fields = form_fields(client.get("/cases").text, "/cases/bulk")
    client.post("/cases/bulk", data={**fields, "op": "spam", "refs": [a]})
    fields = form_fields(client.get("/cases").text, "/cases/bulk")
    done = client.post(
        "/cases/bulk", data={**fields, "op": "merge", "refs": [b, c, d]}, follow_redirects=True
    )
    assert f"Merged into {b}" in done.text
    with factory() as db:
        rows = {c.reference: c for c in db.scalars(select(Case))}
        assert rows[a].status == CaseStatus.CLOSED and rows[a].resolution == Resolution.SPAM
        assert rows[c].resolution == Resolution.MERGED and rows[c].merged_into_id == rows[b].id
        assert sorted(t.network for t in rows[b].targets) == [
            "203.0.113.2/32",
            "203.0.113.3/32",
            "203.0.113.4/32",
        ]
        assert (
            db.scalar(select(Message.case_id).where(Message.subject == rows[d].subject).limit(1)) is not None
        )
        moved = db.scalars(select(Message.case_id)).all()
        assert set(moved) == {rows[a].id, rows[b].id}
    one = client.post(
        "/cases/bulk",
        data={**form_fields(client.get("/cases").text, "/cases/bulk"), "op": "merge", "refs": [b]},
        follow_redirects=True,
    )
    assert "two or more" in one.text


def test_requester_domains_and_counts_service(factory):
    make_case(factory, email="a@isp.example")
    make_case(factory, email="b@isp.example", targets=("198.51.100.1/32",))
    with unit_of_work(factory) as db:
        assert queue.requester_domains(db) == ["isp.example"]
        assert queue.status_counts(db)["new"] == 2


def test_queue_page_escapes_hostile_subjects(client, factory):
    make_case(factory, subject='<script>alert(1)</script><img src=x onerror="alert(2)">', name="<b>Eve</b>")
    make_user(factory, "x@example.test", "analyst")
    signed_in(client, factory, "auditor")
    html = client.get("/cases").text
    assert "<script>alert(1)" not in html and "<img src=x" not in html and "<b>Eve</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Apply" not in html  # no bulk actions for an auditor
    assert csrf_from(html)


def test_cached_counts_give_the_same_totals(factory):
    queue._COUNTS.clear()
    make_case(factory, targets=("203.0.113.1/32",))
    make_case(factory, targets=("203.0.113.2/32",), status=CaseStatus.CLOSED)
    with factory() as db:
        for args in ({}, {"status": "all"}, {"status": "closed"}, {"domain": "isp.example"}):
            flt = queue.parse_filter(args)
            fresh = queue.search(db, flt, counts_ttl=0)
            cached = queue.search(db, flt, counts_ttl=60)
            assert cached.total == fresh.total and [r.case.id for r in cached.rows] == [
                r.case.id for r in fresh.rows
            ]
        assert queue.search(db, queue.parse_filter({}), counts_ttl=60).total == 1


def _set_subject(factory, reference: str, subject: str) -> None:
    # A change made elsewhere (a job, another web process): nothing in this process hears of it.
    with unit_of_work(factory) as db:
        db.scalars(select(Case).where(Case.reference == reference)).one().subject = subject


@pytest.fixture
def cached_queue(app):
    from tmsi.web import ui

    ui._QUEUE_TABLES.clear()
    app.config["TMSI_QUEUE_CACHE_TTL"] = 60.0
    yield ui
    ui._QUEUE_TABLES.clear()


def test_cached_queue_rows_show_the_users_own_action_at_once(app, client, factory, cached_queue):
    a = make_case(factory, subject="first subject", targets=("203.0.113.1/32",), waiting_hours=5)
    b = make_case(factory, subject="second subject", targets=("203.0.113.2/32",), waiting_hours=4)
    email = signed_in(client, factory, "analyst")
    other = app.test_client()
    other_email = signed_in(other, factory, "auditor")
    page = client.get("/cases")
    assert _refs(page.text) == [a, b] and "first subject" in page.text

    _set_subject(factory, a, "changed elsewhere")
    # Within the TTL both users get the cached rows; the parts of the page that are theirs are not shared.
    mine, theirs = client.get("/cases"), other.get("/cases")
    for html in (mine.text, theirs.text):
        assert "first subject" in html and "changed elsewhere" not in html
    assert f'id="whoami">{email}<' in mine.text and 'id="bulk-op"' in mine.text
    assert f'id="whoami">{other_email}<' in theirs.text and 'id="bulk-op"' not in theirs.text
    assert csrf_from(mine.text) != csrf_from(theirs.text)

    # The analyst acts: their next queue page is rendered fresh (their change and the other one show).
    fields = form_fields(mine.text, "/cases/bulk")
    response = client.post("/cases/bulk", data={**fields, "op": "assign", "assignee": "me", "refs": [a]})
    assert response.status_code == 302
    after = client.get("/cases")
    assert "changed elsewhere" in after.text and "first subject" not in after.text
    row = after.text[after.text.index(f">{a}<") :]
    assert email in row[: row.index("</tr>")]
    # "Assigned to me" is cached per user: the auditor's "me" is nobody.
    assert _refs(client.get("/cases?assignee=me").text) == [a]
    assert _refs(other.get("/cases?assignee=me").text) == []


def test_cached_queue_rows_expire_after_the_ttl(app, client, factory, cached_queue, monkeypatch):
    # The cache's clock is the test's (a slow machine took longer than a real TTL between two requests).
    class Clock:
        monotonic_now = 1000.0

        def monotonic(self) -> float:
            return self.monotonic_now

        def time(self) -> float:
            return time.time()

    clock = Clock()
    monkeypatch.setattr(cached_queue, "time", clock)
    app.config["TMSI_QUEUE_CACHE_TTL"] = 0.5
    a = make_case(factory, subject="before", targets=("203.0.113.1/32",))
    signed_in(client, factory, "auditor")
    assert "before" in client.get("/cases").text
    _set_subject(factory, a, "after")
    clock.monotonic_now += 0.4
    assert "before" in client.get("/cases").text
    clock.monotonic_now += 0.2
    html = client.get("/cases").text
    assert "after" in html and "before" not in html


def test_network_total_over_all_cases_counts_each_case_once(client, factory):
    # Two targets of one case inside the network, one case closed, one case outside: the total counts cases.
    a = make_case(factory, targets=("203.0.113.1/32", "203.0.113.2/32"))
    b = make_case(factory, targets=("203.0.113.0/24",), status=CaseStatus.CLOSED)
    make_case(factory, targets=("198.51.100.1/32",))
    signed_in(client, factory, "auditor")
    html = client.get("/cases?status=all&net=203.0.113.0/25").text
    assert sorted(_refs(html)) == sorted([a, b]) and "2 case(s)" in html
    assert "1 case(s)" in client.get("/cases?net=203.0.113.0/25").text  # open cases only: the other count
    assert "0 case(s)" in client.get("/cases?status=all&net=192.0.2.0/24").text
