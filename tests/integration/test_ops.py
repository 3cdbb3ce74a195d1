"""Operations on the real test database: job leases, singleton jobs, retention purge, Huey wiring in
immediate mode, /metrics (parsed with prometheus_client), /readyz and request ids."""

from __future__ import annotations

import hashlib
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from tmsi.db import unit_of_work, utcnow
from tmsi.jobs import build_huey, run_job
from tmsi.models import AuditEvent, Case, CaseStatus, JobLock, Message
from tmsi.services import cases, joblock, outbox
from tmsi.services.retention import job_purge_raw_mail, purge_raw_mail

DEMO_ZONES = sorted((Path(__file__).resolve().parents[2] / "tmsi" / "data" / "demo" / "zones").glob("*.zone"))


# ---- leases ------------------------------------------------------------------------------------------
def test_lease_is_exclusive_until_it_expires(factory: Any) -> None:
    now = utcnow()
    with unit_of_work(factory) as s:
        assert joblock.try_acquire(s, "mailbox:x", "a", 60, now=now)
    with unit_of_work(factory) as s:
        assert not joblock.try_acquire(s, "mailbox:x", "b", 60, now=now + timedelta(seconds=30))
        assert joblock.try_acquire(s, "mailbox:x", "a", 60, now=now + timedelta(seconds=30))  # ours: extended
        assert joblock.renew(s, "mailbox:x", "a", 60, now=now + timedelta(seconds=40))
        assert not joblock.renew(s, "mailbox:x", "b", 60, now=now)
    with unit_of_work(factory) as s:
        # a holder that died stops renewing: after expiry another takes over, and the old one has lost it
        assert joblock.try_acquire(s, "mailbox:x", "b", 60, now=now + timedelta(seconds=101))
        assert not joblock.renew(s, "mailbox:x", "a", 60, now=now + timedelta(seconds=101))
    with unit_of_work(factory) as s:
        joblock.release(s, "mailbox:x", "a")  # not the holder: no effect
        assert s.get(JobLock, "mailbox:x").holder == "b"  # type: ignore[union-attr]
        joblock.release(s, "mailbox:x", "b")
    with factory() as s:
        assert s.get(JobLock, "mailbox:x") is None


def test_concurrent_acquires_have_exactly_one_winner(factory: Any) -> None:
    winners: list[str] = []
    barrier = threading.Barrier(6)

    def contend(holder: str) -> None:
        barrier.wait()
        with unit_of_work(factory) as s:
            if joblock.try_acquire(s, "job:race", holder, 60):
                winners.append(holder)

    threads = [threading.Thread(target=contend, args=(f"h{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1


def test_singleton_job_is_skipped_while_another_worker_holds_it(factory: Any, settings: Any) -> None:
    settings.retention_days = 30
    with unit_of_work(factory) as s:
        assert joblock.try_acquire(s, "job:purge_raw_mail", "other-worker", 300)
    skipped = run_job("purge_raw_mail", settings, factory)
    assert not skipped.ran and "held elsewhere" in skipped.reason
    with unit_of_work(factory) as s:
        joblock.release(s, "job:purge_raw_mail", "other-worker")
    ran = run_job("purge_raw_mail", settings, factory)
    assert ran.ran
    with factory() as s:  # the job released its own lease
        assert s.get(JobLock, "job:purge_raw_mail") is None


def test_a_job_whose_service_has_not_landed_is_skipped(factory: Any, settings: Any, monkeypatch: Any) -> None:
    from tmsi import jobs

    monkeypatch.setitem(
        jobs.SCHEDULE_BY_NAME,
        "send_outbox",
        jobs.Schedule("send_outbox", "tmsi.services.not_yet:job_x", lambda _s: 30.0, "test"),
    )
    outcome = run_job("send_outbox", settings, factory)
    assert not outcome.ran and "does not exist" in outcome.reason


# ---- retention ---------------------------------------------------------------------------------------
def _case_with_mail(session: Any, *, closed_days_ago: int | None, raw: bytes) -> Case:
    case = cases.open_case(session, subject="delist", requester_email="noc@isp.example")
    if closed_days_ago is not None:
        cases.transition(session, case, CaseStatus.CLOSED)
        case.closed_at = utcnow() - timedelta(days=closed_days_ago)
    digest = hashlib.sha256(raw + str(case.id).encode()).hexdigest()
    session.add(
        Message(
            case_id=case.id,
            dedupe_key=digest,
            content_hash=digest,
            raw=raw,
            raw_size=len(raw),
            to_addrs=[],
            references=[],
            headers=[],
            attachments=[],
            explain={},
        )
    )
    session.flush()
    return case


def test_retention_purges_raw_mail_of_old_closed_cases_only(factory: Any, settings: Any) -> None:
    with unit_of_work(factory) as s:
        old = _case_with_mail(s, closed_days_ago=40, raw=b"Subject: old\r\n\r\nbody")
        recent = _case_with_mail(s, closed_days_ago=10, raw=b"Subject: recent\r\n\r\nbody")
        still_open = _case_with_mail(s, closed_days_ago=None, raw=b"Subject: open\r\n\r\nbody")
        ids = (old.id, recent.id, still_open.id)
    settings.retention_days = 0
    assert job_purge_raw_mail(settings, factory).messages == 0  # 0 keeps raw mail forever
    settings.retention_days = 30
    report = job_purge_raw_mail(settings, factory)
    assert (report.cases, report.messages, report.bytes) == (1, 1, len(b"Subject: old\r\n\r\nbody"))
    with factory() as s:
        rows = {m.case_id: m for m in s.scalars(select(Message).where(Message.case_id.in_(ids)))}
        assert rows[ids[0]].raw is None and rows[ids[0]].raw_purged_at is not None
        assert rows[ids[1]].raw is not None and rows[ids[2]].raw is not None
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "mail.raw_purged")).all()
        assert [(e.case_id, e.detail["messages"], e.detail["retention_days"]) for e in events] == [
            (ids[0], 1, 30)
        ]
    # idempotent: nothing left to purge, no second audit event
    assert job_purge_raw_mail(settings, factory).cases == 0
    with unit_of_work(factory) as s:
        assert purge_raw_mail(s, older_than_days=5).cases == 1  # a shorter retention reaches the other
        assert (
            s.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "mail.raw_purged")
            )
            == 2
        )


def test_huey_immediate_mode_runs_the_scheduled_job(factory: Any, settings: Any) -> None:
    with unit_of_work(factory) as s:
        case = _case_with_mail(s, closed_days_ago=90, raw=b"Subject: x\r\n\r\ny")
        case_id = case.id
    settings.retention_days = 30
    app = build_huey(settings, factory=factory)
    assert app.huey.immediate
    assert app.tasks["purge_raw_mail"]().get() is True
    with factory() as s:
        assert s.scalar(select(Message.raw_purged_at).where(Message.case_id == case_id)) is not None
    # disabled jobs still run when called directly, but a disabled schedule's tick enqueues nothing
    assert {"poll_mailbox", "send_outbox", "export_zone", "verify_target"} <= set(app.tasks)


# ---- /metrics ----------------------------------------------------------------------------------------
def _families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _value(families: dict[str, Any], name: str, **labels: str) -> float:
    for sample in families[name].samples:
        if sample.labels == labels and not sample.name.endswith("_created"):
            return float(sample.value)
    raise AssertionError(f"no sample {name}{labels}")


def test_metrics_parse_and_follow_the_database(client: Any, factory: Any) -> None:
    with unit_of_work(factory) as s:
        for _ in range(3):
            cases.open_case(s, subject="delist", requester_email="noc@isp.example")
        case = cases.open_case(s, subject="delist", requester_email="abuse@isp.example")
        cases.transition(s, case, CaseStatus.VERIFYING)
        outbox.enqueue(
            s,
            case=case,
            mail_from="dul@example.test",
            to=["abuse@isp.example"],
            subject="ack",
            body="hello",
            mail_domain="example.test",
        )
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    families = _families(response.get_data(as_text=True))
    assert _value(families, "tmsi_cases", status="new") == 3
    assert _value(families, "tmsi_cases", status="verifying") == 1
    assert _value(families, "tmsi_cases", status="closed") == 0
    assert _value(families, "tmsi_outbox_backlog") == 1
    assert _value(families, "tmsi_outbox_messages", status="pending") == 1
    assert _value(families, "tmsi_outbox_oldest_pending_seconds") >= 0
    assert _value(families, "tmsi_export_age_seconds") == -1  # never exported
    assert families["tmsi_messages_ingested"].type == "counter"
    assert families["tmsi_verification_run_seconds"].type == "summary"
    assert {
        "tmsi_messages_quarantined",
        "tmsi_dns_checks",
        "tmsi_verification_runs",
        "tmsi_outbox_failures",
        "tmsi_export_pending",
    } <= set(families)


# ---- /readyz and request ids -------------------------------------------------------------------------
def _app(settings: Any, **overrides: Any) -> Any:
    from tmsi import create_app

    for key, value in overrides.items():
        setattr(settings, key, value)
    application = create_app(settings)
    application.config.update(TESTING=True)
    return application.test_client()


def test_readyz_reports_each_dependency_with_timings(settings: Any, factory: Any, tmp_path: Path) -> None:
    maildir = tmp_path / "maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    client = _app(
        settings,
        mailbox_kind="maildir",
        maildir_path=maildir,
        resolver_kind="zonefile",
        resolver_zone_files=[str(p) for p in DEMO_ZONES],
    )
    response = client.get("/readyz")
    body = response.get_json()
    assert response.status_code == 200 and body["status"] == "ready"
    assert set(body["checks"]) == {"database", "mailbox", "dns_resolver"}
    assert all(c["ok"] and c["ms"] >= 0 for c in body["checks"].values())


def test_readyz_is_503_when_a_required_dependency_fails(settings: Any, factory: Any, tmp_path: Path) -> None:
    client = _app(
        settings,
        mailbox_kind="maildir",
        maildir_path=tmp_path / "missing",
        resolver_kind="zonefile",
        resolver_zone_files=[str(tmp_path / "gone.zone")],
        redis_url="redis://127.0.0.1:1/0",
    )
    response = client.get("/readyz")
    body = response.get_json()
    assert response.status_code == 503 and body["status"] == "not_ready"
    assert body["checks"]["database"]["ok"]
    assert not body["checks"]["mailbox"]["ok"] and "not a Maildir" in body["checks"]["mailbox"]["detail"]
    assert (
        not body["checks"]["dns_resolver"]["ok"] and "gone.zone" in body["checks"]["dns_resolver"]["detail"]
    )
    # Redis is optional unless Huey stores its queue there: reported, but not a reason for 503 alone
    assert body["checks"]["redis"] == body["checks"]["redis"] | {"ok": False, "required": False}


def test_readyz_checks_a_real_resolver_and_redis(settings: Any, factory: Any, knot: Any) -> None:
    client = _app(
        settings,
        resolver_kind="dns",
        resolvers=[knot.nameserver],
        redis_url="redis://127.0.0.1:6379/0",
        huey_storage="redis",
    )
    body = client.get("/readyz").get_json()
    assert body["status"] == "ready", body
    assert body["checks"]["redis"] == body["checks"]["redis"] | {
        "ok": True,
        "required": True,
        "detail": "PONG",
    }
    assert body["checks"]["dns_resolver"]["ok"]


def test_dead_resolver_makes_it_not_ready(settings: Any, factory: Any, dead_dns: Any) -> None:
    client = _app(settings, resolver_kind="dns", resolvers=[f"{dead_dns.host}:{dead_dns.port}"])
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "Timeout" in response.get_json()["checks"]["dns_resolver"]["detail"]


def test_request_id_is_echoed_or_generated(client: Any) -> None:
    given = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    generated = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"}).headers["X-Request-ID"]
    assert len(generated) == 32 and generated != "abc-123"


@pytest.mark.parametrize("path", ["/readyz", "/metrics", "/healthz"])
def test_ops_endpoints_need_no_sign_in(client: Any, path: str) -> None:
    assert client.get(path).status_code in (200, 503)


# ---- long ranges fan out into chunks -----------------------------------------------------------------
def test_a_long_range_fans_out_into_chunk_tasks(factory: Any, settings: Any, monkeypatch: Any) -> None:
    from tests.integration.ui_support import make_case
    from tmsi import jobs
    from tmsi.models import CaseTarget, DnsCheck, RunStatus, VerificationRun

    monkeypatch.setattr(jobs, "CHUNK_ADDRESSES", 64)  # a /24 stands in for a /16 (documentation ranges only)
    settings.resolver_kind = "zonefile"
    settings.resolver_zone_files = [str(p) for p in DEMO_ZONES]
    reference = make_case(factory, targets=("192.0.2.0/24",), listings=("192.0.2.0/24",))
    with factory() as s:
        target_id = s.scalar(select(CaseTarget.id).join(Case).where(Case.reference == reference))
    calls: list[tuple[Any, ...]] = []
    real_chunk = jobs.run_target

    def spy(target: str, *args: Any) -> Any:
        calls.append((target, *args[2:]))
        return real_chunk(target, *args)

    monkeypatch.setattr(jobs, "run_target", spy)
    app = build_huey(settings, factory=factory)
    assert app.tasks["verify_target"](target_id).get() == 4  # four chunk work items were enqueued
    chunks = sorted(c[2] for c in calls)
    assert chunks == ["192.0.2.0/26", "192.0.2.128/26", "192.0.2.192/26", "192.0.2.64/26"]
    with factory() as s:
        run = s.scalars(select(VerificationRun).where(VerificationRun.target_id == target_id)).one()
        assert run.status == RunStatus.DONE and run.done == 256 and run.total >= 256
        assert set(run.summary["chunks"]) == set(chunks)
        # the demo zone has static names at .25-.27: those pass, the rest of the /24 does not
        assert run.passed == 3 and run.failed + run.unverifiable == 253
        assert s.scalar(select(func.count(DnsCheck.id)).where(DnsCheck.run_id == run.id)) >= 253
    # nothing is left over for the lost-chunk sweep
    assert jobs.unfinished_chunks(settings, factory) == []


def test_chunks_whose_task_was_lost_are_found_again(factory: Any, settings: Any, monkeypatch: Any) -> None:
    from tests.integration.ui_support import make_case
    from tmsi import jobs
    from tmsi.models import CaseTarget, VerificationRun
    from tmsi.services import verify

    reference = make_case(factory, targets=("192.0.2.0/24",), listings=("192.0.2.0/24",))
    with factory() as s:
        target_id = s.scalar(select(CaseTarget.id).join(Case).where(Case.reference == reference))
    items = verify.job_plan_chunks(settings, factory, target_id, size=128)
    assert len(items) == 2
    assert jobs.unfinished_chunks(settings, factory) == []  # just planned: its tasks are still in flight
    with unit_of_work(factory) as s:  # ... five minutes later, no chunk has reported back
        run = s.get_one(VerificationRun, items[0][0])
        run.started_at = utcnow() - timedelta(minutes=6)
    assert sorted(jobs.unfinished_chunks(settings, factory)) == sorted(items)


def test_access_log_is_structured_and_carries_the_request_id(client: Any) -> None:
    import io
    import json

    from tmsi.logging import configure_logging

    stream = io.StringIO()
    configure_logging("INFO", json_logs=True, stream=stream)
    try:
        client.get("/api/v1/listings?ip=192.0.2.1", headers={"X-Request-ID": "req-77"})
        client.get("/healthz")  # health probes are logged at debug level only
    finally:
        configure_logging("INFO", json_logs=False)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [r for r in records if r["logger"] == "tmsi.access"]
    assert len(access) == 1, records
    assert access[0]["request_id"] == "req-77" and access[0]["path"] == "/api/v1/listings"
    assert access[0]["method"] == "GET" and isinstance(access[0]["duration_ms"], float)


# ---- the CLI runs the same job functions ---------------------------------------------------------------
def test_cli_jobs_list_and_run(factory: Any, database_url: str, tmp_path: Path, monkeypatch: Any) -> None:
    import json
    import os

    from click.testing import CliRunner

    from tmsi.cli import main

    for key in [k for k in os.environ if k.startswith("TMSI_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("TMSI_DATABASE_URL", database_url)
    monkeypatch.setenv("TMSI_RETENTION_DAYS", "30")
    monkeypatch.setenv("TMSI_INSTANCE_PATH", str(tmp_path))
    with unit_of_work(factory) as s:
        _case_with_mail(s, closed_days_ago=60, raw=b"Subject: x\r\n\r\ny")
    runner = CliRunner()
    listed = runner.invoke(main, ["jobs", "list"])
    assert listed.exit_code == 0, listed.output
    assert "purge_raw_mail" in listed.output and "every   86400s  on" in listed.output
    ran = runner.invoke(main, ["jobs", "run", "purge_raw_mail"])
    assert ran.exit_code == 0, ran.output
    outcome = json.loads(ran.output.strip().splitlines()[-1])
    assert outcome["ran"] is True and "messages=1" in outcome["result"]
    unknown = runner.invoke(main, ["jobs", "run", "no_such_job"])
    assert unknown.exit_code == 2 and "unknown job" in unknown.output


def test_cli_demo_fill_mailbox_delivers_the_samples(tmp_path: Path, monkeypatch: Any) -> None:
    import mailbox as mailbox_mod

    from click.testing import CliRunner

    from tmsi.cli import main

    monkeypatch.setenv("TMSI_MAILBOX_KIND", "maildir")
    monkeypatch.setenv("TMSI_MAILDIR_PATH", str(tmp_path / "md"))
    result = CliRunner().invoke(main, ["demo", "fill-mailbox"])
    assert result.exit_code == 0, result.output
    box = mailbox_mod.Maildir(str(tmp_path / "md"), create=False)
    subjects = sorted(str(m["Subject"]) for m in box)
    assert len(subjects) == 6 and any("198.51.100.77" in s for s in subjects)
    monkeypatch.setenv("TMSI_MAILBOX_KIND", "none")
    refused = CliRunner().invoke(main, ["demo", "fill-mailbox"])
    assert refused.exit_code == 2
