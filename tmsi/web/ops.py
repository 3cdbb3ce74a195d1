"""Operations endpoints: ``/readyz`` (dependencies reachable, with timings) and ``/metrics`` (Prometheus),
plus the request id every request carries (``X-Request-ID`` in, out, in the logs and audit events).

Metrics are computed from the database at scrape time, not counted in process memory: gunicorn runs
several worker processes and the Huey workers run in other containers, so in-process counters would
each see a slice. A query per family over indexed columns answers the same, complete numbers from any
web worker, with no ``PROMETHEUS_MULTIPROC_DIR`` to share and nothing lost on restart.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from tmsi.app import get_db, get_settings
from tmsi.config import Settings
from tmsi.db import utcnow
from tmsi.logging import case_id_var, request_id_var
from tmsi.models import (
    Case,
    CaseStatus,
    Direction,
    DnsCheck,
    ExportRun,
    Message,
    MessageStatus,
    OutboxMessage,
    OutboxStatus,
    RunStatus,
    VerificationRun,
)

bp = Blueprint("ops", __name__)
log = logging.getLogger(__name__)
access_log = logging.getLogger("tmsi.access")
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

CHECK_TIMEOUT = 1.5
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


# ---- request id ------------------------------------------------------------------------------------
@bp.before_app_request
def _bind_request_id() -> None:
    incoming = request.headers.get("X-Request-ID", "")
    rid = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
    g.request_id = rid
    g._tmsi_started = time.perf_counter()
    g._tmsi_rid_token = request_id_var.set(rid)
    case_id = (request.view_args or {}).get("case_id") or (request.view_args or {}).get("reference")
    if case_id is not None:
        g._tmsi_case_token = case_id_var.set(str(case_id))


@bp.after_app_request
def _send_request_id(response: Response) -> Response:
    rid = getattr(g, "request_id", "")
    if rid:
        response.headers["X-Request-ID"] = rid
    started = getattr(g, "_tmsi_started", None)
    if started is not None:
        # The access log is written here, inside the request, so it carries the request id (and the case).
        ms = (time.perf_counter() - started) * 1000
        level = logging.DEBUG if request.path in QUIET_PATHS else logging.INFO
        access_log.log(
            level,
            "%s %s %s %.1fms",
            request.method,
            request.full_path.rstrip("?"),
            response.status_code,
            ms,
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round(ms, 1),
                "remote_addr": request.remote_addr or "",
            },
        )
    return response


@bp.teardown_app_request
def _unbind_request_id(_exc: BaseException | None) -> None:
    for attr, var in (("_tmsi_case_token", case_id_var), ("_tmsi_rid_token", request_id_var)):
        token = g.pop(attr, None)
        if token is not None:
            with contextlib.suppress(ValueError):  # a token from another context (streamed response)
                var.reset(token)


# ---- readiness -------------------------------------------------------------------------------------
@dataclass
class Check:
    name: str
    required: bool
    ok: bool
    ms: float
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "required": self.required, "ms": round(self.ms, 2), "detail": self.detail}


def _timed(name: str, required: bool, probe: Callable[[], str]) -> Check:
    started = time.perf_counter()
    try:
        detail, ok = probe(), True
    except Exception as exc:
        detail, ok = f"{type(exc).__name__}: {exc}"[:300], False
    return Check(name, required, ok, (time.perf_counter() - started) * 1000, detail)


def _tcp_banner(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=CHECK_TIMEOUT) as sock:
        sock.settimeout(CHECK_TIMEOUT)
        banner = sock.recv(256).decode("ascii", "replace").strip()
    if not banner:
        raise ConnectionError(f"{host}:{port} sent no greeting")
    return f"{host}:{port} {banner[:60]}"


def check_database(factory: sessionmaker[Session]) -> str:
    with factory() as session:
        session.execute(text("SELECT 1"))
        return session.get_bind().dialect.name


def check_mailbox(settings: Settings) -> str:
    if settings.mailbox_kind == "imap":
        port = settings.imap_port
        if settings.imap_tls == "implicit":
            with socket.create_connection((settings.imap_host, port), timeout=CHECK_TIMEOUT):
                return f"{settings.imap_host}:{port} accepts connections (TLS)"
        return _tcp_banner(settings.imap_host, port)
    root = Path(settings.maildir_path)
    missing = [sub for sub in ("new", "cur", "tmp") if not (root / sub).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root} is not a Maildir (missing {', '.join(missing)})")
    return f"maildir {root}"


def check_resolver(settings: Settings) -> str:
    if settings.resolver_kind == "zonefile":
        files = [Path(p) for p in settings.resolver_zone_files]
        if not files:
            raise FileNotFoundError("TMSI_RESOLVER_ZONE_FILES is empty")
        absent = [str(p) for p in files if not p.is_file()]
        if absent:
            raise FileNotFoundError(f"missing zone files: {', '.join(absent)}")
        return f"{len(files)} zone files"
    import dns.message
    import dns.query
    import dns.rcode

    from tmsi.adapters.resolver import parse_server

    host, port = parse_server(settings.resolvers[0])
    query = dns.message.make_query("1.0.0.127.in-addr.arpa.", "PTR")
    reply = dns.query.udp(query, host, port=port, timeout=CHECK_TIMEOUT)
    # Any answer (even REFUSED/NXDOMAIN) proves the resolver is there; SERVFAIL is reported as-is.
    return f"{host}:{port} {dns.rcode.to_text(reply.rcode())}"


def check_redis(settings: Settings) -> str:
    import redis

    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=CHECK_TIMEOUT, socket_connect_timeout=CHECK_TIMEOUT
    )
    try:
        if not client.ping():
            raise ConnectionError("PING not answered")
        return "PONG"
    finally:
        client.close()


def readiness(settings: Settings, factory: sessionmaker[Session]) -> list[Check]:
    checks = [_timed("database", True, lambda: check_database(factory))]
    if settings.mailbox_kind != "none":
        checks.append(_timed("mailbox", True, lambda: check_mailbox(settings)))
    checks.append(_timed("dns_resolver", True, lambda: check_resolver(settings)))
    if settings.redis_url or settings.huey_storage == "redis":
        checks.append(_timed("redis", settings.huey_storage == "redis", lambda: check_redis(settings)))
    return checks


@bp.get("/readyz")
def readyz() -> Any:
    checks = readiness(get_settings(), get_db().factory)
    ready = all(c.ok for c in checks if c.required)
    body = {"status": "ready" if ready else "not_ready", "checks": {c.name: c.as_dict() for c in checks}}
    if not ready:
        log.warning("not ready: %s", ", ".join(c.name for c in checks if c.required and not c.ok))
    return jsonify(body), 200 if ready else 503


# ---- metrics ---------------------------------------------------------------------------------------
class DatabaseCollector:
    """Every family is one aggregate query, run when Prometheus scrapes."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def collect(self) -> Iterator[Metric]:
        with self.factory() as session:
            yield from self._messages(session)
            yield from self._cases(session)
            yield from self._verification(session)
            yield from self._outbox(session)
            yield from self._export(session)

    def _messages(self, session: Session) -> Iterator[Metric]:
        ingested = CounterMetricFamily(
            "tmsi_messages_ingested", "Incoming messages stored, by status", labels=["status"]
        )
        rows = session.execute(
            select(Message.status, func.count())
            .where(Message.direction == Direction.IN)
            .group_by(Message.status)
        ).all()
        counts = {MessageStatus(s).value: n for s, n in rows}
        for status in MessageStatus:
            ingested.add_metric([status.value], counts.get(status.value, 0))
        yield ingested
        quarantined = GaugeMetricFamily("tmsi_messages_quarantined", "Incoming messages in quarantine now")
        quarantined.add_metric([], counts.get(MessageStatus.QUARANTINED.value, 0))
        yield quarantined

    def _cases(self, session: Session) -> Iterator[Metric]:
        family = GaugeMetricFamily("tmsi_cases", "Cases by status", labels=["status"])
        counts = {
            CaseStatus(s).value: n
            for s, n in session.execute(select(Case.status, func.count()).group_by(Case.status)).all()
        }
        for status in CaseStatus:
            family.add_metric([status.value], counts.get(status.value, 0))
        yield family

    def _verification(self, session: Session) -> Iterator[Metric]:
        runs = CounterMetricFamily(
            "tmsi_verification_runs", "Finished verification runs, by result", labels=["result"]
        )
        for result, n in session.execute(
            select(VerificationRun.result, func.count())
            .where(VerificationRun.status == RunStatus.DONE)
            .group_by(VerificationRun.result)
        ).all():
            runs.add_metric([str(getattr(result, "value", result))], n)
        yield runs
        checks = CounterMetricFamily(
            "tmsi_dns_checks", "Per-address DNS checks, by result", labels=["result"]
        )
        for result, n in session.execute(
            select(DnsCheck.result, func.count()).group_by(DnsCheck.result)
        ).all():
            checks.add_metric([str(getattr(result, "value", result))], n)
        yield checks
        latency = SummaryMetricFamily(
            "tmsi_verification_run_seconds", "Duration of finished verification runs"
        )
        finished = session.execute(
            select(VerificationRun.started_at, VerificationRun.finished_at)
            .where(VerificationRun.status == RunStatus.DONE, VerificationRun.finished_at.is_not(None))
            .order_by(VerificationRun.id.desc())
            .limit(10_000)
        ).all()
        total = 0.0
        for start, end in finished:
            if end is not None:
                total += max(0.0, (end - start).total_seconds())
        latency.add_metric([], count_value=len(finished), sum_value=total)
        yield latency
        pending = GaugeMetricFamily("tmsi_verification_due", "Targets whose (re-)verification is due now")
        from tmsi.models import CaseTarget

        pending.add_metric(
            [],
            session.scalar(select(func.count(CaseTarget.id)).where(CaseTarget.next_check_at <= utcnow()))
            or 0,
        )
        yield pending

    def _outbox(self, session: Session) -> Iterator[Metric]:
        family = GaugeMetricFamily("tmsi_outbox_messages", "Outbox rows by status", labels=["status"])
        counts = {
            OutboxStatus(s).value: n
            for s, n in session.execute(
                select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)
            ).all()
        }
        for status in OutboxStatus:
            family.add_metric([status.value], counts.get(status.value, 0))
        yield family
        backlog = GaugeMetricFamily(
            "tmsi_outbox_backlog", "Outbox rows waiting to be sent (pending + sending)"
        )
        backlog.add_metric([], counts.get("pending", 0) + counts.get("sending", 0))
        yield backlog
        oldest = session.scalar(
            select(func.min(OutboxMessage.created_at)).where(
                OutboxMessage.status.in_([OutboxStatus.PENDING, OutboxStatus.SENDING])
            )
        )
        age = GaugeMetricFamily("tmsi_outbox_oldest_pending_seconds", "Age of the oldest unsent outbox row")
        age.add_metric([], (utcnow() - oldest).total_seconds() if oldest else 0.0)
        yield age
        failures = CounterMetricFamily("tmsi_outbox_failures", "Outbox delivery failures (failed rows)")
        failures.add_metric([], counts.get("failed", 0))
        yield failures
        retries = GaugeMetricFamily(
            "tmsi_outbox_retrying", "Unsent outbox rows that already failed an attempt"
        )
        retries.add_metric(
            [],
            session.scalar(
                select(func.count(OutboxMessage.id)).where(
                    OutboxMessage.status == OutboxStatus.PENDING, OutboxMessage.attempts > 0
                )
            )
            or 0,
        )
        yield retries

    def _export(self, session: Session) -> Iterator[Metric]:
        last = session.scalar(select(func.max(ExportRun.finished_at)).where(ExportRun.status == "done"))
        age = GaugeMetricFamily(
            "tmsi_export_age_seconds", "Seconds since the last successful zone export (-1: never exported)"
        )
        age.add_metric([], (utcnow() - last).total_seconds() if last else -1.0)
        yield age
        pending = GaugeMetricFamily("tmsi_export_pending", "Export requests not yet done")
        pending.add_metric(
            [],
            session.scalar(
                select(func.count(ExportRun.id)).where(ExportRun.status.in_(["pending", "running"]))
            )
            or 0,
        )
        yield pending
        week = utcnow() - timedelta(days=7)
        failed = GaugeMetricFamily("tmsi_export_failed_7d", "Failed zone exports in the last 7 days")
        failed.add_metric(
            [],
            session.scalar(
                select(func.count(ExportRun.id)).where(
                    ExportRun.status == "failed", ExportRun.requested_at >= week
                )
            )
            or 0,
        )
        yield failed


def render_metrics(factory: sessionmaker[Session]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(factory))
    return generate_latest(registry)


@bp.get("/metrics")
def metrics() -> Any:
    return Response(render_metrics(get_db().factory), mimetype=CONTENT_TYPE_LATEST)
