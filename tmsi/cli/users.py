"""``tmsi users``: create users, change roles, disable them, and issue API tokens."""

from __future__ import annotations

import sys

import click
from sqlalchemy.orm import Session, sessionmaker

from tmsi.config import load_settings
from tmsi.db import make_engine, make_sessionmaker, unit_of_work
from tmsi.models import Role, User
from tmsi.services import users as svc

ROLE_CHOICE = click.Choice([r.value for r in Role])


def _factory() -> sessionmaker[Session]:
    return make_sessionmaker(make_engine(load_settings().database_url))


def _get(session: Session, email: str) -> User:
    user = svc.get_by_email(session, email)
    if user is None:
        raise click.ClickException(f"no user {email}")
    return user


@click.group("users")
def users() -> None:
    """Analyst accounts, roles and API tokens."""


@users.command("create")
@click.argument("email")
@click.option("--role", type=ROLE_CHOICE, default=Role.ANALYST.value, show_default=True)
@click.option("--name", default="")
@click.option("--password-stdin", is_flag=True, help="read the password from the first line of stdin")
def create_cmd(email: str, role: str, name: str, password_stdin: bool) -> None:
    """Create a user. Without --password-stdin, prompt for the password (twice)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        with unit_of_work(_factory()) as session:
            user = svc.create_user(session, email, Role(role), password=password, name=name)
            click.echo(f"created {user.email} ({user.role.value})")
    except svc.UserError as exc:
        raise click.ClickException(str(exc)) from None


@users.command("set-role")
@click.argument("email")
@click.argument("role", type=ROLE_CHOICE)
def set_role_cmd(email: str, role: str) -> None:
    """Change the role of EMAIL."""
    with unit_of_work(_factory()) as session:
        user = _get(session, email)
        svc.set_role(session, user, Role(role))
        click.echo(f"{user.email} is now {user.role.value}")


@users.command("disable")
@click.argument("email")
def disable_cmd(email: str) -> None:
    """Disable EMAIL: it cannot sign in, its sessions end and its API tokens are revoked."""
    with unit_of_work(_factory()) as session:
        user = _get(session, email)
        svc.set_active(session, user, False)
        click.echo(f"{user.email} disabled")


@users.command("enable")
@click.argument("email")
def enable_cmd(email: str) -> None:
    """Enable EMAIL again (tokens stay revoked)."""
    with unit_of_work(_factory()) as session:
        user = _get(session, email)
        svc.set_active(session, user, True)
        click.echo(f"{user.email} enabled")


@users.command("token")
@click.argument("email")
@click.option("--name", default="cli", show_default=True, help="a label for the token")
def token_cmd(email: str, name: str) -> None:
    """Print a new API token for EMAIL (shown once; only its SHA-256 is stored)."""
    try:
        with unit_of_work(_factory()) as session:
            token = svc.issue_token(session, _get(session, email), name=name)
    except svc.UserError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(token)


@users.command("list")
def list_cmd() -> None:
    """List users and roles."""
    with _factory()() as session:
        from sqlalchemy import select

        for user in session.scalars(select(User).order_by(User.email)):
            click.echo(f"{user.email}\t{user.role.value}\t{'active' if user.active else 'disabled'}")
