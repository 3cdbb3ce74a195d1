"""Flask extensions shared by every blueprint, created unbound and attached in :func:`init_extensions`.

``limiter`` is the one Flask-Limiter instance of the app: any blueprint rate-limits a view with
``@limiter.limit("10 per minute")`` (the public lookup page uses it too). ``csrf`` protects every form.
"""

from __future__ import annotations

from flask import Flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFProtect

from tmsi.config import Settings

limiter = Limiter(key_func=get_remote_address, default_limits=[], headers_enabled=True)
csrf = CSRFProtect()


def init_extensions(app: Flask, settings: Settings) -> None:
    app.config.setdefault("RATELIMIT_STORAGE_URI", settings.ratelimit_storage_url)
    # A form left open a whole idle period still submits; after that the token is refused with a clear page.
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", max(settings.session_idle_minutes, 1) * 60)
    app.config.setdefault("WTF_CSRF_SSL_STRICT", settings.session_cookie_secure)
    limiter.init_app(app)
    # Flask-Limiter checks application-wide and default limits before every request. tmsi has none: each
    # limit is on its view and checked by that view's decorator. So that check is dropped (it cost more
    # than a page's security headers on every request); should such limits ever be configured, it stays.
    manager = limiter.limit_manager
    if not manager.application_limits and not manager.default_limits:
        app.before_request_funcs[None].remove(limiter._check_request_limit)
    csrf.init_app(app)
