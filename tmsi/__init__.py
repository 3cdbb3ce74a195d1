"""tmsi: case management for a DNS blocklist's delisting requests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from tmsi.config import Settings

__version__ = "0.1.0"


def create_app(settings: Settings | dict[str, Any] | None = None) -> Flask:
    """Build the Flask app: settings, database, extensions, blueprints. Nothing else happens here."""
    from tmsi.app import build_app

    return build_app(settings)


def source_or_package_dir(name: str) -> Path:
    """The directory ``name`` (``templates``, ``migrations``) that belongs with this tmsi package.

    An installed wheel carries it inside the package (``tmsi/<name>``, see setup.py); a source checkout
    (editable install) has it at the top of the tree, next to ``tmsi/``.
    """
    here = Path(__file__).resolve().parent
    inside = here / name
    return inside if inside.is_dir() else here.parent / name
