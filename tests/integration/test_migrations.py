"""Migrations: empty → head → base works, and the models match head (autogenerate finds nothing)."""

from __future__ import annotations

import uuid

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from tmsi.cli.db import alembic_config
from tmsi.db import Base, make_engine


@pytest.fixture
def empty_database_url(database_url, tmp_path):
    """A fresh empty database of the same kind as the test database."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'migrate.db'}"
        return
    name = f"tmsi_mig_{uuid.uuid4().hex[:8]}"
    admin = make_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base, _, _ = database_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_upgrade_downgrade_roundtrip_and_no_autogenerate_diff(empty_database_url):
    cfg = alembic_config(empty_database_url)
    command.upgrade(cfg, "head")
    engine = make_engine(empty_database_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
        assert diff == [], f"models and migrations differ: {diff}"
        command.downgrade(cfg, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        command.upgrade(cfg, "head")
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
