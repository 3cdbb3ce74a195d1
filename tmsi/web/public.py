"""The public, sign-in-free lookup: is an address listed, since when, why, and exactly what to do.

``/lookup`` (page), ``GET /api/v1/lookup?ip=`` (JSON) and ``POST /lookup/check`` (the "check my rDNS now"
button: the live verification of that one address, CSRF-protected). Every route is rate-limited per
client. Only listing facts are shown: never case contents, requesters or evidence of a case.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from flask import Blueprint, current_app, jsonify, render_template, request
from sqlalchemy.orm import Session

from tmsi.app import get_db, get_settings
from tmsi.config import Settings
from tmsi.domain.networks import IPAddress, NetworkError, parse_address
from tmsi.domain.zone import lookup_url
from tmsi.services.listings import find_overlapping_rows
from tmsi.web.extensions import limiter

bp = Blueprint("public", __name__)


def _lookup_limit() -> str:
    return str(current_app.config["TMSI"].public_lookup_rate_limit)


def _check_limit() -> str:
    return str(current_app.config["TMSI"].public_check_rate_limit)


def what_to_do(settings: Settings) -> list[dict[str, str]]:
    """The steps of the notice our team sends to blocked customers, with this deployment's mailbox."""
    mailbox = settings.mailbox_address
    return [
        {
            "title": "Check your own mail setup",
            "text": "Send mail through your ISP's outgoing mail server (SMTP relay). In a mail client, set "
            "the outgoing server to the one your ISP gives you. If you run a mail server or a proxy, set "
            "its SMTP gateway (smart host) to your ISP's outgoing server, so that the ISP relays your mail.",
        },
        {
            "title": "Ask your ISP to fix the reverse DNS",
            "text": "If that does not solve it, the reverse DNS (PTR record) of the address must clearly say "
            "that it is static: a name with a token such as 'static' next to the address, or a custom "
            "name such as mail.example.net, which must resolve back to the same address.",
        },
        {
            "title": "The ISP writes to us from its domain-owner address",
            "text": "Find your ISP's domain-owner contact (the abuse or admin address in its WHOIS/RDAP "
            f"record). The ISP sends the request from that address to {mailbox}, naming the addresses. "
            "We check the reverse DNS and reply when the addresses are delisted. Requests from customers "
            "are redirected to their ISP.",
        },
    ]


_PRIVATE = [
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7", "0.0.0.0/8")
]


def _never_listed(address: IPAddress) -> bool:
    """Addresses no mail server on the Internet can send from (documentation ranges stay: tests use them)."""
    return (
        address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or any(address in net for net in _PRIVATE if net.version == address.version)
    )


def _parse_ip(text: str) -> tuple[IPAddress | None, str]:
    text = text.strip()
    if not text:
        return None, "Enter an IPv4 or IPv6 address."
    if len(text) > 64:
        return None, "That is not an IP address."
    try:
        address = parse_address(text)
    except NetworkError:
        return None, f"{text[:64]!r} is not an IPv4 or IPv6 address."
    if _never_listed(address):
        return None, f"{address} is a private, reserved or special address; it is never listed."
    return address, ""


def listing_status(session: Session, settings: Settings, address: IPAddress) -> dict[str, Any]:
    """Public facts about ``address``: listed or not, since when, why, and when it was last removed."""
    network = ipaddress.ip_network(address)
    # one index look-up for both: what lists it now, and when it was last removed
    ever = find_overlapping_rows(session, network, active_only=False)
    active = [item for item in ever if item.active]
    data: dict[str, Any] = {
        "ip": str(address),
        "listed": bool(active),
        "zone": settings.dnsbl_zone,
        "listings": [
            {"network": item.network, "listed_since": item.listed_at.isoformat(), "reason": item.reason}
            for item in active
        ],
        "lookup_url": lookup_url(settings.base_url, str(address)),
        "mailbox": settings.mailbox_address,
    }
    if not active:
        removed = [item.removed_at for item in ever if item.removed_at is not None]
        data["delisted_at"] = max(removed).isoformat() if removed else None
    data["what_to_do"] = what_to_do(settings) if active else []
    return data


# --- live check -----------------------------------------------------------------------------------
def live_check(settings: Settings, address: IPAddress) -> dict[str, Any]:
    """The verification of one address, as the steps a person can follow (PTR, forward, name)."""
    from tmsi.adapters.resolver import make_resolver
    from tmsi.services import verify

    result = verify.check_address(make_resolver(settings), address, rules=verify.rules_for(settings))
    steps: list[dict[str, Any]] = []
    for answer in result.answers:
        values = [r.value for r in answer.records if r.rdtype == answer.qtype]
        if answer.error is not None:
            outcome = f"could not check ({answer.error})"
        elif values:
            outcome = ", ".join(values)
        else:
            outcome = answer.rcode or "no answer"
        steps.append({"query": f"{answer.qname} {answer.qtype}", "answer": outcome})
    return {
        "ip": str(address),
        "result": result.result.value,
        "ptr": result.ptr_names,
        "verdict": result.name_verdict.value,
        "reasons": result.reasons,
        "steps": steps,
    }


# --- routes ---------------------------------------------------------------------------------------
@bp.get("/lookup")
@limiter.limit(_lookup_limit)
def lookup_page() -> Any:
    settings = get_settings()
    query = request.args.get("ip", "")
    status: dict[str, Any] | None = None
    error = ""
    if query.strip():
        address, error = _parse_ip(query)
        if address is not None:
            with get_db().reads() as session:
                status = listing_status(session, settings, address)
    code = 400 if error and query.strip() else 200
    return render_template(
        "public/lookup.html", query=query, status=status, error=error, settings=settings, check=None
    ), code


@bp.post("/lookup/check")
@limiter.limit(_check_limit)
@limiter.limit(_lookup_limit)
def check_now() -> Any:
    settings = get_settings()
    query = request.form.get("ip", "")
    address, error = _parse_ip(query)
    status = check = None
    if address is not None:
        with get_db().reads() as session:
            status = listing_status(session, settings, address)
        check = live_check(settings, address)
    return render_template(
        "public/lookup.html", query=query, status=status, error=error, settings=settings, check=check
    ), (400 if error else 200)


@bp.get("/api/v1/lookup")
@limiter.limit(_lookup_limit)
def lookup_api() -> Any:
    address, error = _parse_ip(request.args.get("ip", ""))
    if address is None:
        return jsonify(error="invalid_ip", message=error), 400
    settings = get_settings()
    with get_db().reads() as session:
        return jsonify(listing_status(session, settings, address))
