"""``tmsi db``: schema migrations (Alembic)."""

from __future__ import annotations

import click
from alembic import command
from alembic.config import Config

from tmsi import source_or_package_dir
from tmsi.config import load_settings


def alembic_config(database_url: str | None = None) -> Config:
    migrations = source_or_package_dir("migrations")
    ini = migrations.parent / "alembic.ini"
    cfg = Config(str(ini)) if ini.exists() else Config()
    cfg.set_main_option("script_location", str(migrations))
    cfg.set_main_option("sqlalchemy.url", database_url or load_settings().database_url)
    return cfg


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


@click.group("db")
def db() -> None:
    """Database schema migrations."""


@db.command("upgrade")
@click.argument("revision", default="head")
def upgrade_cmd(revision: str) -> None:
    """Upgrade the schema to REVISION (default: head)."""
    upgrade(revision=revision)
    click.echo(f"database upgraded to {revision}")


@db.command("downgrade")
@click.argument("revision", default="-1")
def downgrade_cmd(revision: str) -> None:
    """Downgrade the schema to REVISION (default: one step; 'base' for empty)."""
    command.downgrade(alembic_config(), revision)
    click.echo(f"database downgraded to {revision}")


@db.command("current")
def current_cmd() -> None:
    """Show the current revision."""
    command.current(alembic_config(), verbose=False)
