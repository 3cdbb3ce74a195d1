"""Errors as JSON under /api and as pages elsewhere; never a stack trace to the client."""

from __future__ import annotations

from typing import Any

from flask import Flask, abort, jsonify, request
from werkzeug.exceptions import HTTPException

NUL_REFUSED = "Text with a NUL character (0x00) is not accepted."


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def register(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        if wants_json():
            return jsonify(error=exc.name.lower().replace(" ", "_"), message=exc.description), exc.code
        return exc

    @app.before_request
    def _refuse_nul() -> None:
        # PostgreSQL stores no NUL in text: one in a path, a query, a form or a JSON body would reach the
        # database as an error (a 500). Mail is different: ingest keeps it, replaced (services.ingest).
        if request_has_nul():
            abort(400, description=NUL_REFUSED)


def request_has_nul() -> bool:
    """Whether the request's path, query, headers, form fields or JSON strings hold a NUL character."""
    if "\x00" in request.path or _any_nul(request.args.items(multi=True)):
        return True
    if _any_nul(request.headers.items()):
        return True
    if request.method in {"POST", "PUT", "PATCH", "DELETE"}:
        if request.is_json:
            return _json_has_nul(request.get_json(silent=True))
        return _any_nul(request.form.items(multi=True))
    return False


def _any_nul(pairs: Any) -> bool:
    return any("\x00" in key or "\x00" in value for key, value in pairs)


def _json_has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in key or _json_has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_json_has_nul(item) for item in value)
    return False
