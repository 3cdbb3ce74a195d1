"""The schedule table, interval overrides, periodic validators, and structured logging (no database)."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime

import pytest

from tmsi.config import ConfigError, Settings
from tmsi.jobs import (
    SCHEDULE_BY_NAME,
    SCHEDULES,
    JobUnavailable,
    interval,
    lease_seconds,
    minute_validator,
    parse_job_intervals,
    resolve,
)
from tmsi.logging import bound, configure_logging


def _settings(**kw: object) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[arg-type]


def test_every_schedule_has_a_unique_name_and_a_module_function_target() -> None:
    names = [s.name for s in SCHEDULES]
    assert len(names) == len(set(names))
    for schedule in SCHEDULES:
        module, _, func = schedule.target.partition(":")
        assert module.startswith("tmsi.") and func, schedule
        assert schedule.every(_settings()) > 0


def test_the_issue_schedules_are_all_listed() -> None:
    wanted = {
        "poll_mailbox",
        "reverify_due",
        "send_outbox",
        "export_zone",
        "regression_watch",
        "check_propagation",
        "purge_raw_mail",
    }
    assert wanted <= set(SCHEDULE_BY_NAME)
    assert SCHEDULE_BY_NAME["poll_mailbox"].singleton
    assert SCHEDULE_BY_NAME["export_zone"].singleton
    assert SCHEDULE_BY_NAME["purge_raw_mail"].singleton


def test_resolve_reports_a_job_that_has_not_landed() -> None:
    with pytest.raises(JobUnavailable, match="does not exist"):
        resolve("tmsi.services.no_such_module:job_x")
    with pytest.raises(JobUnavailable, match="has no job_nothing"):
        resolve("tmsi.services.retention:job_nothing")
    assert callable(resolve("tmsi.services.retention:job_purge_raw_mail"))


def test_enabled_follows_configuration() -> None:
    off = _settings()
    on = _settings(mailbox_kind="maildir", retention_days=30, demo=True)
    for name in ("poll_mailbox", "purge_raw_mail", "demo_fix_zone"):
        assert not SCHEDULE_BY_NAME[name].enabled(off)
        assert SCHEDULE_BY_NAME[name].enabled(on)


def test_interval_overrides_and_poll_lease() -> None:
    settings = _settings(
        job_intervals="send_outbox=5s,reverify_due=2m,poll_mailbox=20", poll_interval_seconds=90
    )
    assert parse_job_intervals(settings) == {"send_outbox": 5.0, "reverify_due": 120.0, "poll_mailbox": 20.0}
    assert interval(SCHEDULE_BY_NAME["send_outbox"], settings) == 5.0
    assert interval(SCHEDULE_BY_NAME["export_zone"], settings) == 15.0
    # the poll lease follows the poll interval (renewed while running), never below 30 s
    assert lease_seconds(SCHEDULE_BY_NAME["poll_mailbox"], settings) == 60.0
    assert lease_seconds(SCHEDULE_BY_NAME["poll_mailbox"], _settings(poll_interval_seconds=90)) == 270.0
    assert lease_seconds(SCHEDULE_BY_NAME["export_zone"], settings) == 600.0


@pytest.mark.parametrize("bad", ["nope=5s", "send_outbox=", "send_outbox=-3", "send_outbox=fast"])
def test_a_bad_interval_override_names_the_variable(bad: str) -> None:
    with pytest.raises(ConfigError, match="TMSI_JOB_INTERVALS") as err:
        parse_job_intervals(_settings(job_intervals=bad))
    assert bad.split("=")[0] in str(err.value)


def test_minute_validator_fires_every_n_minutes() -> None:
    every_5 = minute_validator(300)
    fired = [m for m in range(60) if every_5(datetime(2026, 11, 29, 10, m, tzinfo=UTC))]
    assert fired == list(range(0, 60, 5))
    every_minute = minute_validator(10)  # sub-minute jobs tick every minute and spread inside it
    assert all(every_minute(datetime(2026, 11, 29, 10, m, tzinfo=UTC)) for m in range(60))
    daily = minute_validator(86400)
    assert sum(daily(datetime(2026, 11, 29, h, m, tzinfo=UTC)) for h in range(24) for m in range(60)) == 1


def test_json_logs_carry_request_case_and_job() -> None:
    stream = io.StringIO()
    configure_logging("INFO", json_logs=True, stream=stream)
    try:
        with bound(request_id="rid-1", case_id=42), bound(job="send_outbox"):
            logging.getLogger("tmsi.test").info("sent %d", 3, extra={"outbox_id": 7})
        logging.getLogger("tmsi.test").warning("outside")
    finally:
        configure_logging("INFO", json_logs=False)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "sent 3"
    assert (first["request_id"], first["case_id"], first["job"], first["outbox_id"]) == (
        "rid-1",
        "42",
        "send_outbox",
        7,
    )
    assert first["level"] == "INFO" and first["logger"] == "tmsi.test"
    assert second["request_id"] == "" and second["level"] == "WARNING"


def test_deferred_ingest_is_processed_only_when_enabled() -> None:
    schedule = SCHEDULE_BY_NAME["process_stored"]
    assert callable(resolve(schedule.target))
    assert not schedule.enabled(_settings())
    assert schedule.enabled(_settings(ingest_defer=True))


def test_a_concurrent_update_is_retried_then_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.orm.exc import StaleDataError

    import tmsi.jobs as jobs

    monkeypatch.setattr(jobs.time, "sleep", lambda _s: None)
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise StaleDataError(
                "UPDATE statement on table 'cases' expected to update 1 row(s); 0 were matched."
            )
        return "done"

    assert jobs.retry_on_conflict("evaluate_authority", flaky) == "done" and len(calls) == 3

    def always() -> str:
        raise StaleDataError("conflict")

    with pytest.raises(StaleDataError):
        jobs.retry_on_conflict("evaluate_authority", always)
