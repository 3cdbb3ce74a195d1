"""The ``tmsi`` command: a Flask CLI group. Feature groups are listed here and imported only when used,
so ``tmsi rdns classify`` or ``tmsi mail explain`` start without loading the ORM or the web app."""

from __future__ import annotations

import importlib
from typing import Any

import click
from flask.cli import FlaskGroup

# name → (module, attribute). Our `run` (web + worker + scheduler) replaces Flask's development `run`.
COMMANDS: dict[str, tuple[str, str]] = {
    "authority": ("tmsi.cli.authority", "authority"),
    "db": ("tmsi.cli.db", "db"),
    "demo": ("tmsi.cli.run", "demo"),
    "jobs": ("tmsi.cli.run", "jobs"),
    "listings": ("tmsi.cli.listings", "listings"),
    "mail": ("tmsi.cli.mail", "mail"),
    "rdns": ("tmsi.cli.rdns", "rdns"),
    "run": ("tmsi.cli.run", "run"),
    "users": ("tmsi.cli.users", "users"),
    "worker": ("tmsi.cli.run", "worker"),
}


def _create_app() -> Any:
    from tmsi import create_app

    return create_app()


class TmsiGroup(FlaskGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            module, attr = COMMANDS[cmd_name]
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, cmd_name)


main = TmsiGroup(
    create_app=_create_app,
    add_default_commands=True,
    load_dotenv=True,
    help="tmsi: delisting-request case management for a DNS blocklist.",
)
