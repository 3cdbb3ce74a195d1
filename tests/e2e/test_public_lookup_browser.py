"""The public lookup page in headless Chromium: look an address up, read why and what to do, press
"Check my rDNS now" (a CSRF-protected POST) and read each step of the live check against real Knot."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.serving import make_server

from tmsi.db import unit_of_work
from tmsi.domain.listfile import Entry
from tmsi.services.listings import import_entries

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture
def public_server(settings: Any, factory: Any, knot: Any) -> Iterator[str]:
    from tmsi import create_app

    settings.resolvers = [knot.nameserver]
    app = create_app(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="public-e2e", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)


def test_lookup_and_live_check_in_a_browser(
    public_server: str, chromium_page: Any, factory: Any, knot: Any, settings: Any
):
    from playwright.sync_api import expect

    with unit_of_work(factory) as session:
        import_entries(session, [Entry(1, ipaddress.ip_network("203.0.113.0/24"), "generic rDNS", None)])
    knot.update_ptr("203.0.113.61", "static-61.isp.example")
    knot.update_a("static-61.isp.example", "203.0.113.61")
    page = chromium_page
    try:
        page.goto(f"{public_server}/lookup")
        page.fill("#ip", "203.0.113.61")
        page.click("button[type=submit]")
        expect(page.locator("#verdict")).to_have_text("203.0.113.61 is listed")
        expect(page.locator("#result")).to_contain_text("generic rDNS")
        expect(page.locator("#steps li")).to_have_count(3)
        expect(page.locator("#steps")).to_contain_text(settings.mailbox_address)

        page.click("#check-now")
        expect(page.locator("#check h2")).to_contain_text("clearly static")
        expect(page.locator("#check")).to_contain_text("61.113.0.203.in-addr.arpa")
        expect(page.locator("#check")).to_contain_text("static-61.isp.example")
        expect(page.locator("#name-verdict")).to_have_text("static")
    finally:
        knot.delete("203.0.113.61")
        knot.delete("static-61.isp.example")
