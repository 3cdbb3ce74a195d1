"""Shared fixtures: settings, a migrated database (SQLite, or PostgreSQL via TMSI_TEST_DATABASE_URL),
sessions rolled back per test, the Flask app and its client; and a guard against non-loopback traffic."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session, sessionmaker

pytest_plugins = ["tests.services.plugin"]

ROOT = Path(__file__).resolve().parents[1]


# --- no traffic beyond loopback ------------------------------------------------------------------
_real_connect = socket.socket.connect
_real_sendto = socket.socket.sendto


def _check_target(address: Any) -> None:
    if isinstance(address, tuple) and address:
        host = address[0]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if host in {"localhost"}:
                return
            raise RuntimeError(f"test tried to reach {host!r}: only loopback is allowed") from None
        if not ip.is_loopback and not ip.is_unspecified:
            raise RuntimeError(f"test tried to reach {ip}: only loopback is allowed")


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    _check_target(address)
    return _real_connect(self, address)


def _guarded_sendto(self: socket.socket, data: Any, *args: Any) -> Any:
    _check_target(args[-1])
    return _real_sendto(self, data, *args)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "sendto", _guarded_sendto)


# --- database ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = os.environ.get("TMSI_TEST_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'tmsi-test.db'}"


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    from sqlalchemy import text

    from tmsi.cli.db import upgrade
    from tmsi.db import make_engine

    if database_url.startswith("postgresql"):
        # A throw-away test database: start from an empty schema so every run migrates from scratch.
        reset = make_engine(database_url)
        with reset.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        reset.dispose()
    upgrade(database_url)
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


def _wipe(engine: Engine) -> None:
    from tmsi.db import Base

    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(delete(table))


@pytest.fixture
def factory(engine: Engine) -> Iterator[sessionmaker[Session]]:
    """A session factory on the real test database; every row is removed after the test.

    Use it where code under test opens and commits its own transactions (jobs, CLI, web requests).
    """
    from tmsi.db import make_sessionmaker

    _wipe(engine)
    yield make_sessionmaker(engine)
    _wipe(engine)


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session inside an outer transaction that is rolled back after the test (services never commit)."""
    conn = engine.connect()
    outer = conn.begin()
    sess = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield sess
    finally:
        sess.close()
        outer.rollback()
        conn.close()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Any:
    from tmsi.config import Settings

    return Settings(
        database_url=database_url,
        secret_key="test-secret",
        environment="test",
        instance_path=tmp_path / "instance",
        zone_dir=tmp_path / "zone",
        maildir_path=tmp_path / "maildir",
        mailbox_address="dul@example.test",
        mail_domain="example.test",
        dnsbl_zone="dul.example.test",
        own_networks=["192.0.2.0/28"],
        authserv_ids=["mx.example.test"],
        huey_storage="memory",
        _env_file=None,
    )


@pytest.fixture
def app(settings: Any, factory: sessionmaker[Session]) -> Iterator[Any]:
    from tmsi import create_app

    application = create_app(settings)
    application.config.update(TESTING=True)
    yield application
    application.extensions["tmsi.db"].dispose()  # both pools: no connections left to the GC


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()
