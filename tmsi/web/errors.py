"""Errors as JSON under /api and as pages elsewhere; never a stack trace to the client."""

from __future__ import annotations

from typing import Any

from flask import Flask, abort, jsonify, request
from werkzeug.exceptions import HTTPException

BAD_TEXT_REFUSED = "Text with a NUL character (0x00) or an unpaired surrogate (not Unicode) is not accepted."
MAX_JSON_DEPTH = 32  # tmsi's JSON bodies are an object of scalars and lists: 2 levels
JSON_TOO_DEEP = f"JSON nested deeper than {MAX_JSON_DEPTH} levels is not accepted."


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
        # "\ud800") cannot be encoded at all; either reached the database as an error (a 500). JSON
        # nested deeper than any body of ours stops the parser (RecursionError, a 500). Mail is
        # different: ingest keeps such text, replaced (services.ingest).
        problem = request_text_problem()
        if problem:
            abort(400, description=problem)


def request_text_problem() -> str | None:
    """Why the request's path, query, headers, form fields or JSON body cannot be taken, or None."""
    if _bad(request.path) or _any_bad(request.args.items(multi=True)):
        return BAD_TEXT_REFUSED
    if _any_bad(request.headers.items()):
        return BAD_TEXT_REFUSED
    if request.method in {"POST", "PUT", "PATCH", "DELETE"}:
        if request.is_json:
            try:
                body = request.get_json(silent=True)
            except RecursionError:
                return JSON_TOO_DEEP
            return _json_problem(body, 0)
        if _any_bad(request.form.items(multi=True)):
            return BAD_TEXT_REFUSED
    return None


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


def _json_problem(value: Any, depth: int) -> str | None:
    if depth > MAX_JSON_DEPTH:
        return JSON_TOO_DEEP
    if isinstance(value, str):
        return BAD_TEXT_REFUSED if _bad(value) else None
    if isinstance(value, dict):
        if any(_bad(key) for key in value):
            return BAD_TEXT_REFUSED
        items: Any = value.values()
    elif isinstance(value, list):
        items = value
    else:
        return None
    for item in items:
        problem = _json_problem(item, depth + 1)
        if problem:
            return problem
    return None
