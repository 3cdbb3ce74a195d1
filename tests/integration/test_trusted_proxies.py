"""Behind a reverse proxy (TMSI_TRUSTED_PROXIES=1) the client's address and scheme come from the proxy's
X-Forwarded-* headers: each client has its own rate limit and is logged as itself. Without it the headers
are ignored, so a client cannot forge its way out of a rate limit."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tmsi import create_app
from tmsi.logging import configure_logging

pytestmark = pytest.mark.integration


@pytest.fixture
def proxied(settings: Any, factory: Any) -> Iterator[Any]:
    application = create_app(
        settings.model_copy(update={"trusted_proxies": 1, "public_lookup_rate_limit": "2 per minute"})
    )
    application.config.update(TESTING=True)
    yield application
    application.extensions["tmsi.db"].dispose()


def _lookups(client: Any, forwarded_for: str, times: int) -> list[int]:
    headers = {"X-Forwarded-For": forwarded_for}
    return [client.get("/api/v1/lookup?ip=192.0.2.1", headers=headers).status_code for _ in range(times)]


def test_behind_a_proxy_each_forwarded_client_has_its_own_rate_limit(proxied: Any) -> None:
    client = proxied.test_client()
    assert _lookups(client, "203.0.113.5", 3) == [200, 200, 429]
    assert _lookups(client, "203.0.113.6", 1) == [200]
    # the proxy appends the client it saw: only the last hop counts, an earlier forged one does not
    assert _lookups(client, "198.51.100.1, 203.0.113.5", 1) == [429]


def test_without_trusted_proxies_forwarded_headers_are_ignored(app: Any) -> None:
    app.config["TMSI"].public_lookup_rate_limit = "2 per minute"
    client = app.test_client()
    assert _lookups(client, "203.0.113.5", 2) == [200, 200]
    assert _lookups(client, "203.0.113.6", 1) == [429]  # same peer, whatever it claims


def test_behind_a_proxy_the_access_log_and_scheme_are_the_clients(proxied: Any) -> None:
    stream = io.StringIO()
    configure_logging("INFO", json_logs=True, stream=stream)
    try:
        answer = proxied.test_client().get(
            "/login", headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
        )
    finally:
        configure_logging("INFO", json_logs=False)
    assert answer.status_code == 200
    access = [json.loads(line) for line in stream.getvalue().splitlines()]
    (record,) = [r for r in access if r["logger"] == "tmsi.access"]
    assert record["remote_addr"] == "203.0.113.9"
    assert answer.headers["Strict-Transport-Security"] == "max-age=31536000"  # the client's https


def test_hsts_only_over_https(app: Any, proxied: Any) -> None:
    assert "Strict-Transport-Security" not in app.test_client().get("/login").headers
    forged = app.test_client().get("/login", headers={"X-Forwarded-Proto": "https"})
    assert "Strict-Transport-Security" not in forged.headers  # no trusted proxy: the header is ignored
    direct = app.test_client().get("/login", base_url="https://tmsi.example")
    assert direct.headers["Strict-Transport-Security"] == "max-age=31536000"
