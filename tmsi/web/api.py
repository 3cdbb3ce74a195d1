"""JSON API under /api/v1 and the liveness probe."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from tmsi.domain.networks import NetworkError, parse_network
from tmsi.services.listings import lookup
from tmsi.web.auth import ALL_ROLES, request_session, role_required

bp = Blueprint("api", __name__)


def json_error(status: int, error: str, message: str) -> Any:
    return jsonify(error=error, message=message), status


@bp.get("/healthz")
def healthz() -> Any:
    return jsonify(status="ok")


@bp.get("/api/v1/listings")
@role_required(ALL_ROLES)
def listings() -> Any:
    """The listings store for analysts and their scripts (a token or a session); the public, anonymous
    look-up of one address is /api/v1/lookup (rate-limited)."""
    query = request.args.get("ip", "").strip()
    if not query:
        return json_error(400, "missing_ip", "pass ?ip=ADDRESS or ?ip=CIDR")
    try:
        network = parse_network(query)
    except NetworkError as exc:
        return json_error(400, "invalid_ip", str(exc))
    # on the request's read connection, which signing the caller in already holds
    return jsonify(lookup(request_session(), network))
