"""Wiring of the Flask application (kept out of ``tmsi/__init__`` so importing tmsi stays cheap)."""

from __future__ import annotations

import functools
from typing import Any

from flask import Flask, current_app
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from tmsi.config import Settings, load_settings
from tmsi.db import make_engine, make_read_engine, make_sessionmaker


class Database:
    """The engines and session factories of one app (also used by jobs and the CLI): ``engine`` and
    ``factory`` for transactions, ``read_engine`` and ``reads`` (made on first use) for work that only
    reads, in autocommit on a pool of its own (``make_read_engine``)."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.database_url
        self.pool_size = settings.db_pool_size
        self.engine: Engine = make_engine(self.url, pool_size=self.pool_size)
        self.factory: sessionmaker[Session] = make_sessionmaker(self.engine)

    @functools.cached_property
    def read_engine(self) -> Engine:
        return make_read_engine(self.url, pool_size=self.pool_size)

    @functools.cached_property
    def reads(self) -> sessionmaker[Session]:
        return make_sessionmaker(self.read_engine)

    def dispose(self) -> None:
        """Close every pooled connection (of the read pool too, when it was made)."""
        self.engine.dispose()
        if "read_engine" in self.__dict__:
            self.read_engine.dispose()


def build_app(settings: Settings | dict[str, Any] | None = None) -> Flask:
    if settings is None:
        settings = load_settings()
    elif isinstance(settings, dict):
        settings = load_settings(**settings)

    app = Flask(
        __name__,
        template_folder=str(_project_templates()),
        instance_path=str(settings.instance_path.resolve()),
    )
    app.config.update(
        SECRET_KEY=settings.secret_key,
        TMSI=settings,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.session_cookie_secure,
        MAX_CONTENT_LENGTH=16 * 1024 * 1024,
        JSON_SORT_KEYS=False,
    )
    app.extensions["tmsi.db"] = Database(settings)
    if settings.trusted_proxies:
        # Behind a reverse proxy the peer is the proxy: without this every client would share its
        # address (one sign-in and look-up rate limit for all) and its http scheme.
        from werkzeug.middleware.proxy_fix import ProxyFix

        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]

    from tmsi.web import register_web

    register_web(app)
    return app


def _project_templates() -> Any:
    from tmsi import source_or_package_dir

    return source_or_package_dir("templates")


def get_settings() -> Settings:
    settings: Settings = current_app.config["TMSI"]
    return settings


def get_db() -> Database:
    db: Database = current_app.extensions["tmsi.db"]
    return db
