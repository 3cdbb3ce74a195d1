"""One table of case actions shared by the pages (form posts) and the JSON API (POST bodies).

``perform`` runs one named action inside the caller's unit of work and returns what to tell the user;
work that must wait for the commit (starting a verification) is returned, not done.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flask import current_app, g
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tmsi.config import Settings
from tmsi.domain.ids import parse_id
from tmsi.models import Case, Resolution, User
from tmsi.services import cases, decide
from tmsi.services.decide import DecisionError
from tmsi.services.users import Actor

_PLAIN_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,23}$")


def idempotency_token(raw: str) -> str:
    """A form's one-time token (or an API Idempotency-Key) in at most 23 safe characters."""
    raw = raw.strip()
    if not raw:
        return ""
    return raw if _PLAIN_TOKEN.match(raw) else hashlib.sha256(raw.encode()).hexdigest()[:23]


@contextmanager
def idempotency_scope(token: str) -> Iterator[None]:
    """Audit events written inside carry ``<request id>~<token>`` as their request id, so a repeated
    submit of the same form is recognized (``decide.already_done``); the request id itself is kept."""
    original = getattr(g, "request_id", "")
    if token:
        g.request_id = f"{str(original)[:40]}~{token}"
    try:
        yield
    finally:
        g.request_id = original


class Params:
    """Form fields or a JSON object, read the same way."""

    def __init__(self, source: Any) -> None:
        self.source = source if source is not None else {}

    def get(self, name: str, default: str = "") -> str:
        if hasattr(self.source, "getlist"):
            return str(self.source.get(name, default))
        value = self.source.get(name, default)
        if isinstance(value, bool):
            return "1" if value else ""
        if isinstance(value, list):
            return ",".join(str(v) for v in value)
        return "" if value is None else str(value)

    def getlist(self, name: str) -> list[str]:
        if hasattr(self.source, "getlist"):
            values = self.source.getlist(name)
        else:
            raw = self.source.get(name, [])
            values = raw if isinstance(raw, list) else [raw]
        return [s for v in values for s in str(v).replace(",", " ").split() if s]

    def ints(self, name: str) -> list[int]:
        out = []
        for item in self.getlist(name):
            value = parse_id(item)
            if value is None:
                raise DecisionError(f"{name}: {item!r} is not an id")
            out.append(value)
        return out

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.get(name, "1" if default else "")
        return value.lower() not in {"", "0", "false", "no", "off"}

    def version(self) -> int | None:
        value = self.get("version")
        if not value:
            return None
        version = parse_id(value)
        if version is None:
            raise DecisionError("version must be a number")
        return version


@dataclass
class Outcome:
    message: str
    reference: str
    verify_ids: list[int] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[Session, Settings, Case, Params, Actor, str], Outcome]


def _user_param(db: Session, value: str, actor: Actor) -> User | None:
    value = value.strip()
    if value in {"", "none"}:
        return None
    if value == "me":
        value = str(actor.id)
    user_id = parse_id(value)
    user = (
        db.get(User, user_id)
        if user_id is not None
        else db.scalar(select(User).where(User.email == value.lower()))
    )
    if user is None:
        raise DecisionError(f"no user {value!r}")
    return user


def _assign(db: Session, st: Settings, case: Case, p: Params, actor: Actor, token: str) -> Outcome:
    user = _user_param(db, p.get("assignee"), actor)
    decide.assign(db, case, user, actor, expected_version=p.version(), token=token)
    return Outcome(f"Assigned to {user.email if user else 'nobody'}.", case.reference)


def _note(db: Session, st: Settings, case: Case, p: Params, actor: Actor, token: str) -> Outcome:
    note = decide.add_note(db, case, p.get("body"), actor, expected_version=p.version(), token=token)
    return Outcome("Note added.", case.reference, data={"note_id": note.id})


def _verify(db: Session, st: Settings, case: Case, p: Params, actor: Actor, token: str) -> Outcome:
    ids = decide.request_verification(
        db, case, actor, target_ids=p.ints("targets"), expected_version=p.version(), token=token
    )
    return Outcome(f"Verification requested for {len(ids)} target(s).", case.reference, verify_ids=ids)


def _delist(db: Session, st: Settings, case: Case, p: Params, actor: Actor, token: str) -> Outcome:
    selection = decide.parse_selection(case, p.ints("targets"), p.get("only"))
    removed = decide.delist(
        db, case, actor, selection, reason=p.get("reason"), expected_version=p.version(), token=token
    )
    nets = ", ".join(str(n) for _, n in selection)
    return Outcome(f"Delisted {nets}.", case.reference, data={"removed": removed})


def _reject(db: Session, st: Settings, case: Case, p: Params, actor: Actor, token: str) -> Outcome:
    row = decide.reject(
        db,
        st,
        case,
        actor,
        reason=p.get("reason"),
        send=p.flag("send", default=False),
        expected_version=p.version(),
        token=token,
    )
    return Outcome("Rejected" + (" and the reply queued." if row else "."), case.reference)


def _ask(db: Session, st: Settings, case: Case, p: Params, actor: Actor, token: str) -> Outcome:
    decide.ask_information(
        db, st, case, actor, question=p.get("question"), expected_version=p.version(), token=token
    )
    return Outcome("Question queued; the case awaits the requester.", case.reference)


def _reply(db: Session, st: Settings, case: Case, p: Params, actor: Actor, token: str) -> Outcome:
    row = decide.send_reply(
        db,
        st,
        case,
        actor,
        template=p.get("template") or "ask_information",
        subject=p.get("subject") or None,
        body=p.get("body") or None,
        to=p.get("to") or None,
        expected_version=p.version(),
        token=token,
    )
    return Outcome("Reply queued in the outbox.", case.reference, data={"outbox_id": row.id})


def _merge(db: Session, st: Settings, case: Case, p: Params, actor: Actor, token: str) -> Outcome:
    refs = p.getlist("cases")
    sources = []
    for ref in refs:
        other = cases.get_by_reference(db, ref)
        if other is None:
            raise DecisionError(f"no case {ref}")
        sources.append(other)
    decide.merge(db, case, sources, actor, expected_version=p.version(), token=token)
    return Outcome(f"Merged {', '.join(s.reference for s in sources)} into {case.reference}.", case.reference)


def _split(db: Session, st: Settings, case: Case, p: Params, actor: Actor, token: str) -> Outcome:
    new = decide.split(db, case, p.ints("targets"), actor, expected_version=p.version(), token=token)
    return Outcome(
        f"Split into the new case {new.reference}.", case.reference, data={"new_case": new.reference}
    )


def _close(db: Session, st: Settings, case: Case, p: Params, actor: Actor, token: str) -> Outcome:
    value = p.get("resolution")
    try:
        resolution = Resolution(value) if value else None
    except ValueError:
        raise DecisionError(f"unknown resolution {value!r}") from None
    decide.close(
        db,
        case,
        actor,
        resolution=resolution,
        reason=p.get("reason"),
        expected_version=p.version(),
        token=token,
    )
    return Outcome("Case closed.", case.reference)


def _spam(db: Session, st: Settings, case: Case, p: Params, actor: Actor, token: str) -> Outcome:
    decide.close_as_spam(db, case, actor, expected_version=p.version(), token=token)
    return Outcome("Closed as spam.", case.reference)


def _reopen(db: Session, st: Settings, case: Case, p: Params, actor: Actor, token: str) -> Outcome:
    decide.reopen(db, case, actor, reason=p.get("reason"), expected_version=p.version(), token=token)
    return Outcome("Case reopened.", case.reference)


def _retry(db: Session, st: Settings, case: Case, p: Params, actor: Actor, token: str) -> Outcome:
    ids = p.ints("outbox")
    if len(ids) != 1:
        raise DecisionError("choose one outgoing message")
    decide.retry_outbox(db, case, ids[0], actor, token=token)
    return Outcome("The message will be sent again now.", case.reference)


ACTIONS: dict[str, Handler] = {
    "assign": _assign,
    "note": _note,
    "verify": _verify,
    "delist": _delist,
    "reject": _reject,
    "ask": _ask,
    "reply": _reply,
    "merge": _merge,
    "split": _split,
    "close": _close,
    "spam": _spam,
    "reopen": _reopen,
    "retry": _retry,
}


def after_commit(outcome: Outcome, settings: Settings, factory: sessionmaker[Session], actor: Actor) -> str:
    """Work that needs the committed rows: start the verifications that were asked for."""
    if not outcome.verify_ids:
        return ""
    dispatcher: decide.VerifyDispatcher = current_app.extensions.get(
        "tmsi.verify_dispatch", decide.dispatch_verification
    )
    return dispatcher(settings, factory, outcome.verify_ids, actor.email)
