"""Web layer: blueprints are registered here, in one place."""

from __future__ import annotations

from flask import Flask


def register_web(app: Flask) -> None:
    from tmsi.web import api, errors

    errors.register(app)
    app.register_blueprint(api.bp)
