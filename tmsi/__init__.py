"""tmsi: case management for a DNS blocklist's delisting requests."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from tmsi.config import Settings

__version__ = "0.1.0"


def create_app(settings: Settings | dict[str, Any] | None = None) -> Flask:
    """Build the Flask app: settings, database, extensions, blueprints. Nothing else happens here."""
    from tmsi.app import build_app

    return build_app(settings)
