"""The leads' dashboard read model: daily inflow, backlog, time to first response and to decision, and the
verification pass rate, over a window of days. Reads only; the aggregation is plain Python over a few
narrow column selects (tens of thousands of rows at most), so it is the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from tmsi.db import utcnow
from tmsi.models import Case, CheckResult, RunStatus, VerificationRun


@dataclass
class Day:
    day: date
    inflow: int = 0
    backlog: int = 0
    first_response_hours: float | None = None
    decision_hours: float | None = None
    passed: int = 0
    failed: int = 0

    @property
    def pass_rate(self) -> float | None:
        checked = self.passed + self.failed
        return self.passed / checked if checked else None


@dataclass
class Dashboard:
    days: list[Day] = field(default_factory=list)
    open_now: int = 0
    median_first_response_hours: float | None = None
    median_decision_hours: float | None = None
    pass_rate: float | None = None
    inflow_total: int = 0


def _hours(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds() / 3600)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def build_dashboard(session: Session, *, days: int = 30, now: datetime | None = None) -> Dashboard:
    now = now or utcnow()
    first_day = (now - timedelta(days=days - 1)).date()
    start = datetime.combine(first_day, time.min, tzinfo=now.tzinfo)
    by_day = {first_day + timedelta(days=i): Day(first_day + timedelta(days=i)) for i in range(days)}

    def ends(case_decided: datetime | None, case_closed: datetime | None) -> datetime | None:
        moments = [m for m in (case_decided, case_closed) if m is not None]
        return min(moments) if moments else None

    rows = session.execute(
        select(Case.created_at, Case.first_response_at, Case.decided_at, Case.closed_at).where(
            Case.merged_into_id.is_(None),
            # only cases that touch the window: arrived, decided or closed in it, or still open
            or_(
                Case.created_at >= start,
                Case.decided_at >= start,
                Case.closed_at >= start,
                and_(Case.decided_at.is_(None), Case.closed_at.is_(None)),
            ),
        )
    ).all()
    last_day = now.date()
    delta = [0] * (days + 1)
    response_by_day: dict[date, list[float]] = {d: [] for d in by_day}
    decision_by_day: dict[date, list[float]] = {d: [] for d in by_day}
    dashboard = Dashboard()
    for created, first_response, decided, closed in rows:
        finished = ends(decided, closed)
        if finished is None:
            dashboard.open_now += 1
        created_day = created.date()
        if created_day in by_day:
            by_day[created_day].inflow += 1
            if first_response is not None:
                response_by_day[created_day].append(_hours(created, first_response))
        if decided is not None and decided.date() in by_day:
            decision_by_day[decided.date()].append(_hours(created, decided))
        # Backlog = open at the end of the day: from the day it arrived to the day before it ended.
        first_open = max(created_day, first_day)
        last_open = (finished.date() - timedelta(days=1)) if finished is not None else last_day
        if first_open <= min(last_open, last_day):
            delta[(first_open - first_day).days] += 1
            delta[(min(last_open, last_day) - first_day).days + 1] -= 1

    runs = session.execute(
        select(VerificationRun.finished_at, VerificationRun.result).where(
            VerificationRun.status == RunStatus.DONE,
            VerificationRun.finished_at >= start,
            VerificationRun.result.in_([CheckResult.PASS, CheckResult.FAIL, CheckResult.PARTIAL]),
        )
    ).all()
    for finished_at, result in runs:
        day_runs = by_day.get(finished_at.date()) if finished_at is not None else None
        if day_runs is None:
            continue
        if result == CheckResult.PASS:
            day_runs.passed += 1
        else:
            day_runs.failed += 1

    running = 0
    for index, day in enumerate(by_day.values()):
        running += delta[index]
        day.backlog = running

    all_responses: list[float] = []
    all_decisions: list[float] = []
    for key, day in by_day.items():
        day.first_response_hours = _median(response_by_day[key])
        day.decision_hours = _median(decision_by_day[key])
        all_responses += response_by_day[key]
        all_decisions += decision_by_day[key]
    dashboard.days = list(by_day.values())
    dashboard.median_first_response_hours = _median(all_responses)
    dashboard.median_decision_hours = _median(all_decisions)
    passed = sum(d.passed for d in dashboard.days)
    checked = passed + sum(d.failed for d in dashboard.days)
    dashboard.pass_rate = passed / checked if checked else None
    dashboard.inflow_total = sum(d.inflow for d in dashboard.days)
    return dashboard
