"""``tmsi rdns``: reverse-DNS names. ``classify`` judges names in bulk, without the app or a database."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any

import click

from tmsi.domain.networks import NetworkError
from tmsi.domain.rdns import Rules, RulesError, as_address, classify_all, default_rules, load_rules

_BATCH = 2000
_encode = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode  # built once: dumps() rebuilds it


@click.group("rdns")
def rdns() -> None:
    """Reverse-DNS names: classify them (static, custom, generic, dynamic)."""


def classify_lines(lines: Iterable[str], rules: Rules) -> Iterator[dict[str, Any]]:
    """One result per ADDRESS<TAB>PTR_NAME line; blank lines and ``#`` comments are skipped.

    Several PTR names of one address go in the second field separated by spaces (all must pass);
    further tab-separated fields are ignored, so a labelled TSV can be fed as it is. Without a tab the
    line is split at its first whitespace.
    """
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t") if "\t" in line else line.strip().split(None, 1)
        if len(fields) < 2:
            yield {"line": number, "error": "expected ADDRESS<TAB>PTR_NAME"}
            continue
        address_text, ptr = fields[0].strip(), fields[1].strip()
        try:
            address = as_address(address_text)
        except NetworkError as exc:
            yield {"line": number, "error": str(exc)}
            continue
        if address.version == 6:  # IPv4 text that parses is already canonical (no leading zeros)
            address_text = str(address)
        result = classify_all(address, ptr.split() or [""], rules)
        yield {"ip": address_text, "ptr": ptr, "verdict": result.verdict.value, "reasons": result.reasons}


def _write(out: IO[str], results: Iterable[dict[str, Any]]) -> None:
    batch: list[str] = []
    for result in results:
        batch.append(_encode(result))
        if len(batch) >= _BATCH:
            out.write("\n".join(batch) + "\n")
            batch.clear()
    if batch:
        out.write("\n".join(batch) + "\n")
    out.flush()


@rdns.command("classify")
@click.argument("file", type=click.File("r", encoding="utf-8", errors="replace"), default="-")
@click.option(
    "--rules",
    "rules_file",
    envvar="TMSI_RDNS_RULES_FILE",
    default="",
    metavar="TOML",
    help="extra per-ISP rules added to the packaged ones (default: $TMSI_RDNS_RULES_FILE)",
)
def classify_cmd(file: IO[str], rules_file: str) -> None:
    """Classify ADDRESS<TAB>PTR_NAME lines from FILE (default stdin) into JSON lines on stdout.

    Each output line is {"ip", "ptr", "verdict", "reasons"}; a bad line gives {"line", "error"} and the
    run goes on.
    """
    try:
        rules = load_rules(rules_file) if rules_file else default_rules()
    except RulesError as exc:
        raise click.ClickException(str(exc)) from None
    _write(sys.stdout, classify_lines(file, rules))


@rdns.command("check")
@click.argument("target")
@click.option(
    "--resolver",
    "resolvers",
    multiple=True,
    metavar="HOST[:PORT]",
    help="DNS server to ask (repeatable; default: $TMSI_RESOLVERS)",
)
@click.option("--timeout", type=float, default=None, help="seconds per attempt (default: $TMSI_DNS_TIMEOUT)")
@click.option("--evidence", is_flag=True, help="print every query and answer in full")
@click.option("--failing-only", is_flag=True, help="print only addresses that do not pass")
def check_cmd(
    target: str, resolvers: tuple[str, ...], timeout: float | None, evidence: bool, failing_only: bool
) -> None:
    """Verify ADDRESS or CIDR live: PTR, forward confirmation, name verdict; JSON lines on stdout.

    One line per address {"ip", "result", "verdict", "ptr", "reasons", "evidence", ...}, then a line
    {"summary": {...}} with the counts and the failing addresses grouped by reason. Progress of a range
    goes to stderr. IPv6 prefixes are sampled (TMSI_IPV6_SAMPLE_SIZE), not enumerated. Exit status: 0
    every address passes, 1 some fail, 3 none fail but some could not be checked.
    """
    from tmsi.adapters.resolver import make_resolver
    from tmsi.config import load_settings
    from tmsi.domain.networks import parse_network
    from tmsi.services.verify import Progress, rules_for, verify_network

    overrides: dict[str, Any] = {}
    if resolvers:
        overrides["resolvers"] = list(resolvers)
    if timeout is not None:
        overrides["dns_timeout"] = timeout
    settings = load_settings(**overrides)
    try:
        network = parse_network(target, strict=False)
    except NetworkError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        rules = rules_for(settings)
    except RulesError as exc:
        raise click.ClickException(str(exc)) from None

    def progress(p: Progress) -> None:
        if p.total > 1:
            click.echo(
                f"checked {p.done}/{p.total}: {p.passed} pass, {p.failed} fail, "
                f"{p.unverifiable} unverifiable",
                err=True,
            )

    summary = verify_network(
        make_resolver(settings),
        network,
        progress,
        sample_v6=settings.ipv6_sample_size,
        rules=rules,
        keep_passing=not failing_only,
        workers=settings.dns_workers,
    )
    _write(
        sys.stdout,
        (r.as_dict(full_evidence=evidence) for r in summary.results if not (failing_only and r.passes)),
    )
    click.echo(json.dumps({"summary": summary.as_dict()}, ensure_ascii=False))
    result = summary.as_dict()["result"]
    sys.exit({"pass": 0, "fail": 1}.get(result, 3))
