"""``tmsi mail``: the mailbox front door. ``explain`` shows, without writing anything, what ingest decides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tmsi.config import load_settings
from tmsi.domain.classify import explain


def explain_file(path: str, settings: Any) -> dict[str, Any]:
    """The explain object of one file; a file that cannot be read gets ``{"file", "error"}``."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        return {"file": path, "error": f"cannot read: {exc.strerror or exc}"}
    return explain(raw, path, settings)


@click.group("mail")
def mail() -> None:
    """Mailbox intake: explain what ingest would decide for a message."""


@mail.command("explain")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=True))
def explain_cmd(files: tuple[str, ...]) -> None:
    """Print, for each FILE (an RFC 822 message), one JSON object per line: kind, whether we would
    acknowledge it, the targets, masked addresses, the thread reference, DMARC authenticity and reasons.
    Nothing is written to the database."""
    settings = load_settings()
    for path in files:
        click.echo(json.dumps(explain_file(path, settings), ensure_ascii=False))
