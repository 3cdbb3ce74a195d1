"""The leads' dashboard (``/dashboard``): inflow, backlog, time to first response and to decision, and
verification pass rate per day, drawn as server-rendered SVG (no script, so the strict CSP holds)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from flask import Blueprint, current_app, render_template, request
from markupsafe import Markup, escape

from tmsi.models import Role
from tmsi.services.dashboard import build_dashboard
from tmsi.web.auth import request_session, role_required

bp = Blueprint("dashboard", __name__, static_folder="dashboard_static", static_url_path="/dashboard/static")

LEAD_ROLES = frozenset({Role.LEAD, Role.ADMIN, Role.AUDITOR})
WINDOWS = (7, 30, 90)


@dataclass(frozen=True)
class Chart:
    title: str
    unit: str
    svg: Markup
    latest: str


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "%":
        return f"{value * 100:.0f} %"
    if unit == "h":
        return f"{value:.1f} h" if value < 48 else f"{value / 24:.1f} d"
    return f"{value:.0f}"


def svg_chart(
    days: Sequence[date],
    values: Sequence[float | None],
    *,
    kind: str = "line",
    unit: str = "",
    label: str = "",
    width: int = 560,
    height: int = 180,
) -> Markup:
    """A small accessible SVG chart; ``None`` values are gaps. Only presentation attributes (no style=)."""
    left, right, top, bottom = 44, 8, 10, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    known = [v for v in values if v is not None]
    top_value = max(known) if known else 0.0
    if unit == "%":
        top_value = 1.0
    top_value = top_value or 1.0
    n = max(len(values), 1)
    step = plot_w / n

    def x(i: int) -> float:
        return left + step * i + step / 2

    def y(v: float) -> float:
        return top + plot_h - (v / top_value) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-label="{escape(label)}" class="chart">',
        f"<title>{escape(label)}</title>",
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="#999"/>',
    ]
    for fraction in (0.5, 1.0):
        gy = y(top_value * fraction)
        parts.append(
            f'<line x1="{left}" y1="{gy:.1f}" x2="{width - right}" y2="{gy:.1f}" stroke="#ddd"/>'
            f'<text x="{left - 4}" y="{gy + 4:.1f}" text-anchor="end" font-size="10" fill="#555">'
            f"{escape(_fmt(top_value * fraction, unit))}</text>"
        )
    if kind == "bar":
        for i, v in enumerate(values):
            if v:
                parts.append(
                    f'<rect x="{x(i) - step * 0.4:.1f}" y="{y(v):.1f}" width="{step * 0.8:.1f}" '
                    f'height="{top + plot_h - y(v):.1f}" fill="#3b6ea5">'
                    f"<title>{days[i].isoformat()}: {escape(_fmt(v, unit))}</title></rect>"
                )
    else:
        segment: list[str] = []
        for i, v in enumerate([*values, None]):
            if v is None:
                if len(segment) > 1:
                    parts.append(
                        '<polyline fill="none" stroke="#3b6ea5" stroke-width="2" '
                        f'points="{" ".join(segment)}"/>'
                    )
                segment = []
                continue
            segment.append(f"{x(i):.1f},{y(v):.1f}")
            parts.append(
                f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="#3b6ea5">'
                f"<title>{days[i].isoformat()}: {escape(_fmt(v, unit))}</title></circle>"
            )
    if days:
        for i in sorted({0, len(days) // 2, len(days) - 1}):
            parts.append(
                f'<text x="{x(i):.1f}" y="{height - 6}" text-anchor="middle" font-size="10" fill="#555">'
                f"{days[i].strftime('%d %b')}</text>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text above is escaped or numeric


@bp.get("/dashboard")
@role_required(LEAD_ROLES)
def dashboard() -> Any:
    try:
        days = int(request.args.get("days", "30"))
    except ValueError:
        days = 30
    days = days if days in WINDOWS else 30
    data, as_of = _cached_dashboard(days)
    dates = [d.day for d in data.days]

    def chart(title: str, values: list[float | None], unit: str, kind: str = "line") -> Chart:
        latest = next((v for v in reversed(values) if v is not None), None)
        return Chart(
            title, unit, svg_chart(dates, values, kind=kind, unit=unit, label=title), _fmt(latest, unit)
        )

    charts = [
        chart("Inflow (new cases per day)", [float(d.inflow) for d in data.days], "", "bar"),
        chart("Backlog (open cases at end of day)", [float(d.backlog) for d in data.days], ""),
        chart(
            "Time to first response (median, by arrival day)",
            [d.first_response_hours for d in data.days],
            "h",
        ),
        chart("Time to decision (median, by decision day)", [d.decision_hours for d in data.days], "h"),
        chart("Verification pass rate (finished runs)", [d.pass_rate for d in data.days], "%"),
    ]
    summary = {
        "Open now": str(data.open_now),
        f"New in {days} days": str(data.inflow_total),
        "Median first response": _fmt(data.median_first_response_hours, "h"),
        "Median time to decision": _fmt(data.median_decision_hours, "h"),
        "Pass rate": _fmt(data.pass_rate, "%"),
    }
    return render_template(
        "dashboard.html",
        charts=charts,
        summary=summary,
        days=days,
        windows=WINDOWS,
        as_of=as_of,
        cache_seconds=CACHE_SECONDS,
    )


# The figures are per day: each web process computes them at most once per CACHE_SECONDS per window
# (the aggregation reads every case of the window; under load it was the slowest page by far).
CACHE_SECONDS = 30.0
_LOCK = threading.Lock()


def _cached_dashboard(days: int) -> tuple[Any, datetime]:
    cache: dict[int, tuple[float, Any, datetime]] = current_app.extensions.setdefault("tmsi.dashboard", {})
    now = time.monotonic()
    with _LOCK:
        hit = cache.get(days)
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return hit[1], hit[2]
        data = build_dashboard(request_session(), days=days)
        cache[days] = (now, data, datetime.now(UTC))
        return data, cache[days][2]
