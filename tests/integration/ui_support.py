"""Helpers for the web UI tests: users, signed-in clients, CSRF tokens from pages, cases with targets."""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from tmsi.db import unit_of_work, utcnow
from tmsi.domain.networks import network_keys
from tmsi.models import Case, CaseTarget, Coverage, Direction, Listing, Message, MessageKind, Role
from tmsi.services import cases, users

PASSWORD = "correct horse battery"


def make_user(factory: sessionmaker[Session], email: str, role: Role | str, password: str = PASSWORD) -> int:
    with unit_of_work(factory) as db:
        return users.create_user(db, email, Role(role), password=password).id


def token_for(factory: sessionmaker[Session], email: str) -> str:
    with unit_of_work(factory) as db:
        user = users.get_by_email(db, email)
        assert user is not None
        return users.issue_token(db, user)


_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')


def csrf_from(html: str) -> str:
    match = _CSRF.search(html) or _META.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def login(client: Any, email: str, password: str = PASSWORD) -> Any:
    page = client.get("/login")
    return client.post(
        "/login", data={"email": email, "password": password, "csrf_token": csrf_from(page.text)}
    )


def signed_in(client: Any, factory: sessionmaker[Session], role: str, email: str | None = None) -> str:
    email = email or f"{role}@example.test"
    make_user(factory, email, role)
    response = login(client, email)
    assert response.status_code == 302, response.text
    return email


def form_fields(html: str, action: str) -> dict[str, str]:
    """The hidden inputs of the form posting to ``action`` (csrf, idem, version)."""
    start = html.index(f'action="{action}"')
    end = html.index("</form>", start)
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html[start:end]))


def add_target(
    db: Session, case: Case, network: str, coverage: Coverage = Coverage.LISTED, **kw: Any
) -> CaseTarget:
    net = ipaddress.ip_network(network)
    version, start, end = network_keys(net)
    target = CaseTarget(
        network=str(net),
        version=version,
        prefixlen=net.prefixlen,
        start_key=start,
        end_key=end,
        source_text=kw.pop("source_text", network),
        coverage=coverage,
        summary=kw.pop("summary", {}),
        authority_evidence={},
        **kw,
    )
    case.targets.append(target)
    db.flush()
    return target


def add_listing(db: Session, network: str, reason: str = "generic rDNS") -> Listing:
    net = ipaddress.ip_network(network)
    version, start, end = network_keys(net)
    row = Listing(
        network=str(net),
        version=version,
        prefixlen=net.prefixlen,
        start_key=start,
        end_key=end,
        reason=reason,
        evidence={},
    )
    db.add(row)
    db.flush()
    return row


def add_message(
    db: Session,
    case: Case,
    *,
    subject: str = "",
    body: str = "",
    html: str = "",
    from_addr: str = "",
    from_name: str = "",
    raw: bytes = b"",
    attachments: list[Any] | None = None,
    message_id: str = "",
    minutes_ago: int = 0,
) -> Message:
    message_id = message_id or f"<m{utcnow().timestamp()}-{id(case)}-{subject[:8]}@isp.example>"
    row = Message(
        case_id=case.id,
        direction=Direction.IN,
        kind=MessageKind.REQUEST,
        dedupe_key=message_id,
        message_id_header=message_id,
        content_hash="0" * 64,
        raw=raw or None,
        raw_size=len(raw),
        from_addr=from_addr or case.requester_email,
        from_name=from_name,
        to_addrs=["dul@example.test"],
        subject=subject or case.subject,
        body_text=body,
        body_html=html,
        attachments=attachments or [],
        references=[],
        headers=[],
        explain={},
        received_at=utcnow() - timedelta(minutes=minutes_ago),
    )
    db.add(row)
    db.flush()
    return row


def make_case(
    factory: sessionmaker[Session],
    *,
    subject: str = "Please delist",
    email: str = "noc@isp.example",
    targets: tuple[str, ...] = ("203.0.113.0/29",),
    listings: tuple[str, ...] = ("203.0.113.0/24",),
    waiting_hours: float = 1,
    **fields: Any,
) -> str:
    with unit_of_work(factory) as db:
        for network in listings:
            if db.query(Listing).filter_by(network=network, active=True).first() is None:
                add_listing(db, network)
        case = cases.open_case(
            db, subject=subject, requester_email=email, requester_name=fields.pop("name", "")
        )
        case.waiting_since = utcnow() - timedelta(hours=waiting_hours)
        for key, value in fields.items():
            setattr(case, key, value)
        for network in targets:
            add_target(db, case, network)
        add_message(db, case, subject=subject, body=f"Please delist {' '.join(targets)}")
        return case.reference
