"""docker-compose.yml against the Compose Specification schema (Docker does not run here), plus the
deployment rules the schema cannot express: migrations once before web/worker, health checks,
a scalable worker, named volumes shared by the exporter and rbldnsd."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    return data


def test_compose_file_validates_against_the_compose_spec(
    compose: dict[str, Any], schema: dict[str, Any]
) -> None:
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_the_schema_rejects_a_broken_file(compose: dict[str, Any], schema: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["web"]["depends_on"]["migrate"]["condition"] = "when_ready"
    broken["services"]["worker"]["healthcheck"]["intervall"] = "5s"
    assert len(list(jsonschema.Draft7Validator(schema).iter_errors(broken))) == 2


def test_services_and_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "web", "worker", "rbldnsd", "dovecot"} <= set(services)
    checks = {
        name: " ".join(svc["healthcheck"]["test"]) for name, svc in services.items() if "healthcheck" in svc
    }
    assert "pg_isready" in checks["postgres"]
    assert "redis-cli ping" in checks["redis"]
    assert "/healthz" in checks["web"]
    assert {"worker", "rbldnsd", "dovecot"} <= set(checks)


def test_migrations_run_once_before_web_and_worker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "tmsi db upgrade" in " ".join(services["migrate"]["command"])
    # the first export happens there too, so rbldnsd never starts without its data files
    assert services["rbldnsd"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert services["migrate"]["restart"] == "no"
    for name in ("web", "worker"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert services[name]["depends_on"]["redis"] == {"condition": "service_healthy"}
    assert services["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy"}


def test_worker_scales_and_web_runs_several_gunicorn_workers(compose: dict[str, Any]) -> None:
    worker, web = compose["services"]["worker"], compose["services"]["web"]
    # `--scale worker=N` needs no fixed container name and no published port
    assert "container_name" not in worker and "ports" not in worker
    assert worker["command"][:2] == ["tmsi", "worker"]
    assert web["command"][0] == "gunicorn" and "--workers" in web["command"]
    env = worker["environment"]
    assert env["TMSI_HUEY_STORAGE"] == "redis" and env["TMSI_DATABASE_URL"].startswith(
        "postgresql+psycopg://"
    )
    assert worker["environment"] is web["environment"]  # one configuration for every app container


def test_zone_volume_is_shared_by_exporter_and_rbldnsd(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "zone:/var/lib/tmsi/zone" in services["worker"]["volumes"]
    assert "zone:/zone:ro" in services["rbldnsd"]["volumes"]
    assert compose["services"]["worker"]["environment"]["TMSI_ZONE_DIR"] == "/var/lib/tmsi/zone"
    assert {"pgdata", "redisdata", "zone", "maildata"} <= set(compose["volumes"])
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]


def test_dockerfile_builds_the_app_image() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11" in text
    assert "USER tmsi" in text and "tmsi.wsgi:app" in text
