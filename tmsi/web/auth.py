"""Sign-in, roles and request security: sessions with an idle timeout, API bearer tokens, CSRF errors,
rate-limited login, and the security headers (strict CSP) on every response.

Roles: analyst works cases; lead = analyst + edits templates and policy; admin = lead + manages users;
auditor reads everything and changes nothing.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    abort,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf.csrf import CSRFError, generate_csrf
from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException

from tmsi.app import get_db, get_settings
from tmsi.db import DriverQuery, utcnow
from tmsi.models import Role, User
from tmsi.services import audit, users
from tmsi.web.extensions import limiter
from tmsi.web.sessions import VerifiedCookieSessions

bp = Blueprint("auth", __name__)

F = TypeVar("F", bound=Callable[..., Any])

ALL_ROLES = frozenset(Role)
ACT_ROLES = frozenset({Role.ANALYST, Role.LEAD, Role.ADMIN})
TEMPLATE_ROLES = frozenset({Role.LEAD, Role.ADMIN})
USER_ADMIN_ROLES = frozenset({Role.ADMIN})
USER_READ_ROLES = frozenset({Role.ADMIN, Role.AUDITOR})
AUDIT_ROLES = frozenset({Role.LEAD, Role.ADMIN, Role.AUDITOR})

LOGIN_LIMIT = "10 per minute;50 per hour"
ACCOUNT_LOGIN_LIMIT = "30 per hour"

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "frame-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
# The frame that shows a sanitized HTML mail: no scripts, no remote loads, nothing but inline styles.
MAIL_FRAME_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'; sandbox"
)


@dataclass(frozen=True)
class CurrentUser:
    id: int
    email: str
    name: str
    role: Role
    via_token: bool = False

    def can(self, roles: frozenset[Role]) -> bool:
        return self.role in roles

    @property
    def actor(self) -> users.Actor:
        return users.Actor(id=self.id, email=self.email)

    @property
    def can_act(self) -> bool:
        return self.role in ACT_ROLES


def current_user() -> CurrentUser | None:
    return getattr(g, "user", None)


def require_user() -> CurrentUser:
    user = current_user()
    if user is None:
        abort(401)
    return user


@functools.lru_cache(maxsize=1024)  # checked on every request: one hash per user and password
def _password_tag(password_hash: str) -> str:
    # A password change (or reset) ends every session that signed in with the old one.
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def request_db() -> Connection:
    """The request's read connection, opened on first use and closed when the request ends.

    Signing the user in and a read-only page share it: one pooled connection per request instead of one
    per step, in autocommit (``Database.read_engine``). A Core connection, not an ORM session: a session
    around it cost more than the page's statement; :func:`request_session` gives one where a service
    needs it. Writes use their own ``unit_of_work``.
    """
    conn: Connection | None = g.get("_tmsi_read_conn")
    if conn is None:
        conn = g._tmsi_read_conn = get_db().read_engine.connect()
    return conn


def request_session() -> Session:
    """An ORM session on the request's read connection (:func:`request_db`), for services that take one."""
    db: Session | None = g.get("_tmsi_read_db")
    if db is None:
        db = g._tmsi_read_db = Session(bind=request_db(), expire_on_commit=False)
    return db


def _close_request_db(_exc: BaseException | None) -> None:
    db: Session | None = g.pop("_tmsi_read_db", None)
    if db is not None:
        db.close()
    conn: Connection | None = g.pop("_tmsi_read_conn", None)
    if conn is not None:
        conn.close()


# The last-seen time (and the cookie's expiry) moves on at most once a minute: re-signing and re-sending
# the session cookie on every request cost more than the rest of signing in. The idle limit is exact to
# this step.
SEEN_STEP = 60
# Built once (and on PostgreSQL compiled once): only the id is bound per request.
_SESSION_USER = DriverQuery(
    select(User.id, User.email, User.name, User.role, User.active, User.password_hash).where(
        User.id == bindparam("uid")
    )
)


def _load_user() -> None:
    g.user = None
    if request.endpoint in {"static", "ui.static"}:
        return  # style sheets and scripts are public and need no database round trip
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer " and request.path.startswith("/api/"):
        with get_db().factory.begin() as db:
            user = users.user_for_token(db, header[7:].strip())
            if user is not None:
                g.user = CurrentUser(user.id, user.email, user.name, user.role, via_token=True)
        return
    uid = session.get("uid")
    if uid is None:
        return
    now = int(time.time())
    idle = get_settings().session_idle_minutes * 60
    if now - int(session.get("seen", 0)) > idle:
        session.clear()
        g.session_expired = True
        return
    # Every request reads the user afresh (one primary-key row): disabling a user, a role change or a
    # password reset takes effect on their very next request.
    row = _SESSION_USER.first(request_db(), {"uid": uid})
    if row is None:
        session.clear()
        return
    user_id, email, name, role, active, password_hash = row
    if not active or session.get("pwd") != _password_tag(password_hash):
        session.clear()
        return
    g.user = CurrentUser(user_id, email, name, Role(role))
    if now - int(session.get("seen", 0)) >= SEEN_STEP:
        session["seen"] = now  # and the cookie is sent again, with its expiry moved on


def _unauthenticated() -> Any:
    if request.path.startswith("/api/"):
        return jsonify(error="unauthorized", message="sign in or send 'Authorization: Bearer <token>'"), 401
    if getattr(g, "session_expired", False):
        flash("Your session expired after a period of inactivity; please sign in again.", "warning")
    target = request.full_path if request.method == "GET" else request.path
    return redirect(url_for("auth.login", next=target.rstrip("?")))


def login_required(view: F) -> F:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if current_user() is None:
            return _unauthenticated()
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def role_required(*roles: Role | frozenset[Role]) -> Callable[[F], F]:
    """Allow only users whose role is one of ``roles`` (403 otherwise; sign-in first when anonymous)."""
    allowed: set[Role] = set()
    for item in roles:
        allowed.update(item if isinstance(item, frozenset) else {item})

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            user = current_user()
            if user is None:
                return _unauthenticated()
            if user.role not in allowed:
                abort(403, description=f"your role ({user.role.value}) may not do this")
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorate


def _safe_next(target: str | None) -> str:
    if not target:
        return url_for("ui.queue")
    parts = urlsplit(target)
    # Only a local path: never an absolute URL or a scheme-relative //host (open redirect).
    if (
        parts.scheme
        or parts.netloc
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
    ):
        return url_for("ui.queue")
    return target


def _login_account() -> str:
    return "login:" + request.form.get("email", "").strip().lower()[:255]


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(LOGIN_LIMIT, methods=["POST"])
# Per account as well: guessing one user's password from many addresses is slowed down too.
@limiter.limit(ACCOUNT_LOGIN_LIMIT, methods=["POST"], key_func=_login_account)
def login() -> Any:
    next_url = request.values.get("next", "")
    if request.method == "GET":
        if current_user() is not None:
            return redirect(_safe_next(next_url))
        return render_template("ui/login.html", next=next_url, email="")
    email = request.form.get("email", "").strip()
    password = request.form.get("password", "")
    with get_db().factory.begin() as db:
        user = users.get_by_email(db, email) if email else None
        ok = users.check_password(user, password) and user is not None and user.active
        if user is not None and not ok:
            user.failed_logins += 1
            audit.record(
                db,
                action="auth.login_failed",
                actor=user.email,
                actor_id=user.id,
                object_type="user",
                object_id=user.email,
            )
        if ok and user is not None:
            user.failed_logins = 0
            user.last_login_at = utcnow()
            audit.record(
                db,
                action="auth.login",
                actor=user.email,
                actor_id=user.id,
                object_type="user",
                object_id=user.email,
            )
            session.clear()  # no session fixation: a fresh session after sign-in
            session.permanent = True
            session["uid"] = user.id
            session["pwd"] = _password_tag(user.password_hash)
            session["seen"] = int(time.time())
            # The forms' CSRF secret goes into this same cookie, so the first page's forms do not
            # change the session (and make the app sign and send a new cookie) again.
            g.pop("csrf_token", None)
            generate_csrf()
    if not ok:
        return render_template(
            "ui/login.html", next=next_url, email=email, error="Unknown e-mail address or wrong password."
        ), 401
    return redirect(_safe_next(next_url))


@bp.route("/logout", methods=["GET", "POST"])
def logout() -> Any:
    if request.method == "GET":
        if current_user() is None:
            return redirect(url_for("auth.login"))
        return render_template("ui/logout.html")
    user = current_user()
    if user is not None:
        with get_db().factory.begin() as db:
            audit.record(
                db,
                action="auth.logout",
                actor=user.email,
                actor_id=user.id,
                object_type="user",
                object_id=user.email,
            )
    session.clear()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))


# Added to every response that does not set its own (the mail frame sets a stricter CSP).
_SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
)
_NO_STORE = ("Cache-Control", "no-store")
# Only on a response over HTTPS (directly, or through a trusted proxy: TMSI_TRUSTED_PROXIES): browsers
# then refuse plain http to this host for a year. Over http it would be ignored, and is not sent.
_HSTS = ("Strict-Transport-Security", "max-age=31536000")


def _security_headers(response: Any) -> Any:
    headers = response.headers
    # One pass over what the view set, then appends: werkzeug's setdefault raises and catches a
    # KeyError (an HTTP exception object) for every header that is missing, which is every one of them.
    present = {name.lower() for name, _value in headers}
    wanted = _SECURITY_HEADERS if current_user() is None else (*_SECURITY_HEADERS, _NO_STORE)
    if request.is_secure:
        wanted = (*wanted, _HSTS)
    for name, value in wanted:
        if name.lower() not in present:
            headers.add(name, value)
    return response


def _error_page(status: int, title: str, message: str) -> Any:
    if request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json":
        return jsonify(error=title.lower().replace(" ", "_"), message=message), status
    return render_template("ui/error.html", status=status, title=title, message=message), status


def init_auth(app: Flask) -> None:
    """Attach the app-wide parts: user loading, security headers, clear error pages."""
    settings = get_settings_from(app)
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.session_cookie_secure,
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=settings.session_idle_minutes),
        SESSION_REFRESH_EACH_REQUEST=False,  # sent again when changed: on sign-in, every SEEN_STEP
    )
    app.session_interface = VerifiedCookieSessions()
    app.before_request(_load_user)
    app.teardown_request(_close_request_db)
    app.after_request(_security_headers)

    @app.context_processor
    def _inject_user() -> dict[str, Any]:
        return {"current_user": current_user(), "Role": Role}

    @app.errorhandler(CSRFError)
    def _csrf_error(exc: CSRFError) -> Any:
        return _error_page(
            400,
            "Form expired",
            "This form has expired or was not sent from this site ("
            + (exc.description or "CSRF check failed")
            + "). Nothing was changed. Go back, reload the page and submit again.",
        )

    @app.errorhandler(429)
    def _too_many(exc: HTTPException) -> Any:
        return _error_page(429, "Too many attempts", "Too many requests; wait a minute and try again.")

    @app.errorhandler(403)
    def _forbidden(exc: HTTPException) -> Any:
        return _error_page(403, "Forbidden", exc.description or "You may not do this.")

    @app.errorhandler(404)
    def _not_found(exc: HTTPException) -> Any:
        return _error_page(404, "Not found", exc.description or "There is nothing here.")


def get_settings_from(app: Flask) -> Any:
    return app.config["TMSI"]
