"""Flask's signed-cookie sessions, with each verified cookie remembered per process.

A browser sends the same session cookie on every request until the app signs a new one (at sign-in and
once a minute, ``auth.SEEN_STEP``). Checking it again each time (key derivation, HMAC, base64, zlib and
tagged JSON) cost more than the rest of signing the user in. So a cookie whose signature was checked is
remembered under its exact text and the keys that checked it, and the next request with the same text
only has its age checked against the session lifetime, as itsdangerous would. Nothing unverified is
remembered; a changed secret key misses; each request gets its own copy of the contents.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

from flask import Flask, Request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from itsdangerous import BadSignature

CACHE_SIZE = 4096
_MUTABLE = (list, dict, set, bytearray)


class VerifiedCookieSessions(SecureCookieSessionInterface):
    """:class:`SecureCookieSessionInterface` with a per-process memory of verified cookies."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        # (keys, cookie text) -> (signed at, contents); insertion order is eviction order.
        self._verified: dict[tuple[Any, ...], tuple[int, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not app.secret_key:
            return None
        text = request.cookies.get(self.get_cookie_name(app))
        if not text:
            return self.session_class()
        max_age = int(app.permanent_session_lifetime.total_seconds())
        key = (app.secret_key, tuple(app.config["SECRET_KEY_FALLBACKS"] or ()), text)
        known = self._verified.get(key)
        if known is None:
            serializer = self.get_signing_serializer(app)
            assert serializer is not None  # a secret key is set
            try:
                data, signed = serializer.loads(text, max_age=max_age, return_timestamp=True)
            except BadSignature:  # forged, altered, signed with another key, or expired
                return self.session_class()
            known = (int(signed.timestamp()), data)
            self._remember(key, known)
        signed_at, data = known
        age = int(time.time()) - signed_at
        if age > max_age or age < 0:  # itsdangerous's own test (SignatureExpired)
            return self.session_class()
        # The request may change its session (a flash message appends to a list): never the remembered one.
        fresh = {name: copy.deepcopy(v) if isinstance(v, _MUTABLE) else v for name, v in data.items()}
        return self.session_class(fresh)

    def _remember(self, key: tuple[Any, ...], value: tuple[int, dict[str, Any]]) -> None:
        with self._lock:
            while len(self._verified) >= self.size:
                self._verified.pop(next(iter(self._verified)), None)
            self._verified[key] = value
