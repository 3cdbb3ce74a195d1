"""The leads' dashboard: the read model's numbers per day, and the page (role-protected, SVG charts)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from xml.etree import ElementTree

from tests.integration.ui_support import signed_in
from tmsi.db import unit_of_work, utcnow
from tmsi.models import CaseStatus, CheckResult, RunStatus, VerificationRun
from tmsi.services import cases
from tmsi.services.dashboard import build_dashboard


def _seed(factory: Any) -> None:
    now = utcnow()
    with unit_of_work(factory) as s:
        # two days ago: two cases, one answered after 2 h and decided after 10 h; one still open
        a = cases.open_case(s, subject="a", requester_email="noc@isp.example", now=now - timedelta(days=2))
        a.first_response_at = a.created_at + timedelta(hours=2)
        cases.transition(s, a, CaseStatus.VERIFYING)
        cases.transition(s, a, CaseStatus.DELISTED)
        a.decided_at = a.created_at + timedelta(hours=10)
        cases.open_case(s, subject="b", requester_email="noc@isp.example", now=now - timedelta(days=2))
        # long ago: arrived and closed before the window, it counts nowhere
        old = cases.open_case(
            s, subject="old", requester_email="noc@old.example", now=now - timedelta(days=100)
        )
        cases.transition(s, old, CaseStatus.CLOSED, now=now - timedelta(days=95))
        old.closed_at = now - timedelta(days=95)
        # today: one new case
        cases.open_case(s, subject="c", requester_email="noc@other.example", now=now)
        for result in (CheckResult.PASS, CheckResult.PASS, CheckResult.FAIL, CheckResult.UNVERIFIABLE):
            s.add(
                VerificationRun(
                    network="192.0.2.1/32",
                    status=RunStatus.DONE,
                    result=result,
                    started_at=now - timedelta(minutes=5),
                    finished_at=now,
                    summary={},
                )
            )


def test_dashboard_numbers(factory: Any) -> None:
    _seed(factory)
    with factory() as s:
        board = build_dashboard(s, days=7)
    assert len(board.days) == 7
    today, two_days_ago = board.days[-1], board.days[-3]
    assert (two_days_ago.inflow, today.inflow, board.inflow_total) == (2, 1, 3)
    assert two_days_ago.first_response_hours == 2.0
    assert board.median_decision_hours == 10.0
    # backlog at the end of each day: both of day -2 were open that evening (one is decided 10 h later,
    # on day -2 or day -1 depending on the hour), two today
    assert two_days_ago.backlog in (1, 2) and today.backlog == 2 and board.open_now == 2
    assert board.days[0].backlog == 0
    # unverifiable runs are neither pass nor fail
    assert (today.passed, today.failed) == (2, 1) and board.pass_rate == 2 / 3


def test_dashboard_page_is_for_leads_and_draws_svg(client: Any, factory: Any) -> None:
    _seed(factory)
    assert client.get("/dashboard").status_code in (302, 401)  # anonymous: sign in first
    signed_in(client, factory, "analyst")
    assert client.get("/dashboard").status_code == 403
    assert 'href="/dashboard"' not in client.get("/cases").get_data(as_text=True)
    lead = client.application.test_client()
    signed_in(lead, factory, "lead")
    response = lead.get("/dashboard?days=7")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    svgs = re.findall(r"<svg .*?</svg>", html, flags=re.S)
    assert len(svgs) == 5
    for svg in svgs:
        ElementTree.fromstring(svg)  # well-formed
        assert "style=" not in svg  # the CSP forbids inline styles
    assert "Inflow" in html and "Verification pass rate" in html and "67 %" in html
    assert 'href="/dashboard"' in lead.get("/cases").get_data(as_text=True)  # in the leads' navigation
    assert lead.get("/dashboard?days=1000").status_code == 200  # unknown windows fall back to 30 days


def test_dashboard_figures_are_recomputed_at_most_every_cache_period(
    client: Any, factory: Any, monkeypatch
) -> None:
    from tmsi.web import dashboard

    _seed(factory)
    calls = []
    real = dashboard.build_dashboard

    def counting(session: Any, *, days: int) -> Any:
        calls.append(days)
        return real(session, days=days)

    monkeypatch.setattr(dashboard, "build_dashboard", counting)
    signed_in(client, factory, "lead")
    for _ in range(3):
        assert client.get("/dashboard?days=7").status_code == 200
    assert calls == [7]
    assert "Figures as of" in client.get("/dashboard?days=30").get_data(as_text=True)
    assert calls == [7, 30]  # each window has its own figures
    monkeypatch.setattr(dashboard, "CACHE_SECONDS", 0.0)
    client.get("/dashboard?days=7")
    assert calls == [7, 30, 7]
