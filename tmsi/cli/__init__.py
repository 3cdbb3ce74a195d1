"""The ``tmsi`` command: a Flask CLI group; each feature registers its group here."""

from __future__ import annotations

from typing import Any

from flask.cli import FlaskGroup

from tmsi.cli import authority, db, listings, mail, rdns, run, users


def _create_app() -> Any:
    from tmsi import create_app

    return create_app()


main = FlaskGroup(
    create_app=_create_app,
    add_default_commands=True,
    load_dotenv=True,
    help="tmsi: delisting-request case management for a DNS blocklist.",
)
main.add_command(db.db)
main.add_command(listings.listings)
main.add_command(mail.mail)
main.add_command(rdns.rdns)
main.add_command(authority.authority)
# our `run` (web + worker + scheduler) replaces Flask's development-server `run` on purpose
main.add_command(run.run)
main.add_command(run.worker)
main.add_command(run.jobs)
main.add_command(users.users)
main.add_command(run.demo)
