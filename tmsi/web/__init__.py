"""Web layer: blueprints are registered here, in one place."""

from __future__ import annotations

from typing import Any

from flask import Flask
from werkzeug.routing import IntegerConverter

from tmsi.domain.ids import MAX_ID


class IdConverter(IntegerConverter):
    """``<int:...>`` in tmsi's routes: at most a 64-bit id, so a larger number is "no such page" (404)
    rather than a number no database column holds (an error, a 500)."""

    def __init__(self, map: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", MAX_ID)
        super().__init__(map, *args, **kwargs)


def register_web(app: Flask) -> None:
    from tmsi.web import api, api_cases, auth, errors, extensions, mailbox, ui

    app.url_map.converters["int"] = IdConverter  # before any route is added
    errors.register(app)
    extensions.init_extensions(app, app.config["TMSI"])
    auth.init_auth(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(ui.bp)
    app.register_blueprint(mailbox.bp)
    app.register_blueprint(api_cases.bp)
    extensions.csrf.exempt(api_cases.bp)
    from tmsi.web import dashboard, ops  # operations: /readyz, /metrics, request ids; leads' /dashboard

    app.register_blueprint(ops.bp)
    app.register_blueprint(dashboard.bp)
    from tmsi.web import public  # /lookup, /api/v1/lookup: no sign-in, rate-limited (delisting)

    app.register_blueprint(public.bp)
