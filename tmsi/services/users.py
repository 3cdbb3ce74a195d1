"""Users, roles and API tokens: Argon2 password hashes, SHA-256 token hashes, every change audited."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tmsi.db import utcnow
from tmsi.models import ApiToken, Role, User
from tmsi.services import audit

TOKEN_PREFIX = "tmsi_"
MIN_PASSWORD_LENGTH = 10

_hasher = PasswordHasher()
# Verifying against this hash when the user is unknown keeps the timing of a failed login uniform.
_DUMMY_HASH = _hasher.hash("not-a-real-password-0")


class UserError(ValueError):
    """A user operation that cannot be done, with a message for the operator."""


@dataclass(frozen=True)
class Actor:
    """Who performs an operation: the audit log records both the id and the e-mail."""

    id: int | None
    email: str

    @classmethod
    def of(cls, user: User) -> Actor:
        return cls(id=user.id, email=user.email)


SYSTEM_ACTOR = Actor(id=None, email=audit.SYSTEM)


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher.hash(password)


def check_password(user: User | None, password: str) -> bool:
    """True when ``password`` matches; upgrades the hash in place when Argon2 parameters changed."""
    stored = user.password_hash if user is not None and user.password_hash else _DUMMY_HASH
    try:
        _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False
    if user is None or not user.password_hash:
        return False
    if _hasher.check_needs_rehash(stored):
        user.password_hash = _hasher.hash(password)
    return True


def normalize_email(email: str) -> str:
    value = email.strip().lower()
    if value.count("@") != 1 or any(ch.isspace() or ord(ch) < 32 for ch in value) or len(value) > 255:
        raise UserError(f"{email!r} is not an e-mail address")
    return value


def get_by_email(session: Session, email: str) -> User | None:
    return session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))


def create_user(
    session: Session,
    email: str,
    role: Role,
    *,
    password: str | None = None,
    name: str = "",
    actor: Actor = SYSTEM_ACTOR,
) -> User:
    address = normalize_email(email)
    if get_by_email(session, address) is not None:
        raise UserError(f"user {address} already exists")
    user = User(
        email=address,
        name=name[:255],
        role=role,
        active=True,
        password_hash=hash_password(password) if password else "",
    )
    session.add(user)
    session.flush()
    audit.record(
        session,
        action="user.created",
        actor=actor.email,
        actor_id=actor.id,
        object_type="user",
        object_id=user.email,
        after={"role": role.value, "active": True},
    )
    return user


def set_role(session: Session, user: User, role: Role, *, actor: Actor = SYSTEM_ACTOR) -> None:
    if user.role == role:
        return
    before = {"role": user.role.value}
    user.role = role
    audit.record(
        session,
        action="user.role",
        actor=actor.email,
        actor_id=actor.id,
        object_type="user",
        object_id=user.email,
        before=before,
        after={"role": role.value},
    )


def set_active(session: Session, user: User, active: bool, *, actor: Actor = SYSTEM_ACTOR) -> None:
    if user.active == active:
        return
    user.active = active
    if not active:
        for token in user.tokens:
            revoke_token(session, token, actor=actor)
    audit.record(
        session,
        action="user.enabled" if active else "user.disabled",
        actor=actor.email,
        actor_id=actor.id,
        object_type="user",
        object_id=user.email,
        before={"active": not active},
        after={"active": active},
    )


def set_password(session: Session, user: User, password: str, *, actor: Actor = SYSTEM_ACTOR) -> None:
    user.password_hash = hash_password(password)
    audit.record(
        session,
        action="user.password",
        actor=actor.email,
        actor_id=actor.id,
        object_type="user",
        object_id=user.email,
    )


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue_token(session: Session, user: User, *, name: str = "", actor: Actor = SYSTEM_ACTOR) -> str:
    """A new API token for ``user``; the clear text is returned once and never stored."""
    if not user.active:
        raise UserError(f"user {user.email} is disabled")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, name=name[:255], token_hash=token_hash(token))
    session.add(row)
    session.flush()
    audit.record(
        session,
        action="token.issued",
        actor=actor.email,
        actor_id=actor.id,
        object_type="api_token",
        object_id=row.id,
        detail={"user": user.email, "name": name},
    )
    return token


def revoke_token(session: Session, token: ApiToken, *, actor: Actor = SYSTEM_ACTOR) -> None:
    if token.revoked_at is not None:
        return
    token.revoked_at = utcnow()
    audit.record(
        session,
        action="token.revoked",
        actor=actor.email,
        actor_id=actor.id,
        object_type="api_token",
        object_id=token.id,
        detail={"user": token.user.email},
    )


def user_for_token(session: Session, token: str) -> User | None:
    """The active user owning the (unrevoked) token, or None; marks the token as used."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    row = session.scalar(
        select(ApiToken).where(ApiToken.token_hash == token_hash(token), ApiToken.revoked_at.is_(None))
    )
    if row is None or not row.user.active:
        return None
    row.last_used_at = utcnow()
    return row.user
