"""``tmsi authority``: the RDAP bootstrap data and evaluating a case's authority by hand."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tmsi.adapters.rdap import bootstrap_dir, install_bootstrap
from tmsi.config import load_settings


@click.group("authority")
def authority() -> None:
    """Who may ask for a delisting: RDAP bootstrap, authority evaluation."""


@authority.command("refresh-bootstrap")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def refresh_bootstrap(files: tuple[Path, ...]) -> None:
    """Replace the RDAP bootstrap with downloaded IANA files (ipv4.json / ipv6.json from data.iana.org/rdap).

    Each FILE is validated first; nothing is replaced if any is invalid. The target directory is
    TMSI_RDAP_BOOTSTRAP_DIR, or the files shipped with tmsi.
    """
    target = bootstrap_dir(load_settings().rdap_bootstrap_dir)
    try:
        done = install_bootstrap(files, target)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for path, kind in done:
        click.echo(f"{path} -> {target / (kind + '.json')}")


@authority.command("evaluate")
@click.argument("reference")
@click.option("--json", "as_json", is_flag=True, help="print the stored evidence as JSON")
def evaluate(reference: str, as_json: bool) -> None:
    """Evaluate the authority of case REFERENCE's latest inbound mail now (DNS and RDAP), and commit."""
    from tmsi.adapters.rdap import HttpRdap
    from tmsi.db import make_engine, make_sessionmaker, unit_of_work
    from tmsi.services.authority import evaluate_case_authority, shared_dns
    from tmsi.services.cases import get_by_reference

    settings = load_settings()
    factory = make_sessionmaker(make_engine(settings.database_url))
    with unit_of_work(factory) as session:
        case = get_by_reference(session, reference)
        if case is None:
            raise click.ClickException(f"no case {reference}")
        try:
            result = evaluate_case_authority(
                session, case, None, settings, shared_dns(settings), HttpRdap.from_settings(settings)
            )
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        if as_json:
            click.echo(json.dumps(case.authority_evidence, indent=2, default=str))
            return
    click.echo(f"{reference}: authority {result.result.value}")
    for reason in result.reasons:
        click.echo(f"  {reason}")
    for flag in result.flags:
        click.echo(f"  flag {flag['kind']}: {flag['detail']}")
    if result.reply:
        click.echo(f"  reply: {result.reply}")
