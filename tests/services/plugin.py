"""pytest plugin: real services on free random loopback ports, started once per session.

Fixtures (each skips with a reason only when its binary is missing):

``dovecot``            Dovecot IMAP (host, port, tls_port, user, password, ca_file, client(), append()).
``knot``               Knot DNS with the standard test zones (see tests.services.knot), update_ptr(),
                       update_a(), delete(), resolver(), nameserver ("host:port").
``knot_server``        factory: ``with knot_server({zone: master_text}) as k:`` for a custom zone set.
``dead_dns``           a loopback UDP/TCP port that reads queries and never answers (timeouts).
``rbldnsd``            factory: ``rbldnsd(zone, data_dir)`` serving the data dir's *.ip4set/*.ip6trie;
                       stopped after the test (``rbldnsd_session`` lives for the session); reload() = SIGHUP.
``smtp_sink``          aiosmtpd sink: messages, wait_for(n, timeout), clear(), parsed(i). Session-wide:
                       call ``clear()`` first in a test that counts messages.
``chromium_browser``   a Playwright sync ``Browser`` on /usr/bin/chromium; ``chromium_page`` = a fresh page.

All daemons get SIGTERM when their fixture ends; the session then waits for all of them at once.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import chromium as chromium_svc
from tests.services import dovecot as dovecot_svc
from tests.services import knot as knot_svc
from tests.services import rbldnsd as rbldnsd_svc
from tests.services import smtpsink
from tests.services.ports import Reaper


def require_or_skip(reason: str) -> None:
    """Skip on a developer machine without the package; fail where the services are required (make test)."""
    if os.environ.get("TMSI_REQUIRE_SERVICES"):
        pytest.fail(f"required test service unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def _service_reaper() -> Iterator[Reaper]:
    reaper = Reaper()
    yield reaper
    reaper.wait()


@pytest.fixture(scope="session")
def dovecot_server(_service_reaper: Reaper) -> Iterator[dovecot_svc.Dovecot]:
    if not dovecot_svc.available():
        require_or_skip(f"{dovecot_svc.DOVECOT} (Debian dovecot-imapd) is not installed")
    with dovecot_svc.dovecot_server(_service_reaper) as server:
        yield server


@pytest.fixture(scope="session")
def dovecot(dovecot_server: dovecot_svc.Dovecot) -> dovecot_svc.Dovecot:
    return dovecot_server


@pytest.fixture(scope="session")
def knot_server(_service_reaper: Reaper) -> Callable[..., contextlib.AbstractContextManager[knot_svc.Knot]]:
    if not knot_svc.available():
        require_or_skip(f"{knot_svc.KNOTD} (Debian knot) is not installed")
    return functools.partial(knot_svc.knot_server, reaper=_service_reaper)


@pytest.fixture(scope="session")
def knot(knot_server: Callable[..., contextlib.AbstractContextManager[Any]]) -> Iterator[knot_svc.Knot]:
    with knot_server() as server:
        yield server


@pytest.fixture(scope="session")
def dead_dns() -> Iterator[Any]:
    server = knot_svc.DeadDns()
    yield server
    server.close()


def _rbldnsd_factory(reaper: Reaper) -> Iterator[Callable[..., rbldnsd_svc.Rbldnsd]]:
    if not rbldnsd_svc.available():
        require_or_skip(f"{rbldnsd_svc.RBLDNSD} (Debian rbldnsd) is not installed")
    with contextlib.ExitStack() as stack:

        def start(zone: str, data_dir: Path | str, datasets: Any = None) -> rbldnsd_svc.Rbldnsd:
            return stack.enter_context(rbldnsd_svc.rbldnsd_server(zone, data_dir, datasets, reaper=reaper))

        yield start


@pytest.fixture
def rbldnsd(_service_reaper: Reaper) -> Iterator[Callable[..., Any]]:
    yield from _rbldnsd_factory(_service_reaper)


@pytest.fixture(scope="session")
def rbldnsd_session(_service_reaper: Reaper) -> Iterator[Callable[..., Any]]:
    yield from _rbldnsd_factory(_service_reaper)


@pytest.fixture(scope="session")
def smtp_sink() -> Iterator[smtpsink.SmtpSink]:
    try:
        import aiosmtpd  # noqa: F401
    except ImportError:
        require_or_skip("aiosmtpd is not installed")
    sink = smtpsink.SmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
def chromium_browser() -> Iterator[Any]:
    reason = chromium_svc.missing()
    if reason:
        require_or_skip(reason)
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(
            executable_path=chromium_svc.CHROMIUM, headless=True, args=chromium_svc.ARGS
        )
        yield browser
        browser.close()
    finally:
        playwright.stop()


@pytest.fixture
def chromium_page(chromium_browser: Any) -> Iterator[Any]:
    context = chromium_browser.new_context()
    page = context.new_page()
    yield page
    context.close()
