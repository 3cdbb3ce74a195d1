"""Parsing of listing files: CSV (``network,reason,listed_at``) and rbldnsd ``ip4set``/``ip6trie`` text.

Each line becomes an entry or an error with its line number; the caller decides what a bad line means.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from tmsi.domain.networks import IPNetwork, NetworkError, parse_address, parse_network, range_to_cidrs

FileFormat = Literal["csv", "rbldnsd"]


@dataclass(frozen=True, slots=True)
class Entry:
    line: int
    network: IPNetwork
    reason: str
    listed_at: datetime | None


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    text: str
    reason: str


def sniff_format(first_lines: Iterable[str]) -> FileFormat:
    for raw in first_lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith((":", "$", "!")):
            return "rbldnsd"
        return "csv" if "," in line else "rbldnsd"
    return "rbldnsd"


def parse_timestamp(text: str) -> datetime:
    value = text.strip()
    if value.isdigit():
        return datetime.fromtimestamp(int(value), UTC)
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_csv(lines: Iterable[str]) -> Iterator[Entry | LineError]:
    reader = csv.reader(lines)
    for lineno, row in enumerate(reader, start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if lineno == 1 and row[0].strip().lower() in {"network", "cidr", "ip"}:
            continue
        text = ",".join(row)
        try:
            network = parse_network(row[0])
        except NetworkError as exc:
            yield LineError(lineno, text, str(exc))
            continue
        reason = row[1].strip() if len(row) > 1 else ""
        listed_at = None
        if len(row) > 2 and row[2].strip():
            try:
                listed_at = parse_timestamp(row[2])
            except ValueError:
                yield LineError(lineno, text, f"listed_at {row[2].strip()!r} is not an ISO 8601 time")
                continue
        yield Entry(lineno, network, reason, listed_at)


def parse_rbldnsd(lines: Iterable[str]) -> Iterator[Entry | LineError]:
    """rbldnsd ip4set/ip6trie data: ``$`` directives and ``:value:text`` defaults are skipped;
    ``!`` exclusions are reported as errors (tmsi stores what is listed, not exceptions)."""
    default_text = ""
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";", "$")):
            continue
        if line.startswith(":"):
            parts = line.split(":", 2)
            default_text = parts[2].strip() if len(parts) > 2 else ""
            continue
        if line.startswith("!"):
            yield LineError(lineno, line, "exclusion entries (!) are not supported; delist instead")
            continue
        spec, _, rest = line.partition(" ")
        if not rest and "\t" in spec:
            spec, _, rest = spec.partition("\t")
        reason = rest.strip()
        if reason.startswith(":"):
            parts = reason.split(":", 2)
            reason = parts[2].strip() if len(parts) > 2 else ""
        reason = reason or default_text
        try:
            for network in _rbldnsd_spec(spec):
                yield Entry(lineno, network, reason, None)
        except NetworkError as exc:
            yield LineError(lineno, line, str(exc))


def _rbldnsd_spec(spec: str) -> list[IPNetwork]:
    if "-" in spec and "/" not in spec:
        first_text, last_text = spec.split("-", 1)
        first = parse_address(first_text)
        if "." in last_text or ":" in last_text:
            last = parse_address(last_text)
        else:
            last = parse_address(first_text.rsplit(".", 1)[0] + "." + last_text)
        return range_to_cidrs(first, last)
    if ":" not in spec and "/" not in spec and spec.count(".") < 3:
        # rbldnsd accepts abbreviated IPv4 networks: "192.0.2" means 192.0.2.0/24.
        octets = spec.split(".")
        bits = 8 * len(octets)
        return [parse_network(".".join(octets + ["0"] * (4 - len(octets))) + f"/{bits}")]
    return [parse_network(spec)]


def parse_listing_file(data: str, fmt: FileFormat | None = None) -> Iterator[Entry | LineError]:
    lines = io.StringIO(data).read().splitlines()
    chosen = fmt or sniff_format(lines[:50])
    return parse_csv(lines) if chosen == "csv" else parse_rbldnsd(lines)
