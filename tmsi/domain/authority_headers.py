"""Which ``Authentication-Results`` our own MTA wrote, with the evidence the authority check needs.

Built on :mod:`tmsi.domain.authres` (its RFC 8601 parser and its trust rule, so ``tmsi mail explain`` and
the authority check agree on which fields are ours). What this adds:

* the *boundary hop*: the ``Received`` field our MTA wrote for the hop from the outside world, whose
  client address and HELO name a direct SPF check needs;
* internal hops recognised by address too (``Settings.own_networks``, loopback), not only by host name;
* every field that was *not* trusted and why (a foreign authserv-id, or our id below the trusted zone,
  that is, possibly forged), for the analyst.

The rule. A relay prepends its trace fields, so reading top-down:
fields our infrastructure added on receipt, the boundary ``Received``, then everything the sender and
earlier relays wrote, including any Authentication-Results forged with our authserv-id. Walking from the
top, trace fields, our Authentication-Results and ``Received`` fields of internal hops (both ends ours)
belong to the trusted zone; the boundary ``Received`` is its last field; any other field (``From``,
``DKIM-Signature``, a ``Received`` by a foreign host, an Authentication-Results of another authserv-id)
ends it. Without a ``Received`` by our MTA only the topmost block of such fields is trusted. MTAs that
append their results at the bottom (Exim ``add_header`` without ``:at_start:``) must be configured to
prepend, as RFC 8601 section 5 expects.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tmsi.domain.authres import (
    RECEIVED_BY,
    RECEIVED_FROM,
    TRACE_FIELDS,
    AuthResult,
    parse_authentication_results,
)

_BRACKET_IP = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]")
_EXTRA_TRACE_PREFIXES = ("arc-", "x-spam-", "x-rspamd-", "x-amavis")


@dataclass(frozen=True)
class ArField:
    authserv_id: str
    results: tuple[AuthResult, ...]
    raw: str
    position: int  # index among all header fields, 0 = topmost

    def as_dict(self) -> dict[str, Any]:
        return {
            "authserv_id": self.authserv_id,
            "position": self.position,
            "raw": self.raw,
            "results": [
                {"method": r.method, "result": r.result, "props": dict(r.props)} for r in self.results
            ],
        }


@dataclass(frozen=True)
class ReceivedHop:
    from_host: str  # the HELO/EHLO name as the MTA recorded it
    from_ips: tuple[str, ...]
    by_host: str

    def as_dict(self) -> dict[str, Any]:
        return {"from_host": self.from_host, "from_ips": list(self.from_ips), "by_host": self.by_host}


@dataclass(frozen=True)
class TrustedResults:
    trusted: tuple[ArField, ...]
    untrusted_ours: tuple[ArField, ...]  # our authserv-id, outside the trusted zone: ignored
    foreign: tuple[ArField, ...]  # another authserv-id: ignored
    boundary: ReceivedHop | None
    zone_end: int  # index of the first header field outside the trusted zone
    notes: tuple[str, ...] = ()

    def results(self, method: str | None = None) -> list[AuthResult]:
        return [r for f in self.trusted for r in f.results if method is None or r.method == method]

    def as_dict(self) -> dict[str, Any]:
        return {
            "trusted": [f.as_dict() for f in self.trusted],
            "untrusted_ours": [f.as_dict() for f in self.untrusted_ours],
            "foreign_ignored": [f.as_dict() for f in self.foreign],
            "boundary": self.boundary.as_dict() if self.boundary else None,
            "zone_end": self.zone_end,
            "notes": list(self.notes),
        }


def parse_received(value: str) -> ReceivedHop:
    unfolded = " ".join(value.split())
    by = RECEIVED_BY.search(unfolded)
    frm = RECEIVED_FROM.search(unfolded)
    from_host = frm.group(1).lower().rstrip(".") if frm else ""
    ips: list[str] = []
    for candidate in _BRACKET_IP.findall(frm.group(0) if frm else ""):
        try:
            ips.append(str(ipaddress.ip_address(candidate)))
        except ValueError:
            continue
    if not ips and from_host:
        with contextlib.suppress(ValueError):
            ips.append(str(ipaddress.ip_address(from_host.strip("[]"))))
    return ReceivedHop(from_host, tuple(ips), by.group(1).lower().rstrip(".") if by else "")


def _own_ip(ip: str, own_networks: Sequence[Any]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return addr.is_loopback or any(addr.version == n.version and addr in n for n in own_networks)


def hop_is_internal(hop: ReceivedHop, own_hosts: frozenset[str], own_networks: Sequence[Any]) -> bool:
    """The ``from`` side of a hop is ours: every recorded address in our networks (or loopback), or, when
    no address is recorded, a host name we own."""
    if hop.from_ips:
        return all(_own_ip(ip, own_networks) for ip in hop.from_ips)
    return hop.from_host in own_hosts or hop.from_host == "localhost"


def evaluate_trust(
    headers: Iterable[tuple[str, str]],
    authserv_ids: Iterable[str],
    own_hosts: Iterable[str] = (),
    own_networks: Sequence[Any] = (),
) -> TrustedResults:
    """Apply the module's trust rule to header fields given top-down as (name, value) pairs."""
    ids = frozenset(i.strip().lower() for i in authserv_ids if i.strip())
    hosts = frozenset(h.strip().lower().rstrip(".") for h in own_hosts if h.strip()) | ids
    trusted: list[ArField] = []
    untrusted: list[ArField] = []
    foreign: list[ArField] = []
    notes: list[str] = []
    boundary: ReceivedHop | None = None
    fields = list(headers)
    zone_end = len(fields)
    in_zone = bool(ids)
    if not ids:
        notes.append("no authserv-id is configured (TMSI_AUTHSERV_IDS): no Authentication-Results is trusted")
    for position, (name, value) in enumerate(fields):
        low = name.strip().lower()
        if low == "authentication-results":
            authserv_id, results = parse_authentication_results(value)
            parsed = ArField(authserv_id, tuple(results), " ".join(value.split()), position)
            if authserv_id not in ids:
                foreign.append(parsed)
                if in_zone:
                    notes.append(
                        f"header {position}: Authentication-Results of {authserv_id or '?'} ends the zone"
                    )
                    in_zone, zone_end = False, position
            elif in_zone:
                trusted.append(parsed)
            else:
                untrusted.append(parsed)
            continue
        if not in_zone:
            continue
        if low in TRACE_FIELDS or low.startswith(_EXTRA_TRACE_PREFIXES):
            continue
        if low == "received":
            hop = parse_received(value)
            if hop.by_host in hosts:
                if hop_is_internal(hop, hosts, own_networks):
                    continue
                boundary = hop
                in_zone, zone_end = False, position + 1
                continue
            notes.append(
                f"header {position}: Received by {hop.by_host or '?'} (not one of our hosts) ends the zone"
            )
        in_zone, zone_end = False, position
    if ids and boundary is None:
        notes.append("no Received field by our MTA: only the topmost block of trace fields is trusted")
    notes.extend(
        f"header {f.position}: Authentication-Results with our authserv-id {f.authserv_id!r} below the "
        "trusted zone: ignored (possibly forged)"
        for f in untrusted
    )
    return TrustedResults(tuple(trusted), tuple(untrusted), tuple(foreign), boundary, zone_end, tuple(notes))


def dmarc_verdict(
    headers: Iterable[tuple[str, str]],
    authserv_ids: Iterable[str],
    own_hosts: Iterable[str] = (),
    own_networks: Sequence[Any] = (),
) -> tuple[bool | None, str]:
    """(True on dmarc=pass, False on dmarc=fail, else None; and a reason) from the Authentication-Results
    this module's trust rule accepts as our own MTA's."""
    trust = evaluate_trust(headers, authserv_ids, own_hosts, own_networks)
    if not trust.trusted:
        return None, "no Authentication-Results from our MTA"
    for field in trust.trusted:
        for res in field.results:
            if res.method != "dmarc":
                continue
            domain = res.props.get("header.from", "")
            where = f" for {domain}" if domain else ""
            if res.result == "pass":
                return True, f"dmarc=pass{where} by {field.authserv_id}"
            if res.result == "fail":
                return False, f"dmarc=fail{where} by {field.authserv_id}"
            return None, f"dmarc={res.result}{where} by {field.authserv_id}"
    return None, "no DMARC result from our MTA"
