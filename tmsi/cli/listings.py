"""``tmsi listings``: import, look up and export the listings store."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from sqlalchemy.orm import Session, sessionmaker

from tmsi.config import load_settings
from tmsi.db import make_engine, make_sessionmaker, unit_of_work
from tmsi.domain.listfile import Entry, FileFormat, LineError, parse_listing_file
from tmsi.domain.networks import NetworkError, parse_network
from tmsi.services.listings import import_entries, lookup


def _factory() -> sessionmaker[Session]:
    return make_sessionmaker(make_engine(load_settings().database_url))


@click.group("listings")
def listings() -> None:
    """The listings store (what the DNSBL serves)."""


@listings.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "rbldnsd"]), default=None, help="default: sniffed")
@click.option("--strict", is_flag=True, help="import nothing if any line is bad")
@click.option("--source", default="import", show_default=True)
def import_cmd(file: Path, fmt: FileFormat | None, strict: bool, source: str) -> None:
    """Import FILE (CSV network,reason,listed_at or rbldnsd ip4set/ip6trie). Idempotent."""
    text = file.read_bytes().decode("utf-8", errors="replace")
    entries: list[Entry] = []
    errors: list[LineError] = []
    for item in parse_listing_file(text, fmt):
        if isinstance(item, LineError):
            errors.append(item)
        else:
            entries.append(item)
    for err in errors:
        click.echo(f"{file}:{err.line}: {err.reason}: {err.text!r}", err=True)
    if errors and strict:
        click.echo(f"--strict: {len(errors)} bad line(s), nothing imported", err=True)
        sys.exit(1)
    with unit_of_work(_factory()) as session:
        report = import_entries(session, entries, source=source)
    summary = report.as_dict() | {"errors": len(errors)}
    click.echo(json.dumps(summary))
    if errors:
        sys.exit(1)


@listings.command("lookup")
@click.argument("query")
def lookup_cmd(query: str) -> None:
    """Print every listing that covers or overlaps ADDRESS|CIDR, as JSON."""
    try:
        network = parse_network(query)
    except NetworkError as exc:
        raise click.BadParameter(str(exc), param_hint="QUERY") from None
    with _factory()() as session:
        click.echo(json.dumps(lookup(session, network), indent=2))


@listings.command("export")
@click.option("--format", "fmt", type=click.Choice(["rbldnsd"]), default="rbldnsd", show_default=True)
@click.argument("out", type=click.Path(dir_okay=True))  # a str: a trailing "/" means "a directory"
def export_cmd(fmt: str, out: str) -> None:
    """Write the active listings as an rbldnsd zone to OUT (temp file + rename: never half-written).

    OUT is a file (one combined dataset: ip4set and ip6trie sections) or a directory (an existing one, or
    a path ending in "/"), which receives ``<zone>.ip4set`` and ``<zone>.ip6trie``.
    """
    from tmsi.services.export import export_zone

    settings = load_settings()
    with _factory()() as session:
        result = export_zone(session, settings, out)
    click.echo(json.dumps(result))
