"""Users with roles, their API tokens, and the append-only audit log."""

from __future__ import annotations

from sqlalchemy import ForeignKey, Index, String, event
from sqlalchemy.orm import Mapped, mapped_column, relationship

from tmsi.db import Base, enum_column, intpk, jsondict, str255, timestamp, timestamp_opt
from tmsi.enums import Role


class User(Base):
    __tablename__ = "users"

    id: Mapped[intpk]
    email: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str255] = mapped_column(default="")
    password_hash: Mapped[str] = mapped_column(String(255), default="")
    role: Mapped[Role] = enum_column(Role, "role", default=Role.ANALYST)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[timestamp]
    last_login_at: Mapped[timestamp_opt]
    failed_logins: Mapped[int] = mapped_column(default=0)

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user")

    def __repr__(self) -> str:
        return f"<User {self.email} {self.role}>"


class ApiToken(Base):
    """A per-user API token; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[intpk]
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str255] = mapped_column(default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[timestamp]
    last_used_at: Mapped[timestamp_opt]
    revoked_at: Mapped[timestamp_opt]

    user: Mapped[User] = relationship(back_populates="tokens")


class AuditEvent(Base):
    """Who did what, when, to which object, with the state before and after. Never updated or deleted."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_case_at", "case_id", "at"),)

    id: Mapped[intpk]
    at: Mapped[timestamp] = mapped_column(index=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    actor: Mapped[str255] = mapped_column(default="system")
    action: Mapped[str] = mapped_column(String(64), index=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    object_type: Mapped[str] = mapped_column(String(32), default="")
    object_id: Mapped[str] = mapped_column(String(64), default="")
    before: Mapped[jsondict]
    after: Mapped[jsondict]
    detail: Mapped[jsondict]
    request_id: Mapped[str] = mapped_column(String(64), default="")


class AuditLogIsAppendOnly(RuntimeError):
    pass


@event.listens_for(AuditEvent, "before_update")
@event.listens_for(AuditEvent, "before_delete")
def _refuse_audit_change(_mapper: object, _conn: object, target: AuditEvent) -> None:
    raise AuditLogIsAppendOnly(f"audit event {target.id} cannot be changed or deleted")


class JobLock(Base):
    """A lease that makes a scheduled job a singleton across workers (e.g. one poller per mailbox)."""

    __tablename__ = "job_locks"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[timestamp]
