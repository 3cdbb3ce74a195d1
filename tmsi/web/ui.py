"""The analyst's pages: the queue, the case page and its action forms, reply templates, users, audit.

Every view checks the role; every form carries a CSRF token, the case's lock version and a one-time
idempotency token. Mail content is hostile: it is shown as escaped text, HTML only sanitized (nh3)
inside a sandboxed frame, attachments only as downloads.
"""

from __future__ import annotations

import email
import email.policy
import functools
import ipaddress
import itertools
import operator
import secrets
import time
from collections import namedtuple
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from io import BytesIO
from typing import Any

import nh3
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    has_request_context,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    session,
    url_for,
)
from flask_wtf.csrf import generate_csrf
from jinja2.utils import htmlsafe_json_dumps
from markupsafe import Markup, escape
from sqlalchemy import (
    JSON,
    BindParameter,
    Connection,
    Integer,
    bindparam,
    column,
    func,
    literal_column,
    or_,
    select,
    text,
)
from sqlalchemy import Enum as SAEnum
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.sql.visitors import replacement_traverse
from werkzeug.utils import secure_filename

from tmsi.app import get_db, get_settings
from tmsi.db import DriverQuery, Reader, UTCDateTime, dialect_name, unit_of_work, utcnow
from tmsi.domain.ids import parse_id, parse_page
from tmsi.models import (
    ApiToken,
    AuditEvent,
    Case,
    CaseNote,
    CaseStatus,
    CaseTarget,
    CheckResult,
    DnsCheck,
    Message,
    OutboxMessage,
    ReplyTemplate,
    Resolution,
    Role,
    RunStatus,
    User,
    VerificationRun,
)
from tmsi.services import audit, cases, decide, policy, replies, users, verify
from tmsi.services import queue as queue_svc
from tmsi.services.listings import find_overlapping_rows_many
from tmsi.services.outbox import HeaderInjection
from tmsi.web import actions
from tmsi.web.auth import (
    ACT_ROLES,
    ALL_ROLES,
    AUDIT_ROLES,
    MAIL_FRAME_CSP,
    TEMPLATE_ROLES,
    USER_ADMIN_ROLES,
    USER_READ_ROLES,
    request_db,
    request_session,
    require_user,
    role_required,
)

bp = Blueprint("ui", __name__, static_folder="static", static_url_path="/static/ui")

CHECK_HISTORY = 50
TIMELINE_LIMIT = 500
AUDIT_PAGE = 100


def _case_or_404(db: Session, reference: str) -> Case:
    case = cases.get_by_reference(db, reference)
    if case is None:
        abort(404, description=f"There is no case {reference}.")
    return case


def _form_token() -> str:
    return secrets.token_urlsafe(16)


# The layout's links (style sheet, script, navigation) and the queue's: the same on every page of a
# deployment, so built once per script root (the URL prefix a proxy mounts the app under) instead of a
# dozen url_for calls per page.
_LAYOUT_LINKS: dict[str, tuple[str, dict[str, Any]]] = {
    "css": ("ui.static", {"filename": "css/app.css"}),
    "js": ("ui.static", {"filename": "js/app.js"}),
    "queue": ("ui.queue", {}),
    "bulk": ("ui.bulk", {}),
    "login": ("auth.login", {}),
    "logout": ("auth.logout", {}),
    "templates": ("ui.templates_list", {}),
    "mail": ("mailbox.mail_list", {}),
    "users": ("ui.users_page", {}),
    "audit": ("ui.audit_page", {}),
    "dashboard": ("dashboard.dashboard", {}),
    "policy": ("ui.policy_page", {}),
}
_LINKS_BY_ROOT: dict[str, dict[str, str]] = {}


def _layout_links() -> dict[str, str]:
    root = request.script_root
    links = _LINKS_BY_ROOT.get(root)
    if links is None:
        links = {name: url_for(endpoint, **values) for name, (endpoint, values) in _LAYOUT_LINKS.items()}
        if len(_LINKS_BY_ROOT) < 16:  # a deployment has one or two prefixes; never grow without bound
            _LINKS_BY_ROOT[root] = links
    return links


@bp.app_context_processor
def _helpers() -> dict[str, Any]:
    links = _layout_links() if has_request_context() else {}
    return {"form_token": _form_token, "now": utcnow, "links": links}


@bp.app_template_filter("age")
def _age(value: datetime | None) -> str:
    if value is None:
        return ""
    seconds = int((utcnow() - value).total_seconds())
    if seconds < 3600:
        return f"{max(seconds // 60, 0)} min"
    if seconds < 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


@bp.app_template_filter("ts")
def _ts(value: datetime | None) -> str:
    # isoformat's first 19 characters are strftime("%Y-%m-%d %H:%M:%S"), at half its cost
    return value.isoformat(" ", "seconds")[:19] + " UTC" if value else ""


@bp.app_template_filter("json_block")
def _json_block(value: Any) -> Markup:
    """``value`` as indented JSON in a ``<pre>``, escaped as the ``tojson`` filter does (a filter, not a
    macro: a macro call per shown check costs more than the rest of the check's row)."""
    policies = current_app.jinja_env.policies
    kwargs = {**policies["json.dumps_kwargs"], "indent": 2}
    dumped = htmlsafe_json_dumps(value, dumps=policies["json.dumps_function"], **kwargs)
    return Markup('<pre class="json">') + dumped + Markup("</pre>")


def _guard(version: int) -> Callable[[], Markup]:
    """The hidden fields of every form on the case page: the page's CSRF token (made once), a fresh
    idempotency token per form, and the case's lock version. Built in Python: a Jinja macro per form
    cost more than the rest of the form."""
    csrf = escape(generate_csrf())
    tail = f'">\n<input type="hidden" name="version" value="{int(version)}">'
    # One random draw per page (each is a system call), and each form's token is it plus the form's number:
    # distinct per form, unguessable, and within the 23 characters a token keeps.
    page_token = secrets.token_urlsafe(15)
    numbers = itertools.count()

    def guard() -> Markup:
        # The CSRF token is escaped above, the idempotency token is URL-safe base64, the version an int.
        return Markup(  # noqa: S704
            f'<input type="hidden" name="csrf_token" value="{csrf}">\n'
            f'<input type="hidden" name="idem" value="{page_token}{next(numbers)}{tail}'
        )

    return guard


@functools.lru_cache(maxsize=256)
def _options(choices: tuple[tuple[str, str], ...], selected: str | None = None) -> Markup:
    """``<option>`` elements for (value, label) pairs, escaped, rendered once per distinct list and choice
    in each process: the assignees and reply templates are the same on every case page, and their ~50
    escaped values were a fifth of its rendering."""
    chosen = Markup(" selected")
    return Markup("").join(
        Markup('<option value="{}"{}>{}</option>').format(value, chosen if value == selected else "", label)
        for value, label in choices
    )


_RESOLUTION_OPTIONS = _options(tuple((r.value, r.value.replace("_", " ")) for r in Resolution))


@functools.cache
def _default_template_choices() -> tuple[tuple[str, str], ...]:
    """Offered when no reply template is stored yet (the defaults are stored on first use)."""
    return tuple((key, key) for key in replies.default_templates())


@bp.app_template_filter("combine_page")
def _combine_page(args: dict[str, Any], page: int) -> dict[str, Any]:
    return {**args, "page": page}


# --- queue -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _QueueTable:
    expires: float
    rows_html: Markup
    total: int
    pages: int
    assignees: list[Any]  # for the filter and bulk-assign menus


# Rendered queue tables (rows, total, assignable users) by filter, kept Settings.queue_cache_seconds
# (at most 2 s) per process: under load most queue views are the same default page, and rendering its 50
# rows is most of its cost. An analyst's own change shows at once on their next page (see _note_write);
# changes by others (jobs, other users, other processes) show within the TTL.
_QUEUE_TABLES: dict[tuple[Any, ...], _QueueTable] = {}
QUEUE_CACHE_SIZE = 256
_OWN_WRITE = "wrote_at"


def _note_write() -> None:
    """After this user changed cases: their next queue pages are rendered fresh, never from the cache."""
    session[_OWN_WRITE] = time.time()


def _queue_cache_ttl() -> float:
    if "TMSI_QUEUE_CACHE_TTL" in current_app.config:  # set by tests
        ttl = float(current_app.config["TMSI_QUEUE_CACHE_TTL"])
    else:
        ttl = 0.0 if current_app.testing else get_settings().queue_cache_seconds
    if ttl > 0 and time.time() - float(session.get(_OWN_WRITE, 0)) < ttl:
        return 0.0  # this user acted within the TTL: a cached table could predate their change
    return ttl


def _queue_table(db: Reader, flt: queue_svc.QueueFilter, user_id: int) -> _QueueTable:
    ttl = _queue_cache_ttl()
    key = (
        str(get_db().engine.url),
        tuple(sorted((k, str(v)) for k, v in flt.args().items())),
        user_id if flt.assignee == "me" else None,
    )
    now = time.monotonic()
    if ttl > 0:
        hit = _QUEUE_TABLES.get(key)
        if hit is not None and hit.expires > now:
            return hit
    page = queue_svc.search(db, flt, user_id=user_id, counts_ttl=_counts_ttl())
    # Output of an autoescaping template (every value in it escaped), inserted as is into the page.
    rows_html = Markup(  # noqa: S704
        render_template("ui/_queue_rows.html", page=page, case_url=url_for("ui.queue") + "/")
    )
    table = _QueueTable(now + ttl, rows_html, page.total, page.pages, _assignees(db))
    if ttl > 0:
        if len(_QUEUE_TABLES) >= QUEUE_CACHE_SIZE:
            for stale in [k for k, v in _QUEUE_TABLES.items() if v.expires <= now] or list(_QUEUE_TABLES):
                _QUEUE_TABLES.pop(stale, None)
        _QUEUE_TABLES[key] = table
    return table


def _counts_ttl() -> float:
    return 0.0 if current_app.testing else float(current_app.config.get("TMSI_QUEUE_COUNTS_TTL", 5.0))


@bp.get("/cases")
@role_required(ALL_ROLES)
def queue() -> Any:
    user = require_user()
    error = ""
    try:
        flt = queue_svc.parse_filter(request.args)
    except queue_svc.FilterError as exc:
        error = str(exc)
        flt = queue_svc.QueueFilter()
    db = request_db()
    table = _queue_table(db, flt, user.id)
    html = render_template(
        "ui/queue.html",
        rows_html=table.rows_html,
        total=table.total,
        pages=table.pages,
        counts=queue_svc.cached_status_counts(db, _counts_ttl()),
        flt=flt,
        error=error,
        assignees=table.assignees,
        statuses=list(CaseStatus),
        results=list(CheckResult),
        ages=list(queue_svc.AGES),
        sorts=queue_svc.SORTS,
    )
    return html, 400 if error else 200


_ASSIGNEES = (
    select(User.id, User.email)
    # OR of equalities, not IN: an IN list is expanded into the SQL text on every execution.
    .where(User.active.is_(True), or_(*(User.role == role.value for role in sorted(decide.ASSIGNABLE_ROLES))))
    .order_by(User.email)
)


def _assignees(db: Reader) -> list[Any]:
    return list(db.execute(_ASSIGNEES).all())


@bp.post("/cases/bulk")
@role_required(ACT_ROLES)
def bulk() -> Any:
    user = require_user()
    params = actions.Params(request.form)
    op = params.get("op")
    refs = params.getlist("refs")
    back = request.form.get("back") or url_for("ui.queue")
    if not back.startswith("/") or back.startswith("//") or "\\" in back:
        back = url_for("ui.queue")
    if not refs:
        flash("Select at least one case.", "error")
        return redirect(back)
    token = actions.idempotency_token(params.get("idem"))
    try:
        with actions.idempotency_scope(token), unit_of_work(get_db().factory) as db:
            chosen = [_case_or_404(db, ref) for ref in refs]
            if op == "assign":
                assignee = actions._user_param(db, params.get("assignee"), user.actor)
                for case in chosen:
                    decide.assign(db, case, assignee, user.actor, token=token)
                message = f"{len(chosen)} case(s) assigned to {assignee.email if assignee else 'nobody'}."
            elif op == "spam":
                open_cases = [c for c in chosen if c.status != CaseStatus.CLOSED]
                for case in open_cases:
                    decide.close_as_spam(db, case, user.actor, token=token)
                skipped = len(chosen) - len(open_cases)
                message = f"{len(open_cases)} case(s) closed as spam" + (
                    f" ({skipped} already closed)." if skipped else "."
                )
            elif op == "merge":
                if len(chosen) < 2:
                    raise decide.DecisionError("select two or more cases to merge")
                into = min(chosen, key=lambda c: c.created_at)
                decide.merge(db, into, [c for c in chosen if c.id != into.id], user.actor, token=token)
                message = f"Merged into {into.reference}."
            else:
                raise decide.DecisionError(f"unknown bulk action {op!r}")
    except decide.AlreadyDone:
        flash("This bulk action was already submitted; it was done once.", "info")
        return redirect(back)
    except (decide.DecisionError, StaleDataError) as exc:
        flash(_stale_text() if isinstance(exc, StaleDataError) else str(exc), "error")
        return redirect(back)
    _note_write()
    flash(message, "success")
    return redirect(back)


def _stale_text() -> str:
    return (
        "The case was changed by someone else at the same moment. Nothing was done: reload the page "
        "and submit again."
    )


# --- case page -------------------------------------------------------------------------------------
# The case page reads rows, not ORM objects: one statement per section, the per-target sections (runs,
# checks) for all targets at once, heavy columns (raw mail, search text) never.
RUNS_PER_TARGET = 10
_CASE_COLUMNS = (
    Case.id,
    Case.reference,
    Case.status,
    Case.resolution,
    Case.subject,
    Case.requester_email,
    Case.requester_name,
    Case.assignee_id,
    Case.authority_result,
    Case.authority_evidence,
    Case.verification_result,
    Case.merged_into_id,
    Case.created_at,
    Case.waiting_since,
    Case.lock_version,
)
_TARGET_COLUMNS = (
    CaseTarget.id,
    CaseTarget.network,
    CaseTarget.oversized,
    CaseTarget.source_text,
    CaseTarget.coverage,
    CaseTarget.summary,
    CaseTarget.status,
)
_RUN_COLUMNS = (
    VerificationRun.id,
    VerificationRun.target_id,
    VerificationRun.trigger,
    VerificationRun.requested_by,
    VerificationRun.status,
    VerificationRun.result,
    VerificationRun.total,
    VerificationRun.done,
    VerificationRun.passed,
    VerificationRun.failed,
    VerificationRun.unverifiable,
    VerificationRun.started_at,
)
_CHECK_COLUMNS = (
    DnsCheck.id,
    DnsCheck.target_id,
    DnsCheck.address,
    DnsCheck.result,
    DnsCheck.name_verdict,
    DnsCheck.ptr_names,
    DnsCheck.reasons,
    DnsCheck.evidence,
    DnsCheck.checked_at,
)
_MESSAGE_COLUMNS = (
    Message.id,
    Message.direction,
    Message.kind,
    Message.from_name,
    Message.from_addr,
    Message.to_addrs,
    Message.subject,
    Message.date_header,
    Message.received_at,
    Message.raw_size,
    Message.attachments,
    Message.body_text,
    (Message.body_html != "").label("has_html"),
)
_OUTBOX_COLUMNS = (
    OutboxMessage.id,
    OutboxMessage.created_at,
    OutboxMessage.rcpt_to,
    OutboxMessage.subject,
    OutboxMessage.status,
    OutboxMessage.hold_reason,
    OutboxMessage.attempts,
    OutboxMessage.last_error,
    OutboxMessage.next_attempt_at,
)
_TIMELINE_COLUMNS = (
    AuditEvent.at,
    AuditEvent.action,
    AuditEvent.actor,
    AuditEvent.before,
    AuditEvent.after,
    AuditEvent.detail,
)


def _latest_per_target(columns: tuple[Any, ...], order: list[Any], limit: int) -> tuple[Any, tuple[Any, ...]]:
    """The newest ``limit`` rows per target of the case ``:case_id``, in one statement (a window per
    target), and its order."""
    table = columns[0].class_
    rank = func.row_number().over(partition_by=table.target_id, order_by=order).label("rank")
    case_targets = select(CaseTarget.id).where(CaseTarget.case_id == bindparam("case_id"))
    ranked = select(*columns, rank).where(table.target_id.in_(case_targets.scalar_subquery())).subquery()
    by = (ranked.c.target_id, ranked.c.rank)
    return select(*(ranked.c[c.key] for c in columns)).where(ranked.c.rank <= limit).order_by(*by), by


# Built once: constructing these statements (windows, subqueries) costs more Python than running them.
_CASE_BY_REFERENCE = select(*_CASE_COLUMNS).where(Case.reference == bindparam("reference"))
_TEMPLATE_CHOICES = select(ReplyTemplate.key, ReplyTemplate.title).order_by(ReplyTemplate.key)
_USER_EMAIL = select(User.id, User.email).where(User.id == bindparam("user_id"))
_CASE_REFERENCE = select(Case.reference).where(Case.id == bindparam("case_id"))
_ON_CASE: Any = bindparam("case_id")
# Each section of the case page: its statement (ordered) and its order, by name.
_SECTIONS: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "messages": (
        select(*_MESSAGE_COLUMNS)
        .where(Message.case_id == _ON_CASE)
        .order_by(Message.received_at, Message.id),
        (Message.received_at, Message.id),
    ),
    "outbox": (
        select(*_OUTBOX_COLUMNS).where(OutboxMessage.case_id == _ON_CASE).order_by(OutboxMessage.id),
        (OutboxMessage.id,),
    ),
    "notes": (
        select(CaseNote.body, CaseNote.created_at, User.email)
        .outerjoin(User, User.id == CaseNote.author_id)
        .where(CaseNote.case_id == _ON_CASE)
        .order_by(CaseNote.id),
        (CaseNote.id,),
    ),
    "timeline": (
        select(*_TIMELINE_COLUMNS)
        .where(AuditEvent.case_id == _ON_CASE)
        .order_by(AuditEvent.at, AuditEvent.id)
        .limit(TIMELINE_LIMIT),
        (AuditEvent.at, AuditEvent.id),
    ),
    "targets": (
        select(*_TARGET_COLUMNS).where(CaseTarget.case_id == _ON_CASE).order_by(CaseTarget.id),
        (CaseTarget.id,),
    ),
    "runs": _latest_per_target(_RUN_COLUMNS, [VerificationRun.id.desc()], RUNS_PER_TARGET),
    "checks": _latest_per_target(
        _CHECK_COLUMNS, [DnsCheck.checked_at.desc(), DnsCheck.id.desc()], CHECK_HISTORY
    ),
    "templates": (_TEMPLATE_CHOICES, (ReplyTemplate.key,)),
    "assignees": (_ASSIGNEES, (User.email,)),
}


def _json_section(statement: Any, order: tuple[Any, ...]) -> Any:
    """The rows of ``statement`` as one JSON array, in its order (PostgreSQL)."""
    numbered = statement.add_columns(func.row_number().over(order_by=order).label("_ord")).subquery()
    rows = select(func.json_agg(aggregate_order_by(numbered.table_valued(), numbered.c._ord)))
    return func.coalesce(rows.select_from(numbered).scalar_subquery(), literal_column("'[]'::json"))


def _utc_from_iso(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _json_reader(statement: Any) -> Callable[[list[dict[str, Any]]], list[Any]]:
    """Rows from the JSON objects of one section, with the types its columns give (timestamps, enums)."""
    names = [c.key for c in statement.selected_columns]
    row_type = namedtuple("_Row", names)  # type: ignore[misc]
    convert: dict[str, Callable[[Any], Any]] = {}
    for selected in statement.selected_columns:
        if isinstance(selected.type, UTCDateTime):
            convert[selected.key] = _utc_from_iso
        elif isinstance(selected.type, SAEnum) and selected.type.enum_class is not None:
            convert[selected.key] = selected.type.enum_class

    conversions = tuple(convert.items())
    values = operator.itemgetter(*names) if len(names) > 1 else lambda item: (item[names[0]],)
    make = row_type._make

    def read(items: list[dict[str, Any]]) -> list[Any]:
        for item in items:
            for key, to_type in conversions:
                value = item[key]
                if value is not None:
                    item[key] = to_type(value)
        return [make(values(item)) for item in items]

    return read


# PostgreSQL: every section in one statement, one round trip (each statement costs more in the driver and
# the server than its rows do). Elsewhere one statement per section.
_READERS = {name: _json_reader(stmt) for name, (stmt, _order) in _SECTIONS.items()}


# The outer case row's id, as a correlated reference: a literal column, because SQLAlchemy correlates
# only the subqueries of the enclosing SELECT's own clauses, not derived tables nested within them (it
# would add ``cases`` to their FROM). No section reads the cases table itself.
_OUTER_CASE_ID = literal_column("cases.id", Integer)


def _on_outer_case(element: Any, **_kw: Any) -> Any:
    """The outer case row's id in place of the ``:case_id`` parameter."""
    if isinstance(element, BindParameter) and element.key == "case_id":
        return _OUTER_CASE_ID
    return None


# PostgreSQL: the active listings that overlap each target of the case, as find_overlapping_rows finds
# them: listings that start inside the target, and the CIDRs that contain it (CIDRs nest or are disjoint,
# so each is the supernet of one prefix length: an index probe per length, its key computed here as the
# target's start key with all but the first ``len`` bits cleared; one that starts where the target starts
# is found by the first half). Only lengths from the shortest active listing's on are probed (a DUL lists
# /24s and longer, not /3s: a quarter of the probes for an IPv4 address). Ordered as the look-up orders
# them.
_SUPERNET_KEY = (
    "substring(t.start_key FROM 1 FOR p.len / 8)"
    " || CASE WHEN mod(p.len, 8) = 0 THEN CAST('' AS bytea)"
    " ELSE set_byte(CAST('\\x00' AS bytea), 0,"
    " get_byte(t.start_key, p.len / 8) & (255 - ((1 << (8 - mod(p.len, 8))) - 1))) END"
    " || substring(CAST('\\x" + "00" * 16 + "' AS bytea) FROM 1 FOR length(t.start_key) - (p.len + 7) / 8)"
)
_TARGET_LISTINGS = text(
    f"""
SELECT coalesce(json_agg(json_build_object('target_id', o.target_id, 'network', o.network,
                                           'reason', o.reason)
                         ORDER BY o.target_id, o.start_key, o.prefixlen), '[]'::json)
FROM (
    SELECT t.id AS target_id, l.network, l.reason, l.start_key, l.prefixlen
    FROM case_targets AS t
    CROSS JOIN LATERAL (
        SELECT i.network, i.reason, i.start_key, i.prefixlen FROM listings AS i
        WHERE i.version = t.version AND i.start_key BETWEEN t.start_key AND t.end_key AND i.active
        UNION ALL
        SELECT w.network, w.reason, w.start_key, w.prefixlen
        FROM generate_series(
            (SELECT min(m.prefixlen) FROM listings AS m WHERE m.version = t.version AND m.active),
            t.prefixlen - 1
        ) AS p(len)
        JOIN listings AS w
          ON w.version = t.version AND w.start_key = {_SUPERNET_KEY} AND w.prefixlen = p.len
        WHERE w.start_key < t.start_key AND w.active
    ) AS l
    WHERE t.case_id = cases.id
) AS o
"""
)
_ListingRow = namedtuple("_ListingRow", ["target_id", "network", "reason"])


def _read_listings(items: list[dict[str, Any]]) -> list[Any]:
    return [_ListingRow(item["target_id"], item["network"], item["reason"]) for item in items]


def _json_object(entries: dict[str, Any]) -> Any:
    """``json_build_object`` of named values (the names are code constants, written as SQL literals)."""
    args: list[Any] = []
    for key, value in entries.items():
        args += [literal_column(f"'{key}'"), value]
    return func.json_build_object(*args)


# PostgreSQL: the case row and every section of its page in one statement and one JSON value (each
# section a subquery correlated with the case row), found by reference or by id. One column, because the
# driver's cost per result column (its description, a JSON parse each) outweighed the rows.
_CASE_WITH_SECTIONS = select(
    _json_object(
        {
            "case": _json_object({c.key: c for c in _CASE_COLUMNS}),
            **{
                name: replacement_traverse(_json_section(stmt, order), {}, _on_outer_case)
                for name, (stmt, order) in _SECTIONS.items()
            },
            "listings": _TARGET_LISTINGS.columns(column("listings", JSON)).scalar_subquery(),
        }
    ).label("page")
)
_CASE_AND_SECTIONS = DriverQuery(_CASE_WITH_SECTIONS.where(Case.reference == bindparam("reference")))
_ALL_SECTIONS = DriverQuery(_CASE_WITH_SECTIONS.where(Case.id == bindparam("case_id")))
_READERS["listings"] = _read_listings
_read_case = _json_reader(select(*_CASE_COLUMNS))


def _sections_of(page: dict[str, Any]) -> dict[str, list[Any]]:
    return {name: reader(page[name]) for name, reader in _READERS.items()}


def _connection(db: Reader) -> Connection:
    return db if isinstance(db, Connection) else db.connection()


def _case_sections(db: Reader, case_id: int) -> dict[str, list[Any]]:
    params = {"case_id": case_id}
    if dialect_name(db) == "postgresql":
        return _sections_of(_ALL_SECTIONS.first(_connection(db), params)[0])
    return {name: list(db.execute(stmt, params).all()) for name, (stmt, _order) in _SECTIONS.items()}


def _case_and_sections(db: Reader, reference: str) -> tuple[Any, dict[str, list[Any]]]:
    """The case row (``_CASE_COLUMNS``) and its page's sections: one round trip on PostgreSQL."""
    if dialect_name(db) != "postgresql":
        case = _case_row(db, reference)
        return case, _case_sections(db, case.id)
    row = _CASE_AND_SECTIONS.first(_connection(db), {"reference": reference.upper()})
    if row is None:
        abort(404, description=f"There is no case {reference}.")
    page = row[0]
    return _read_case([page["case"]])[0], _sections_of(page)


def _targets_view(db: Reader, sections: dict[str, list[Any]]) -> list[dict[str, Any]]:
    runs: dict[int, list[Any]] = {}
    checks: dict[int, list[Any]] = {}
    for run in sections["runs"]:
        runs.setdefault(run.target_id, []).append(run)
    for check in sections["checks"]:
        checks.setdefault(check.target_id, []).append(check)
    targets = sections["targets"]
    listings: dict[Any, list[Any]] = {}
    if "listings" in sections:  # read with the sections (PostgreSQL)
        for listing in sections["listings"]:
            listings.setdefault(listing.target_id, []).append(listing)
    elif targets:
        networks = {t.id: ipaddress.ip_network(t.network) for t in targets}
        by_network = find_overlapping_rows_many(db, list(networks.values()))
        listings = {target_id: by_network[str(net)] for target_id, net in networks.items()}
    out = []
    for target in targets:
        latest: dict[str, Any] = {}
        for check in checks.get(target.id, []):
            latest.setdefault(check.address, check)
        target_runs = runs.get(target.id, [])
        out.append(
            {
                "target": target,
                "listings": listings.get(target.id, []),
                "runs": target_runs,
                "latest": list(latest.values()),
                "history": checks.get(target.id, []),
                "running": any(r.status in {RunStatus.PENDING, RunStatus.RUNNING} for r in target_runs),
            }
        )
    return out


def _attachment_parts(raw: bytes) -> list[EmailMessage]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    parts = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        if part.get_content_disposition() == "attachment" or part.get_filename():
            parts.append(part)
    return parts


def _attachment_names(db: Reader, messages: Sequence[Any]) -> dict[int, list[str]]:
    """Download names of the attachments, in the order of the download links (the parts of the raw
    mail; the recorded list when the raw mail was purged). Raw bytes are read only for messages that
    have attachments."""
    with_files = {m.id: m for m in messages if m.attachments}
    if not with_files:
        return {}
    raws = dict(db.execute(select(Message.id, Message.raw).where(Message.id.in_(list(with_files)))).all())
    out = {}
    for message_id, message in with_files.items():
        raw = raws.get(message_id)
        if raw:
            out[message_id] = [
                part.get_filename() or f"attachment-{i + 1}"
                for i, part in enumerate(_attachment_parts(bytes(raw)))
            ]
        else:
            out[message_id] = [
                str((a or {}).get("filename", "")) if isinstance(a, dict) else str(a)
                for a in message.attachments
            ]
    return out


def _case_row(db: Reader, reference: str) -> Any:
    row = db.execute(_CASE_BY_REFERENCE, {"reference": reference.upper()}).first()
    if row is None:
        abort(404, description=f"There is no case {reference}.")
    return row


def _case_context(
    db: Reader, case: Any, sections: dict[str, list[Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    """Everything the case page shows; ``case`` is the ORM case or a row of ``_CASE_COLUMNS`` (and
    ``sections`` its sections when already read)."""
    if sections is None:
        sections = _case_sections(db, case.id)
    messages = sections["messages"]
    assignees = sections["assignees"]
    assignee = next((u for u in assignees if u.id == case.assignee_id), None)
    if assignee is None and case.assignee_id:
        assignee = db.execute(_USER_EMAIL, {"user_id": case.assignee_id}).first()
    merged_into = (
        db.execute(_CASE_REFERENCE, {"case_id": case.merged_into_id}).first() if case.merged_into_id else None
    )
    outbox_rows = sections["outbox"]
    notes = sections["notes"]
    timeline = sections["timeline"]
    templates = sections["templates"]
    target_views = _targets_view(db, sections)
    context = {
        "case": case,
        # Every link and form of the page starts here: one url_for instead of one per link.
        "case_url": url_for("ui.case_page", reference=case.reference),
        "guard": _guard(case.lock_version),
        "running": any(item["running"] for item in target_views),
        "watch": bool(request.args.get("watch")),
        "last_run_id": max((run.id for item in target_views for run in item["runs"]), default=0),
        "messages": messages,
        "attachments": _attachment_names(db, messages),
        "targets": target_views,
        "outbox": outbox_rows,
        "notes": notes,
        "timeline": timeline,
        "assignees": assignees,
        "assignee": assignee,
        "templates": templates,
        "merged_into": merged_into,
        "assignee_options": _options(tuple((str(u.id), u.email) for u in assignees)),
        "resolution_options": _RESOLUTION_OPTIONS,
        "compose": None,
        "compose_error": "",
        "preview": None,
    }
    context.update(extra)
    compose = context["compose"]
    context["template_options"] = _options(
        tuple((t.key, t.title or t.key) for t in templates) or _default_template_choices(),
        compose["template"] if compose else None,
    )
    return context


def _compose(db: Session, case: Case, key: str) -> dict[str, Any]:
    settings = get_settings()
    try:
        rendered = replies.render_reply(db, case, key, settings, decide.reply_extra(db, case))
        return {
            "template": key,
            "subject": rendered.subject,
            "body": rendered.body,
            "to": case.requester_email,
            "error": "",
        }
    except replies.TemplateRenderError as exc:
        return {"template": key, "subject": "", "body": "", "to": case.requester_email, "error": str(exc)}


@bp.get("/cases/<reference>")
@role_required(ALL_ROLES)
def case_page(reference: str) -> Any:
    key = request.args.get("reply", "")
    if key:  # composing a reply renders a template with the case: the ORM case, and a write
        with get_db().factory() as db:
            case = _case_or_404(db, reference)
            replies.ensure_templates(db)
            compose = _compose(db, case, key)
            db.commit()
            return render_template("ui/case.html", **_case_context(db, case, compose=compose))
    conn = request_db()
    case, sections = _case_and_sections(conn, reference)
    return render_template("ui/case.html", **_case_context(conn, case, sections))


@bp.get("/cases/<reference>/progress.json")
@role_required(ALL_ROLES)
def case_progress(reference: str) -> Any:
    db = request_session()
    case = _case_or_404(db, reference)
    target_ids = [t.id for t in case.targets]
    items: list[dict[str, Any]] = []
    if target_ids:
        latest = (
            select(func.max(VerificationRun.id))
            .where(VerificationRun.target_id.in_(target_ids))
            .group_by(VerificationRun.target_id)
        )
        items = [
            verify.run_status(run)
            for run in db.scalars(select(VerificationRun).where(VerificationRun.id.in_(latest)))
        ]
    running = any(i["status"] in {"pending", "running"} for i in items)
    return jsonify(
        reference=case.reference,
        status=case.status.value,
        running=running,
        runs=items,
        lock_version=case.lock_version,
    )


@bp.post("/cases/<reference>/action/<name>")
@role_required(ACT_ROLES)
def case_action(reference: str, name: str) -> Any:
    handler = actions.ACTIONS.get(name)
    if handler is None or name == "reply":
        abort(404, description=f"There is no action {name!r}.")
    user = require_user()
    params = actions.Params(request.form)
    token = actions.idempotency_token(params.get("idem"))
    settings = get_settings()
    factory = get_db().factory
    try:
        with actions.idempotency_scope(token), unit_of_work(factory) as db:
            case = _case_or_404(db, reference)
            outcome = handler(db, settings, case, params, user.actor, token)
    except decide.AlreadyDone as exc:
        flash(str(exc), "info")
        return redirect(url_for("ui.case_page", reference=reference))
    except decide.StaleCase as exc:
        flash(str(exc), "error")
        return redirect(url_for("ui.case_page", reference=reference))
    except StaleDataError:
        flash(_stale_text(), "error")
        return redirect(url_for("ui.case_page", reference=reference))
    except (decide.DecisionError, HeaderInjection, replies.TemplateRenderError) as exc:
        flash(f"Not done: {exc}", "error")
        return redirect(url_for("ui.case_page", reference=reference))
    _note_write()
    how = actions.after_commit(outcome, settings, factory, user.actor)
    flash(outcome.message + (f" ({how})" if how else ""), "success")
    # After "verify now" the page watches for the new run even if it has not started yet.
    watch = 1 if outcome.verify_ids else None
    return redirect(url_for("ui.case_page", reference=outcome.reference, watch=watch))


@bp.post("/cases/<reference>/reply")
@role_required(ACT_ROLES)
def case_reply(reference: str) -> Any:
    """Compose → preview → send. Preview and errors re-render the page with the analyst's edits."""
    user = require_user()
    params = actions.Params(request.form)
    compose = {
        "template": params.get("template"),
        "subject": params.get("subject"),
        "body": params.get("body"),
        "to": params.get("to"),
        "error": "",
    }
    token = actions.idempotency_token(params.get("idem"))
    settings = get_settings()
    if params.get("op") != "send":
        with get_db().factory() as db:
            case = _case_or_404(db, reference)
            preview = None
            try:
                from tmsi.services.outbox import check_header, with_reference

                check_header("subject", compose["subject"])
                check_header("address", compose["to"])
                preview = {
                    "subject": with_reference(compose["subject"], case.reference),
                    "body": compose["body"],
                    "to": compose["to"] or case.requester_email,
                }
            except HeaderInjection as exc:
                compose["error"] = str(exc)
            return render_template(
                "ui/case.html", **_case_context(db, case, compose=compose, preview=preview)
            )
    try:
        with actions.idempotency_scope(token), unit_of_work(get_db().factory) as db:
            case = _case_or_404(db, reference)
            outcome = actions.ACTIONS["reply"](db, settings, case, params, user.actor, token)
    except decide.AlreadyDone as exc:
        flash(str(exc), "info")
        return redirect(url_for("ui.case_page", reference=reference))
    except (decide.DecisionError, HeaderInjection, replies.TemplateRenderError, StaleDataError) as exc:
        compose["error"] = _stale_text() if isinstance(exc, StaleDataError) else str(exc)
        with get_db().factory() as db:
            case = _case_or_404(db, reference)
            html = render_template("ui/case.html", **_case_context(db, case, compose=compose))
        return html, 409 if isinstance(exc, decide.StaleCase | StaleDataError) else 400
    _note_write()
    flash(outcome.message, "success")
    return redirect(url_for("ui.case_page", reference=reference) + "#outbox")


def _message_or_404(db: Session, case: Case, message_id: int) -> Message:
    message = db.get(Message, message_id)
    if message is None or message.case_id != case.id:
        abort(404, description="There is no such message on this case.")
    return message


@bp.get("/cases/<reference>/messages/<int:message_id>/raw")
@role_required(ALL_ROLES)
def message_raw(reference: str, message_id: int) -> Any:
    db = request_session()
    message = _message_or_404(db, _case_or_404(db, reference), message_id)
    raw = message.raw
    return send_raw(raw, f"{reference}-message-{message_id}.eml")


def send_raw(raw: bytes | None, download_name: str) -> Any:
    """A stored message as a download, exactly as received (404 when its raw bytes were purged)."""
    if not raw:
        abort(404, description="The raw message was purged.")
    return send_file(
        BytesIO(bytes(raw)),
        mimetype="application/octet-stream",
        as_attachment=True,
        download_name=download_name,
    )


@bp.get("/cases/<reference>/messages/<int:message_id>/attachments/<int:index>")
@role_required(ALL_ROLES)
def message_attachment(reference: str, message_id: int, index: int) -> Any:
    db = request_session()
    message = _message_or_404(db, _case_or_404(db, reference), message_id)
    if not message.raw:
        abort(404, description="The raw message was purged.")
    parts = _attachment_parts(bytes(message.raw))
    if index >= len(parts):
        abort(404, description="There is no such attachment.")
    part = parts[index]
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    name = secure_filename(part.get_filename() or "") or f"attachment-{index + 1}.bin"
    # Always a download of opaque bytes: never rendered by the browser, whatever the mail claims.
    return send_file(
        BytesIO(data), mimetype="application/octet-stream", as_attachment=True, download_name=name
    )


@bp.get("/cases/<reference>/messages/<int:message_id>/html")
@role_required(ALL_ROLES)
def message_html(reference: str, message_id: int) -> Any:
    db = request_session()
    message = _message_or_404(db, _case_or_404(db, reference), message_id)
    html = message.body_html or ""
    clean = nh3.clean(html, url_schemes={"mailto"}, link_rel="noopener noreferrer nofollow")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>message</title></head><body>"
        f"{clean}</body></html>"
    )
    response = Response(page, mimetype="text/html")
    response.headers["Content-Security-Policy"] = MAIL_FRAME_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


# --- reply templates ---------------------------------------------------------------------------------
@bp.get("/templates")
@role_required(ALL_ROLES)
def templates_list() -> Any:
    with get_db().factory() as db:
        replies.ensure_templates(db)
        db.commit()
        rows = db.scalars(select(ReplyTemplate).order_by(ReplyTemplate.key)).all()
        return render_template("ui/templates.html", templates=rows)


def _preview_case(db: Session, reference: str) -> Case | None:
    if reference:
        return cases.get_by_reference(db, reference)
    return db.scalar(select(Case).order_by(Case.id.desc()).limit(1))


def _render_preview(db: Session, subject: str, body: str, reference: str) -> dict[str, Any]:
    case = _preview_case(db, reference)
    if case is None:
        return {
            "ok": False,
            "error": f"no case {reference!r} to preview with" if reference else "no case yet",
        }
    context = replies.case_context(
        case, get_settings(), decide.reply_extra(db, case, reason="(reason)", question="(question)")
    )
    try:
        rendered = replies.render_text(subject, body, context)
    except replies.TemplateRenderError as exc:
        return {"ok": False, "error": str(exc), "reference": case.reference}
    return {"ok": True, "subject": rendered.subject, "body": rendered.body, "reference": case.reference}


@bp.route("/templates/<key>", methods=["GET", "POST"])
@role_required(ALL_ROLES)
def template_edit(key: str) -> Any:
    user = require_user()
    with get_db().factory() as db:
        replies.ensure_templates(db)
        db.commit()
        tpl = db.scalar(select(ReplyTemplate).where(ReplyTemplate.key == key))
        if tpl is None:
            abort(404, description=f"There is no reply template {key!r}.")
        subject, body = tpl.subject, tpl.body
        reference = request.values.get("case", "")
        status = 200
        if request.method == "POST":
            if user.role not in TEMPLATE_ROLES:
                abort(403, description="only leads and admins edit reply templates")
            subject = request.form.get("subject", "")
            body = request.form.get("body", "")
            preview = _render_preview(db, subject, body, reference)
            if request.form.get("op") == "save":
                if "\n" in subject or "\r" in subject:
                    preview = {"ok": False, "error": "the subject must be one line"}
                elif not preview["ok"] and preview.get("reference"):
                    pass  # a template that does not render is never saved
                else:
                    before = {"subject": tpl.subject, "body": tpl.body}
                    tpl.subject, tpl.body = subject, body
                    tpl.updated_at = utcnow()
                    tpl.updated_by = user.email
                    audit.record(
                        db,
                        action="template.updated",
                        actor=user.email,
                        actor_id=user.id,
                        object_type="template",
                        object_id=key,
                        before=before,
                        after={"subject": subject, "body": body},
                    )
                    db.commit()
                    flash(f"Template {key} saved.", "success")
                    return redirect(url_for("ui.template_edit", key=key, case=reference or None))
            status = 200 if preview["ok"] else 400
        else:
            preview = _render_preview(db, subject, body, reference)
        return render_template(
            "ui/template_edit.html",
            tpl=tpl,
            subject=subject,
            body=body,
            preview=preview,
            reference=reference or preview.get("reference", ""),
        ), status


@bp.route("/policy", methods=["GET", "POST"])
@role_required(AUDIT_ROLES)
def policy_page() -> Any:
    """Run-time policy (leads and admins change it; auditors read it); every change is audited."""
    user = require_user()
    settings = get_settings()
    status = 200
    error = ""
    with get_db().factory() as db:
        if request.method == "POST":
            if user.role not in TEMPLATE_ROLES:
                abort(403, description="only leads and admins change the policy")
            try:
                for key in policy.POLICY:
                    if key in request.form:
                        policy.set_value(db, key, request.form[key], actor=user.email, actor_id=user.id)
            except policy.PolicyError as exc:
                db.rollback()
                error, status = str(exc), 400
            else:
                db.commit()
                flash("Policy saved.", "success")
                return redirect(url_for("ui.policy_page"))
        stored = policy.overrides(db)
    effective = settings.model_copy(update=stored)
    rows = [
        {
            "spec": spec,
            "value": getattr(effective, key),
            "default": getattr(settings, key),
            "overridden": key in stored,
        }
        for key, spec in policy.POLICY.items()
    ]
    return render_template("ui/policy.html", rows=rows, error=error), status


@bp.post("/templates/preview")
@role_required(ALL_ROLES)
def template_preview() -> Any:
    """Live preview for the editor (JSON in, JSON out; renders in the sandbox, changes nothing)."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        return jsonify(ok=False, error="send a JSON object: subject, body, case"), 400
    with get_db().factory() as db:
        result = _render_preview(
            db, str(data.get("subject", "")), str(data.get("body", "")), str(data.get("case", ""))
        )
    return jsonify(result), 200


# --- users -------------------------------------------------------------------------------------------
@bp.get("/users")
@role_required(USER_READ_ROLES)
def users_page() -> Any:
    db = request_session()
    rows = db.scalars(select(User).options(selectinload(User.tokens)).order_by(User.email)).all()
    return render_template("ui/users.html", users=rows, roles=list(Role), new_token=None)


@bp.post("/users")
@role_required(USER_ADMIN_ROLES)
def users_update() -> Any:
    admin = require_user()
    op = request.form.get("op", "")
    new_token = None
    try:
        with unit_of_work(get_db().factory) as db:
            if op == "create":
                role = Role(request.form.get("role", "analyst"))
                created = users.create_user(
                    db,
                    request.form.get("email", ""),
                    role,
                    password=request.form.get("password") or None,
                    name=request.form.get("name", ""),
                    actor=admin.actor,
                )
                message = f"User {created.email} created."
            else:
                uid = request.form.get("user", "")
                user_id = parse_id(uid)
                user = db.get(User, user_id) if user_id is not None else None
                if user is None:
                    abort(404, description="There is no such user.")
                if user.id == admin.id and op in {"disable", "role"}:
                    raise users.UserError("you cannot disable yourself or change your own role")
                if op == "role":
                    users.set_role(db, user, Role(request.form.get("role", "")), actor=admin.actor)
                    message = f"{user.email} is now {user.role.value}."
                elif op in {"disable", "enable"}:
                    users.set_active(db, user, op == "enable", actor=admin.actor)
                    message = f"{user.email} {op}d."
                elif op == "password":
                    users.set_password(db, user, request.form.get("password", ""), actor=admin.actor)
                    message = f"Password of {user.email} set."
                elif op == "token":
                    new_token = users.issue_token(
                        db, user, name=request.form.get("name", ""), actor=admin.actor
                    )
                    message = f"New API token for {user.email}: copy it now, it is shown only once."
                elif op == "revoke":
                    tid = request.form.get("token", "")
                    token_id = parse_id(tid)
                    token = db.get(ApiToken, token_id) if token_id is not None else None
                    if token is None or token.user_id != user.id:
                        abort(404, description="There is no such token.")
                    users.revoke_token(db, token, actor=admin.actor)
                    message = "Token revoked."
                else:
                    raise users.UserError(f"unknown operation {op!r}")
    except (users.UserError, ValueError) as exc:
        flash(f"Not done: {exc}", "error")
        return redirect(url_for("ui.users_page"))
    _note_write()
    flash(message, "success")
    if new_token:
        with get_db().factory() as db:
            rows = db.scalars(select(User).options(selectinload(User.tokens)).order_by(User.email)).all()
            return render_template("ui/users.html", users=rows, roles=list(Role), new_token=new_token)
    return redirect(url_for("ui.users_page"))


# --- audit -------------------------------------------------------------------------------------------
@bp.get("/audit")
@role_required(AUDIT_ROLES)
def audit_page() -> Any:
    args = request.args
    stmt = select(AuditEvent, Case.reference).outerjoin(Case, Case.id == AuditEvent.case_id)
    if args.get("actor"):
        stmt = stmt.where(AuditEvent.actor == args["actor"].strip().lower())
    if args.get("action"):
        stmt = stmt.where(AuditEvent.action.startswith(args["action"].strip(), autoescape=True))
    if args.get("case"):
        stmt = stmt.where(Case.reference == args["case"].strip().upper())
    error = ""
    for key, op in (("since", "ge"), ("until", "le")):
        if args.get(key):
            try:
                when = (
                    datetime.fromisoformat(args[key]).astimezone()
                    if "T" in args[key]
                    else datetime.fromisoformat(args[key] + "T00:00:00+00:00")
                )
                stmt = stmt.where(AuditEvent.at >= when if op == "ge" else AuditEvent.at <= when)
            except ValueError:
                error = f"{key}: use a date like 2026-01-31"
    try:
        page = parse_page(args.get("page"))
    except ValueError:
        page = 1
    db = request_session()
    rows = db.execute(
        stmt.order_by(AuditEvent.id.desc()).limit(AUDIT_PAGE + 1).offset((page - 1) * AUDIT_PAGE)
    ).all()
    html = render_template(
        "ui/audit.html",
        rows=rows[:AUDIT_PAGE],
        more=len(rows) > AUDIT_PAGE,
        page=page,
        args=args,
        error=error,
    )
    return html, 400 if error else 200
