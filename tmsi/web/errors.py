"""Errors as JSON under /api and as pages elsewhere; never a stack trace to the client."""

from __future__ import annotations

from typing import Any

from flask import Flask, abort, jsonify, request
from werkzeug.exceptions import HTTPException

BAD_TEXT_REFUSED = "Text with a NUL character (0x00) or an unpaired surrogate (not Unicode) is not accepted."


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def register(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        if wants_json():
            return jsonify(error=exc.name.lower().replace(" ", "_"), message=exc.description), exc.code
        return exc

    @app.before_request
    def _refuse_bad_text() -> None:
        # No database stores these in text: PostgreSQL refuses NUL, and an unpaired surrogate (a JSON
        # "\ud800") cannot be encoded at all; either reached the database as an error (a 500). Mail is
        # different: ingest keeps such text, replaced (services.ingest).
        if request_has_bad_text():
            abort(400, description=BAD_TEXT_REFUSED)


def request_has_bad_text() -> bool:
    """Whether the request's path, query, headers, form fields or JSON strings hold a NUL character or
    an unpaired surrogate."""
    if _bad(request.path) or _any_bad(request.args.items(multi=True)):
        return True
    if _any_bad(request.headers.items()):
        return True
    if request.method in {"POST", "PUT", "PATCH", "DELETE"}:
        if request.is_json:
            return _json_has_bad_text(request.get_json(silent=True))
        return _any_bad(request.form.items(multi=True))
    return False


def _bad(text: str) -> bool:
    if "\x00" in text:
        return True
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _any_bad(pairs: Any) -> bool:
    return any(_bad(key) or _bad(value) for key, value in pairs)


def _json_has_bad_text(value: Any) -> bool:
    if isinstance(value, str):
        return _bad(value)
    if isinstance(value, dict):
        return any(_bad(key) or _json_has_bad_text(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_json_has_bad_text(item) for item in value)
    return False
