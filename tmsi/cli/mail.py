"""``tmsi mail``: the mailbox front door. ``explain`` shows, without writing anything, what ingest decides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tmsi.config import ConfigError, load_settings
from tmsi.domain.classify import explain


def explain_file(path: str, settings: Any) -> dict[str, Any]:
    """The explain object of one file; a file that cannot be read gets ``{"file", "error"}``."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        return {"file": path, "error": f"cannot read: {exc.strerror or exc}"}
    from tmsi.services.authority import authority_summary

    try:
        return explain(
            raw, path, settings, annotate=lambda parsed: {"authority": authority_summary(parsed, settings)}
        )
    except Exception as exc:  # a bug on one message must not hide the explanation of the others
        return {"file": path, "error": f"cannot explain: {type(exc).__name__}: {exc}"}


@click.group("mail")
def mail() -> None:
    """Mailbox intake: poll the mailbox, ingest files, reprocess, send the outbox, explain a decision."""


@mail.command("explain")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=True))
def explain_cmd(files: tuple[str, ...]) -> None:
    """Print, for each FILE (an RFC 822 message), one JSON object per line: kind, whether we would
    acknowledge it, the targets, masked addresses, the thread reference, DMARC authenticity, reasons, and
    the authority view (our MTA's trusted results, sender flags; no network look-ups).
    Nothing is written to the database."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    for path in files:
        click.echo(json.dumps(explain_file(path, settings), ensure_ascii=False))


# --- the ingest pipeline: poll, ingest files, reprocess, send (same functions as the scheduled jobs) ----


def _factory(settings: Any) -> Any:
    from tmsi.db import make_engine, make_sessionmaker

    return make_sessionmaker(make_engine(settings.database_url))


@mail.command("poll")
@click.option("--watch", is_flag=True, help="keep polling; wait with IMAP IDLE between passes where offered")
@click.option("--limit", type=int, default=None, help="process at most N new messages in this pass")
def poll_cmd(watch: bool, limit: int | None) -> None:
    """One pass over the configured mailbox (TMSI_MAILBOX_KIND=imap|maildir); prints a JSON report.

    Each message is stored and processed in its own transaction and moved to the Processed (or
    Quarantine) folder only after the commit."""
    from tmsi.adapters.mailbox import mailbox_from_settings
    from tmsi.services.poller import poll_once, watch_mailbox

    settings = load_settings()
    mailbox = mailbox_from_settings(settings)
    if mailbox is None:
        raise click.ClickException("TMSI_MAILBOX_KIND is none: set it to imap or maildir")
    factory = _factory(settings)
    try:
        if watch:
            watch_mailbox(settings, factory, mailbox)
            return
        report = poll_once(settings, factory, mailbox, limit=limit)
    finally:
        mailbox.close()
    click.echo(json.dumps(report.as_dict()))
    if report.errors:
        raise SystemExit(1)


@mail.command("ingest")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def ingest_cmd(files: tuple[str, ...]) -> None:
    """Run the ingest pipeline on FILE.eml... (imports, tests): one JSON result per file and line."""
    from tmsi.db import unit_of_work
    from tmsi.services.ingest import process_message

    settings = load_settings()
    factory = _factory(settings)
    failed = False
    for path in files:
        raw = Path(path).read_bytes()
        try:
            with unit_of_work(factory) as session:
                result = process_message(session, raw, settings, source=f"file:{Path(path).resolve()}")
        except Exception as exc:  # report and go on with the other files
            failed = True
            click.echo(json.dumps({"file": path, "error": f"{type(exc).__name__}: {exc}"}))
            continue
        click.echo(json.dumps({"file": path, **result.as_dict()}, ensure_ascii=False))
    if failed:
        raise SystemExit(1)


@mail.command("reprocess")
@click.argument("message_id", type=int)
@click.option("--actor", default="cli", show_default=True, help="who asked (recorded in the audit log)")
def reprocess_cmd(message_id: int, actor: str) -> None:
    """Run quarantined message MESSAGE_ID (the database id) through the pipeline again."""
    from tmsi.db import unit_of_work
    from tmsi.services.ingest import reprocess_message

    settings = load_settings()
    try:
        with unit_of_work(_factory(settings)) as session:
            result = reprocess_message(session, message_id, settings, actor=actor)
    except (LookupError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result.as_dict(), ensure_ascii=False))


@mail.command("send")
@click.option("--limit", type=int, default=100, show_default=True)
def send_cmd(limit: int) -> None:
    """One outbox pass: send the due rows through TMSI_SMTP_*; prints a JSON report."""
    from tmsi.adapters.mailer import SmtpMailer
    from tmsi.services.outbox import send_due

    settings = load_settings()
    report = send_due(_factory(settings), SmtpMailer.from_settings(settings), settings, limit=limit)
    click.echo(json.dumps(report.as_dict()))


@mail.command("process")
@click.option("--limit", type=int, default=500, show_default=True)
def process_cmd(limit: int) -> None:
    """Process mail the poller stored without processing (TMSI_INGEST_DEFER=true); prints a JSON report.
    Several of these may run at once (on PostgreSQL each message is claimed with SKIP LOCKED)."""
    from tmsi.services.ingest import process_stored_batch

    settings = load_settings()
    report = process_stored_batch(settings, _factory(settings), limit=limit)
    click.echo(json.dumps(report.as_dict()))
    if report.errors:
        raise SystemExit(1)
