"""Declarative base, reusable column types, and engine/session setup for SQLite and PostgreSQL."""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeAlias

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    DateTime,
    Engine,
    LargeBinary,
    MetaData,
    Select,
    String,
    create_engine,
    event,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is UTC:
            return value
        if value.tzinfo is None:
            raise ValueError("naive datetime; use tmsi.db.utcnow()")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


JSONType = JSON().with_variant(postgresql.JSONB(), "postgresql")
BigIntPK = BigInteger().with_variant(postgresql.BIGINT(), "postgresql")

intpk = Annotated[int, mapped_column(primary_key=True)]
timestamp = Annotated[datetime, mapped_column(UTCDateTime(), default=utcnow)]
timestamp_opt = Annotated[datetime | None, mapped_column(UTCDateTime(), nullable=True)]
str16 = Annotated[str, mapped_column(String(16))]
str32 = Annotated[str, mapped_column(String(32))]
str64 = Annotated[str, mapped_column(String(64))]
str255 = Annotated[str, mapped_column(String(255))]
ipkey = Annotated[bytes, mapped_column(LargeBinary(16))]
jsondict = Annotated[dict[str, Any], mapped_column(JSONType, default=dict)]
jsonlist = Annotated[list[Any], mapped_column(JSONType, default=list)]


def enum_column(enum_cls: type[enum.Enum], column: str, **kw: Any) -> Any:
    """An enum stored by value as a VARCHAR with a CHECK constraint named after the column."""
    from sqlalchemy import Enum

    return mapped_column(
        Enum(
            enum_cls,
            native_enum=False,
            create_constraint=True,
            length=32,
            values_callable=lambda e: [m.value for m in e],
            name=column,
            validate_strings=True,
        ),
        **kw,
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType, list[Any]: JSONType}


def make_engine(url: str, **kw: Any) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kw)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    ping = kw.pop("pool_pre_ping", None)
    if url.startswith("postgresql+psycopg"):
        # PostgreSQL's own $1 placeholders through psycopg's RawCursor: psycopg otherwise rewrites every
        # %(name)s of a statement in Python, uncached for statements over 50 parameters, which is every
        # multi-row INSERT of a batch (about 1 ms of CPU per ingested message).
        import psycopg

        kw.setdefault("paramstyle", "numeric_dollar")
        connect_args = dict(kw.pop("connect_args", {}))
        connect_args.setdefault("cursor_factory", psycopg.RawCursor)
        # No JIT: its compilation (tens to hundreds of ms) is paid on every execution of a statement the
        # planner merely *estimates* as expensive, such as the batched listings look-up, whose range
        # conditions it cannot size; tmsi's statements are short OLTP reads and writes.
        connect_args.setdefault("options", "-c jit=off")
        kw["connect_args"] = connect_args
    engine = create_engine(url, pool_pre_ping=bool(ping), **kw)
    if ping is None:
        _ping_after_idle(engine)
    return engine


# A pooled connection that was idle longer than this is pinged before use (a server restart or a
# firewall's idle timeout is found then, and the pool reconnects); one that was just returned is not:
# under load that saves a round trip per request.
PING_AFTER_IDLE_SECONDS = 5.0


def _ping_after_idle(engine: Engine) -> None:
    """SQLAlchemy's pessimistic disconnect handling ("pool_pre_ping"), only for connections idle longer
    than :data:`PING_AFTER_IDLE_SECONDS` (the custom-ping recipe of its "Dealing with Disconnects")."""

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_conn: Any, record: Any) -> None:
        record.info["tmsi_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("tmsi_idle_since")
        if since is not None and time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as exc:
            if engine.dialect.is_disconnect(exc, dbapi_conn, None):
                raise DisconnectionError(str(exc)) from exc  # the pool opens a new connection and retries
            raise


class DriverQuery:
    """A read statement that (nearly) every page runs, executed on PostgreSQL as SQL compiled once,
    through the driver's own cursor: SQLAlchemy's work per execution (parameters, result metadata, row
    objects) cost more than such a statement's whole round trip. Rows are the driver's tuples, JSON
    already decoded and enums as their stored strings. Every value bound in it must reach the driver
    as is (integers, strings); that is checked when it is compiled. Other databases run the statement
    through SQLAlchemy as usual."""

    def __init__(self, statement: Select[*tuple[Any, ...]]) -> None:
        self.statement = statement
        self._compiled: tuple[str, tuple[str, ...], Mapping[str, Any]] | None = None

    def _compile(self, dialect: Any) -> tuple[str, tuple[str, ...], Mapping[str, Any]]:
        compiled = self.statement.compile(dialect=dialect)
        if compiled.positiontup is None or dialect.paramstyle != "numeric_dollar":
            raise TypeError("DriverQuery needs positional $n parameters")
        constants = compiled.construct_params(_check=False)
        for name, value in constants.items():
            if value is not None and type(value) not in (int, str):
                raise TypeError(f"DriverQuery: {name}={value!r} would need SQLAlchemy's conversion")
        prepared = (compiled.string, tuple(compiled.positiontup), constants)
        self._compiled = prepared
        return prepared

    def first(self, connection: Connection, params: dict[str, Any]) -> Any:
        """The first row of the statement on ``connection`` (None when there is none)."""
        if connection.dialect.name != "postgresql":
            return connection.execute(self.statement, params).first()
        sql, names, constants = self._compiled or self._compile(connection.dialect)
        values = tuple(params[name] if name in params else constants[name] for name in names)
        driver = connection.connection.driver_connection
        assert driver is not None
        return driver.execute(sql, values, prepare=True).fetchone()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, rollback on any error. Services inside never commit."""
    with factory() as session, session.begin():
        yield session


def make_read_engine(url: str, **kw: Any) -> Engine:
    """The engine of work that only reads (pages, API reads): its own pool, whose connections are in
    autocommit from the start. So no BEGIN and no COMMIT or ROLLBACK round trips, every statement sees
    the latest committed data, and a checkout sets and resets nothing (an isolation level set per
    checkout on the shared pool cost more than the checkout).

    It also keeps the statements prepared: psycopg forgets a connection's prepared statements on every
    ROLLBACK, which is how a plain session that only read ends, so such pages re-planned their
    statements on every request (planning the case page's statement costs more than running it).
    Never write through it: each statement would commit on its own.
    """
    return make_engine(url, isolation_level="AUTOCOMMIT", **kw)


Reader: TypeAlias = Session | Connection
"""What read-only code runs statements on: an ORM session, or (cheaper) a Core connection."""


def bind_of(db: Reader) -> Engine | Connection:
    """What a session or a connection runs its statements on (its ``.engine`` and ``.dialect``)."""
    return db if isinstance(db, Connection) else db.get_bind()


def dialect_name(db: Reader) -> str:
    """The database's dialect name ("postgresql", "sqlite") for a session or a connection."""
    return bind_of(db).dialect.name
