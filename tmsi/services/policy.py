"""Run-time policy a lead may change without a redeploy: values stored in ``policy_settings`` override the
deployment's Settings where the code asks for the *effective* settings.

Only a few decisions are policy (what the team may change between two shifts); everything else stays
configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tmsi.config import Settings
from tmsi.db import utcnow
from tmsi.models import PolicySetting
from tmsi.services import audit


class PolicyError(ValueError):
    pass


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise PolicyError(f"{text!r} is not yes or no")


def _count(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise PolicyError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= 1000:
        raise PolicyError(f"{value} is outside 0..1000")
    return value


@dataclass(frozen=True)
class PolicyKey:
    key: str
    title: str
    help: str
    parse: Callable[[str], Any]


POLICY: dict[str, PolicyKey] = {
    p.key: p
    for p in (
        PolicyKey(
            "auto_delist",
            "Delist automatically",
            "when the sender's authority is proven, every address passes and nothing is flagged",
            _bool,
        ),
        PolicyKey(
            "autoreply_per_sender_per_hour",
            "Automatic replies per requester per hour",
            "acknowledgements and other automatic mail to one address; 0 sends none",
            _count,
        ),
    )
}


def overrides(session: Session) -> dict[str, Any]:
    rows = session.scalars(select(PolicySetting).where(PolicySetting.key.in_(POLICY)))
    return {row.key: row.value.get("value") for row in rows}


def effective(session: Session, settings: Settings) -> Settings:
    """``settings`` with the lead's policy applied (the deployment's values where none is set)."""
    changes = overrides(session)
    return settings.model_copy(update=changes) if changes else settings


def set_value(session: Session, key: str, text: str, *, actor: str, actor_id: int | None = None) -> Any:
    """Parse and store one policy value; audited with the value before and after."""
    spec = POLICY.get(key)
    if spec is None:
        raise PolicyError(f"unknown policy {key!r}")
    value = spec.parse(text)
    row = session.get(PolicySetting, key)
    before = row.value.get("value") if row is not None else None
    if row is None:
        row = PolicySetting(key=key, value={"value": value}, updated_at=utcnow(), updated_by=actor)
        session.add(row)
    else:
        row.value = {"value": value}
        row.updated_at = utcnow()
        row.updated_by = actor
    audit.record(
        session,
        action="policy.changed",
        actor=actor,
        actor_id=actor_id,
        object_type="policy",
        object_id=key,
        before={"value": before},
        after={"value": value},
    )
    return value
