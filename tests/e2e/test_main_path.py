"""The analyst's main path in headless Debian Chromium against a real server, real DNS (Knot) and a real
SMTP sink: sign in → open a case from the queue → verify → delist one address of a range → send the
closing reply (threaded) → the timeline shows it all. Screenshots go to artifacts/."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from tests.integration.ui_support import PASSWORD, add_message, make_case, make_user
from tmsi.db import unit_of_work
from tmsi.models import AuditEvent, Listing, OutboxMessage, OutboxStatus
from tmsi.services import cases

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


@pytest.fixture
def live_server(settings: Any, factory: Any, knot: Any, smtp_sink: Any) -> Iterator[tuple[str, Any]]:
    from tmsi import create_app

    settings.resolvers = [knot.nameserver]
    settings.own_networks = []
    settings.smtp_host, settings.smtp_port = smtp_sink.host, smtp_sink.port
    settings.huey_storage = "memory"  # "verify now" runs the engine in a thread; progress is polled
    app = create_app(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="e2e-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", app
    finally:
        server.shutdown()
        thread.join(5)


def test_main_path(
    live_server: tuple[str, Any], chromium_page: Any, factory: Any, settings: Any, smtp_sink: Any
) -> None:
    from playwright.sync_api import expect

    from tmsi.adapters.mailer import SmtpMailer
    from tmsi.services.outbox import send_due

    base, _app = live_server
    page = chromium_page
    page.on("dialog", lambda dialog: dialog.accept())
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    ARTIFACTS.mkdir(exist_ok=True)
    smtp_sink.clear()
    make_user(factory, "ana@example.test", "analyst")
    make_case(
        factory,
        subject="Older request",
        targets=("198.51.100.0/30",),
        listings=("198.51.100.0/24",),
        waiting_hours=2,
    )
    ref = make_case(
        factory,
        subject=f"Please delist our range {HOSTILE}",
        name=HOSTILE,
        targets=("192.0.2.4/30",),
        listings=("192.0.2.0/24",),
        waiting_hours=30,
    )
    with unit_of_work(factory) as db:
        case = cases.get_by_reference(db, ref)
        add_message(
            db,
            case,
            subject="HTML only",
            body="",
            html='<p id="hello">Hello</p><script>window.parent.__pwned = 3</script>'
            '<img src="http://192.0.2.1/track.png" onerror="window.parent.__pwned = 4">'
            '<iframe src="http://192.0.2.1/"></iframe>',
            message_id="<html-1@isp.example>",
            minutes_ago=5,
        )
        add_message(
            db,
            case,
            subject="Please delist our range",
            body="We fixed 192.0.2.7, please delist.",
            message_id="<req-7@isp.example>",
            minutes_ago=-1,
        )

    # Sign in, and open the case from the queue.
    page.goto(f"{base}/cases")
    assert "/login" in page.url
    page.fill("#email", "ana@example.test")
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    page.wait_for_selector("#queue-table")
    assert page.locator("a.case-link").first.inner_text() == ref  # longest waiting first
    page.screenshot(path=str(ARTIFACTS / "queue.png"), full_page=True)
    page.click(f"a.case-link:text('{ref}')")
    page.wait_for_selector("#case-reference")
    assert page.inner_text("#case-reference") == ref
    assert page.evaluate("window.__pwned") is None  # hostile subject and name are inert text
    assert "<script>window.__pwned" in page.inner_text("#case-subject")
    # The HTML-only message: sanitized, in a sandboxed frame, no script runs and nothing remote loads.
    frame = page.frame_locator("iframe.mail-html")
    expect(frame.locator("p")).to_have_text("Hello")  # nh3 keeps the paragraph, drops the id
    assert page.evaluate("window.__pwned") is None
    assert not [u for u in requested if "192.0.2.1" in u], requested

    # Verify now: the engine checks the 4 addresses against Knot; the page polls the progress.
    page.click("#verify-button")
    page.wait_for_selector(".flash.success")
    # The page's script polls the progress; when the run is done it offers the fresh page with the verdicts.
    expect(page.locator("#verify-done")).to_be_visible(timeout=30000)
    expect(page.locator("span.run-text").first).to_contain_text("done")
    page.click("#verify-done-link")
    page.wait_for_load_state("load")
    verdicts = page.inner_text("#targets-table")
    assert "192.0.2.7" in verdicts and "static-customer-7.isp.example" in verdicts

    # Delist one address of the range: the /24 listing is split around it.
    page.check("#targets-table input[name='targets']")
    page.fill("#delist-only", "192.0.2.7")
    page.fill("#delist-reason", "static PTR, FCrDNS passes")
    page.click("#delist-button")
    page.wait_for_selector(".flash.success")
    assert "Delisted 192.0.2.7/32." in page.inner_text(".flash.success")
    assert page.inner_text("#case-status") == "delisted"
    with factory() as db:
        active = set(db.scalars(select(Listing.network).where(Listing.active.is_(True))))
        assert "192.0.2.0/24" not in active and "192.0.2.6/32" in active and "192.0.2.7/32" not in active

    # The closing reply: template chosen, previewed, sent through the outbox to the SMTP sink.
    page.select_option("#reply-template", "delisted")
    page.click("#compose-button")
    page.wait_for_selector("#reply-body")
    assert "192.0.2.7/32" in page.input_value("#reply-body")
    page.fill("#reply-body", page.input_value("#reply-body") + "\nThank you for fixing the record.\n")
    page.click("#preview-button")
    page.wait_for_selector("#reply-preview")
    assert f"[{ref}]" in page.inner_text("#reply-preview")
    page.click("#send-button")
    page.wait_for_selector(".flash.success")
    report = send_due(factory, SmtpMailer.from_settings(settings), settings)
    assert report.sent == 1, report
    smtp_sink.wait_for(1)
    mail = smtp_sink.parsed(-1)
    assert mail["Subject"].startswith("Re: Please delist our range") and mail["Subject"].endswith(f"[{ref}]")
    assert mail["In-Reply-To"] == "<req-7@isp.example>" and "<req-7@isp.example>" in mail["References"]
    assert mail["To"] == "noc@isp.example" and "Auto-Submitted" not in mail
    body = mail.get_content()
    assert "192.0.2.7/32" in body and "Thank you for fixing the record." in body
    with factory() as db:
        assert db.scalar(select(OutboxMessage.status)) == OutboxStatus.SENT

    # The timeline shows every step.
    page.reload()
    actions = page.locator("#timeline-list li").evaluate_all("items => items.map(i => i.dataset.action)")
    for expected in ("case.opened", "case.verify_requested", "target.delisted", "reply.queued", "mail.sent"):
        assert expected in actions, (expected, actions)
    assert "sent" in page.inner_text("#outbox-table")
    page.screenshot(path=str(ARTIFACTS / "case.png"), full_page=True)
    with factory() as db:
        event = db.scalar(select(AuditEvent).where(AuditEvent.action == "target.delisted"))
        assert event.actor == "ana@example.test" and event.detail["network"] == "192.0.2.7/32"
    assert page.evaluate("window.__pwned") is None
