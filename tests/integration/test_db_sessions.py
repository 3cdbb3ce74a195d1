"""Engine and session setup: the read engine's connections are in autocommit and keep psycopg's prepared
statements, and pooled connections are pinged only after being idle, with a dropped connection replaced
transparently."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, bindparam, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from tmsi import db as tmsi_db
from tmsi.db import make_engine, make_read_engine, make_sessionmaker
from tmsi.models import Role, User


@pytest.fixture
def small_engine(factory: sessionmaker[Session]) -> Iterator[Engine]:
    """A fresh engine on the test database with a pool of one connection (so "the same connection"
    is certain)."""
    url = factory.kw["bind"].url
    engine = make_engine(url.render_as_string(hide_password=False), pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


@pytest.fixture
def small_read_engine(factory: sessionmaker[Session]) -> Iterator[Engine]:
    """A read engine (``make_read_engine``) on the test database with a pool of one connection."""
    url = factory.kw["bind"].url
    engine = make_read_engine(url.render_as_string(hide_password=False), pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def _postgresql_only(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("prepared statements and backend termination are PostgreSQL matters")


def _prepared(db: Session) -> int:
    return int(db.scalar(text("SELECT count(*) FROM pg_prepared_statements")) or 0)


def test_read_sessions_keep_prepared_statements(small_engine: Engine, small_read_engine: Engine) -> None:
    _postgresql_only(small_engine)
    reads = make_sessionmaker(small_read_engine)
    statement = select(func.count(User.id)).where(User.role == Role.LEAD)
    seen = []
    for _ in range(8):  # past psycopg's prepare threshold (5 executions of one statement)
        with reads() as db:
            seen.append(_prepared(db))
            db.scalar(statement)
    assert seen[:5] == [0, 0, 0, 0, 0]
    assert seen[-1] >= 1, "prepared on the fifth use and kept by the following sessions"
    # A plain session that only reads ends with ROLLBACK, and psycopg then drops them: why reads
    # go through the autocommit engine.
    plain = make_sessionmaker(small_engine)
    for _ in range(8):
        with plain() as db:
            db.scalar(statement)
    with plain() as db:
        assert _prepared(db) == 0


def test_read_sessions_run_outside_a_transaction(
    factory: sessionmaker[Session], small_read_engine: Engine
) -> None:
    reads = make_sessionmaker(small_read_engine)
    with factory.begin() as db:
        db.add(User(email="before@example.test", name="Before", role=Role.ANALYST, password_hash="x"))
    with reads() as db:
        assert db.scalar(select(func.count(User.id)).where(User.email == "before@example.test")) == 1
        # Each statement sees what was committed meanwhile (no snapshot held across statements).
        with factory.begin() as other:
            other.add(User(email="during@example.test", name="During", role=Role.ANALYST, password_hash="x"))
        assert db.scalar(select(func.count(User.id)).where(User.email == "during@example.test")) == 1


def _count_pings(monkeypatch: pytest.MonkeyPatch, engine: Engine) -> list[Any]:
    calls: list[Any] = []
    original = engine.dialect.do_ping

    def counting(dbapi_conn: Any) -> bool:
        calls.append(dbapi_conn)
        return original(dbapi_conn)

    monkeypatch.setattr(engine.dialect, "do_ping", counting)
    return calls


def test_connection_pinged_only_after_idle(small_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    _postgresql_only(small_engine)
    pings = _count_pings(monkeypatch, small_engine)
    with small_engine.connect() as conn:  # a new connection: pinged
        conn.execute(text("SELECT 1"))
    assert len(pings) == 1
    for _ in range(3):  # just returned: not pinged again
        with small_engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    assert len(pings) == 1
    monkeypatch.setattr(tmsi_db, "PING_AFTER_IDLE_SECONDS", 0.0)
    with small_engine.connect() as conn:  # idle "long enough": pinged
        conn.execute(text("SELECT 1"))
    assert len(pings) == 2


def test_dropped_idle_connection_is_replaced(small_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    _postgresql_only(small_engine)
    with small_engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    # The server drops the idle connection (a restart, an idle timeout, an administrator).
    with make_engine(small_engine.url.render_as_string(hide_password=False)).connect() as admin:
        assert admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar() is True
    monkeypatch.setattr(tmsi_db, "PING_AFTER_IDLE_SECONDS", 0.0)
    with small_engine.connect() as conn:
        new_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    assert new_pid != pid


def test_driver_query_returns_what_sqlalchemy_returns(
    factory: sessionmaker[Session], small_read_engine: Engine
) -> None:
    """A DriverQuery gives the same row as the statement run through SQLAlchemy (on PostgreSQL as the
    driver's tuple, enums as their stored values), constants bound in the statement included."""
    with factory.begin() as db:
        db.add(User(email="driver@example.test", name="Dri Ver", role=Role.LEAD, password_hash="h"))
    statement = (
        select(User.email, User.name, User.role, User.active, func.length(User.email) + 1)
        .where(User.email == bindparam("email"), User.role != "auditor")
        .limit(5)
    )
    query = tmsi_db.DriverQuery(statement)
    reads = make_sessionmaker(small_read_engine)
    with reads() as db:
        for _ in range(3):  # the compiled SQL is reused
            row = query.first(db.connection(), {"email": "driver@example.test"})
            assert tuple(row[:2]) == ("driver@example.test", "Dri Ver")
            assert Role(row[2]) is Role.LEAD and row[3] is True and row[4] == len("driver@example.test") + 1
        assert query.first(db.connection(), {"email": "nobody@example.test"}) is None
        expected = db.execute(statement, {"email": "driver@example.test"}).one()
    assert (row[0], row[1], Role(row[2]), row[3], row[4]) == tuple(expected)


def test_driver_query_refuses_values_that_need_conversion(
    factory: sessionmaker[Session], small_read_engine: Engine
) -> None:
    """An enum bound in the statement would reach the driver unconverted (psycopg dumps an enum by
    name): refused when the statement is compiled, instead of silently matching nothing."""
    with factory.begin() as db:
        db.add(User(email="lead@example.test", name="Lead", role=Role.LEAD, password_hash="h"))
    query = tmsi_db.DriverQuery(select(User.email).where(User.role == Role.LEAD))
    reads = make_sessionmaker(small_read_engine)
    with reads() as db:
        if db.get_bind().dialect.name != "postgresql":  # elsewhere SQLAlchemy converts it
            assert tuple(query.first(db.connection(), {})) == ("lead@example.test",)
            return
        with pytest.raises(TypeError, match="role_1"):
            query.first(db.connection(), {})


def _autocommit(dbapi_connection: Any) -> bool:
    driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    if hasattr(driver, "autocommit") and not hasattr(driver, "isolation_level"):
        return bool(driver.autocommit)  # psycopg
    return driver.isolation_level is None  # sqlite3: no implicit BEGIN


def test_read_engine_connections_are_in_autocommit_from_the_start(small_read_engine: Engine) -> None:
    """Set once when the connection is made, not per checkout: a checkout changes nothing."""
    changes: list[Any] = []
    original = small_read_engine.dialect.set_isolation_level

    def counting(dbapi_conn: Any, level: Any) -> None:
        changes.append(level)
        original(dbapi_conn, level)

    small_read_engine.dialect.set_isolation_level = counting  # type: ignore[method-assign]
    try:
        for _ in range(3):
            with small_read_engine.connect() as conn:
                assert _autocommit(conn.connection.dbapi_connection)
                assert conn.execute(select(func.count(User.id))).scalar() == 0
        assert len(changes) <= 1, changes  # at most once, when the pool's one connection was made
    finally:
        del small_read_engine.dialect.set_isolation_level
