"""The case queue: filters, full-text and network search, waiting-time order, counts, pagination.

Network search uses the ``(version, start_key)`` index of case targets the way the listings store does:
a target overlaps a query network exactly when it is one of the query's supernets or starts inside it.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, func, or_, select, tuple_, union_all
from sqlalchemy.orm import Session

from tmsi.db import Reader, bind_of, utcnow
from tmsi.domain.ids import parse_id, parse_page
from tmsi.domain.networks import IPNetwork, NetworkError, network_keys, parse_network, supernet_keys
from tmsi.models import Case, CaseStatus, CaseTarget, CheckResult, User
from tmsi.services.cases import OPEN_STATES

MAX_PER_PAGE = 200
AGES = {
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
    "3d": timedelta(days=3),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
SORTS = ("waiting", "-waiting", "created", "-created", "updated")


class FilterError(ValueError):
    """A queue filter that cannot be applied (bad CIDR, unknown status), worded for the analyst."""


@dataclass(frozen=True)
class QueueFilter:
    statuses: tuple[CaseStatus, ...] = ()  # empty: the open states
    all_statuses: bool = False
    assignee: str = ""  # "", "me", "none" or a user id
    requester_domain: str = ""
    authority: CheckResult | None = None
    verification: CheckResult | None = None
    age: str = ""  # waiting longer than (a key of AGES)
    text: str = ""
    network: IPNetwork | None = None
    sort: str = "waiting"
    page: int = 1
    per_page: int = 50

    @property
    def effective_statuses(self) -> tuple[CaseStatus, ...]:
        if self.all_statuses:
            return ()
        return self.statuses or tuple(s for s in CaseStatus if s in OPEN_STATES)

    def args(self, **changes: Any) -> dict[str, Any]:
        """The filter as query-string arguments (for links: pages, sorting)."""
        f = replace(self, **changes) if changes else self
        out: dict[str, Any] = {}
        if f.all_statuses:
            out["status"] = "all"
        elif f.statuses:
            out["status"] = [s.value for s in f.statuses]
        for key, value in (
            ("assignee", f.assignee),
            ("domain", f.requester_domain),
            ("age", f.age),
            ("q", f.text),
        ):
            if value:
                out[key] = value
        if f.authority:
            out["authority"] = f.authority.value
        if f.verification:
            out["verification"] = f.verification.value
        if f.network is not None:
            out["net"] = str(f.network)
        if f.sort != "waiting":
            out["sort"] = f.sort
        if f.page != 1:
            out["page"] = f.page
        if f.per_page != 50:
            out["per_page"] = f.per_page
        return out


def _enum(cls: Any, value: str, label: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        raise FilterError(f"unknown {label} {value!r}") from None


def parse_filter(args: Any) -> QueueFilter:
    """A QueueFilter from request args (a MultiDict or a plain dict); raises FilterError on bad input."""
    getlist = args.getlist if hasattr(args, "getlist") else (lambda k: [args[k]] if k in args else [])
    raw_statuses = [s for item in getlist("status") for s in str(item).split(",") if s]
    all_statuses = "all" in raw_statuses
    statuses = tuple(_enum(CaseStatus, s, "status") for s in raw_statuses if s != "all")
    authority = args.get("authority") or ""
    verification = args.get("verification") or ""
    age = args.get("age") or ""
    if age and age not in AGES:
        raise FilterError(f"unknown age {age!r}; use one of {', '.join(AGES)}")
    net_text = (args.get("net") or "").strip()
    network = None
    if net_text:
        try:
            network = parse_network(net_text, strict=False)
        except NetworkError as exc:
            raise FilterError(str(exc)) from None
    sort = args.get("sort") or "waiting"
    if sort not in SORTS:
        raise FilterError(f"unknown sort {sort!r}")
    try:
        page = parse_page(args.get("page"))
        per_page = min(MAX_PER_PAGE, max(1, int(args.get("per_page") or 50)))
    except ValueError:
        raise FilterError("page and per_page must be numbers") from None
    assignee = (args.get("assignee") or "").strip()
    if assignee and assignee not in {"me", "none"} and parse_id(assignee) is None:
        raise FilterError("assignee is 'me', 'none' or a user id")
    return QueueFilter(
        statuses=statuses,
        all_statuses=all_statuses,
        assignee=assignee,
        requester_domain=(args.get("domain") or "").strip().lower(),
        authority=_enum(CheckResult, authority, "authority result") if authority else None,
        verification=_enum(CheckResult, verification, "verification result") if verification else None,
        age=age,
        text=(args.get("q") or "").strip()[:200],
        network=network,
        sort=sort,
        page=page,
        per_page=per_page,
    )


def target_overlaps(network: IPNetwork) -> Any:
    """WHERE clause: the case target covers, equals or lies inside ``network`` (two index look-ups)."""
    version, start, end = network_keys(network)
    return and_(
        CaseTarget.version == version,
        or_(
            CaseTarget.start_key.between(start, end),
            tuple_(CaseTarget.prefixlen, CaseTarget.start_key).in_(supernet_keys(network)),
        ),
    )


def overlapping_targets_query(network: IPNetwork) -> Select[Any]:
    """SELECT of every case target that covers, equals or lies inside ``network``."""
    return select(CaseTarget).where(target_overlaps(network))


def cases_overlapping(network: IPNetwork) -> Select[Any]:
    """SELECT of the ids of every case with a target overlapping ``network`` (usable as a subquery)."""
    return select(CaseTarget.case_id).where(target_overlaps(network)).distinct()


def has_target_overlapping(network: IPNetwork) -> Any:
    """Correlated EXISTS for a filter on cases: cheaper than ``IN (cases_overlapping)`` when the network
    matches most cases, since the queue reads cases in page order and stops early."""
    return select(CaseTarget.id).where(CaseTarget.case_id == Case.id, target_overlaps(network)).exists()


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _conditions(f: QueueFilter, user_id: int | None, now: datetime, *, with_status: bool = True) -> list[Any]:
    cond: list[Any] = []
    statuses = f.effective_statuses
    if with_status and statuses:
        cond.append(Case.status.in_(statuses))
    if f.assignee == "me":
        cond.append(Case.assignee_id == (user_id if user_id is not None else -1))
    elif f.assignee == "none":
        cond.append(Case.assignee_id.is_(None))
    elif f.assignee:
        cond.append(Case.assignee_id == int(f.assignee))
    if f.requester_domain:
        cond.append(Case.requester_domain == f.requester_domain)
    if f.authority is not None:
        cond.append(Case.authority_result == f.authority)
    if f.verification is not None:
        cond.append(Case.verification_result == f.verification)
    if f.age:
        cond.append(Case.waiting_since <= now - AGES[f.age])
    if f.text:
        pattern = _like(f.text.lower())
        reference = f.text.strip().upper()
        cond.append(
            or_(
                Case.reference == reference,
                func.lower(Case.subject).like(pattern, escape="\\"),
                Case.requester_email.like(pattern, escape="\\"),
                func.lower(Case.requester_name).like(pattern, escape="\\"),
                func.lower(Case.search_text).like(pattern, escape="\\"),
            )
        )
    if f.network is not None:
        cond.append(has_target_overlapping(f.network))
    return cond


def _order(f: QueueFilter) -> list[Any]:
    if f.sort == "waiting":  # longest waiting first; cases not waiting on us last
        return [Case.waiting_since.asc().nulls_last(), Case.id.asc()]
    if f.sort == "-waiting":
        return [Case.waiting_since.desc().nulls_last(), Case.id.desc()]
    if f.sort == "created":
        return [Case.created_at.asc(), Case.id.asc()]
    if f.sort == "-created":
        return [Case.created_at.desc(), Case.id.desc()]
    return [Case.updated_at.desc(), Case.id.desc()]


def _only_statuses(f: QueueFilter) -> bool:
    return not (
        f.assignee or f.requester_domain or f.authority or f.verification or f.age or f.text or f.network
    )


# The columns a queue row shows (and the API lists): never the heavy ones (search text, evidence, flags).
ROW_COLUMNS = (
    Case.id,
    Case.reference,
    Case.status,
    Case.resolution,
    Case.subject,
    Case.requester_email,
    Case.requester_name,
    Case.requester_domain,
    Case.assignee_id,
    Case.authority_result,
    Case.verification_result,
    Case.created_at,
    Case.updated_at,
    Case.waiting_since,
    Case.lock_version,
)


def _waiting_page(f: QueueFilter, user_id: int | None, now: datetime) -> Select[Any] | None:
    """The page's rows for the default order (waiting longest first) over a set of statuses.

    One index-ordered branch per status on ``(status, waiting_since)``, each cut at the page end, merged:
    the first page of 30,000 open cases reads about 50 rows per status instead of sorting them all.
    None when the filter does not have that shape.
    """
    statuses = f.effective_statuses
    if f.sort != "waiting" or not statuses:
        return None
    if _only_statuses(f):
        return _status_page(statuses, f.page, f.per_page)
    return _merged_status_branches(
        statuses, _conditions(f, user_id, now, with_status=False), f.page, f.per_page
    )


@functools.lru_cache(maxsize=256)
def _status_page(statuses: tuple[CaseStatus, ...], page: int, per_page: int) -> Select[Any]:
    # Building this union (a subquery per status) costs more Python than running it: the statement of a
    # status-only filter (the default queue) is built once per page number.
    return _merged_status_branches(statuses, [], page, per_page)


def _merged_status_branches(
    statuses: tuple[CaseStatus, ...], others: list[Any], page: int, per_page: int
) -> Select[Any]:
    end = page * per_page
    branches = []
    for status in statuses:
        branch = (
            select(*ROW_COLUMNS)
            .where(Case.status == status, *others)
            .order_by(Case.waiting_since.asc().nulls_last(), Case.id.asc())
            .limit(end)
            .subquery()
        )
        branches.append(select(branch))
    merged = union_all(*branches).subquery()
    return (
        select(merged, User.email.label("assignee_email"))
        .outerjoin(User, User.id == merged.c.assignee_id)
        .order_by(merged.c.waiting_since.asc().nulls_last(), merged.c.id.asc())
        .offset(end - per_page)
        .limit(per_page)
    )


@dataclass
class QueueRow:
    case: Any  # a read-only row with the ROW_COLUMNS of the case (attribute access like the model)
    assignee_email: str
    target_count: int
    networks: list[str]


@dataclass
class QueuePage:
    filter: QueueFilter
    rows: list[QueueRow]
    total: int
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.filter.per_page))


def search(
    session: Reader,
    f: QueueFilter,
    *,
    user_id: int | None = None,
    now: datetime | None = None,
    with_counts: bool = True,
    counts_ttl: float = 0.0,
) -> QueuePage:
    """One page of the queue as read-only rows: three statements (page rows with the assignee, their
    targets, the total unless the cached counts give it), no ORM objects."""
    now = now or utcnow()
    cond = _conditions(f, user_id, now)
    counts = cached_status_counts(session, counts_ttl) if with_counts else {}
    if counts and counts_ttl > 0 and _only_statuses(f):
        # The filter is a set of statuses: the (cached) counts per status already give the total.
        total = sum(counts.get(s.value, 0) for s in (f.effective_statuses or CaseStatus))
    elif f.all_statuses and f.network is not None and _only_statuses(replace(f, network=None)):
        # Only a network over every case: count the cases of the overlapping targets (one range scan of
        # the target index) instead of probing the targets of every case.
        overlapping = select(func.count(CaseTarget.case_id.distinct())).where(target_overlaps(f.network))
        total = session.scalar(overlapping) or 0
    else:
        total = session.scalar(select(func.count()).select_from(Case).where(*cond)) or 0
    stmt: Any = _waiting_page(f, user_id, now)
    if stmt is None:
        stmt = (
            select(*ROW_COLUMNS, User.email.label("assignee_email"))
            .outerjoin(User, User.id == Case.assignee_id)
            .where(*cond)
            .order_by(*_order(f))
            .limit(f.per_page)
            .offset((f.page - 1) * f.per_page)
        )
    found = session.execute(stmt).all()
    nets: dict[int, list[str]] = {}
    counts_by_case: dict[int, int] = {}
    if found:
        for case_id, network in session.execute(
            select(CaseTarget.case_id, CaseTarget.network)
            .where(CaseTarget.case_id.in_([row.id for row in found]))
            .order_by(CaseTarget.id)
        ):
            counts_by_case[case_id] = counts_by_case.get(case_id, 0) + 1
            if len(nets.setdefault(case_id, [])) < 3:
                nets[case_id].append(network)
    rows = [
        QueueRow(row, row.assignee_email or "", counts_by_case.get(row.id, 0), nets.get(row.id, []))
        for row in found
    ]
    return QueuePage(filter=f, rows=rows, total=total, counts=counts)


def status_counts(session: Reader) -> dict[str, int]:
    """Number of cases per status (every status present, zero included)."""
    counts = {s.value: 0 for s in CaseStatus}
    for status, count in session.execute(select(Case.status, func.count()).group_by(Case.status)):
        counts[CaseStatus(status).value] = count
    return counts


_COUNTS: dict[str, tuple[float, dict[str, int]]] = {}


def cached_status_counts(session: Reader, ttl: float) -> dict[str, int]:
    """``status_counts`` reused for ``ttl`` seconds per database: a full count per page view costs a scan
    of every case, and counts a few seconds old are fine for the overview."""
    if ttl <= 0:
        return status_counts(session)
    key = str(bind_of(session).engine.url)
    hit = _COUNTS.get(key)
    now = time.monotonic()
    if hit is not None and hit[0] > now:
        return dict(hit[1])
    counts = status_counts(session)
    _COUNTS[key] = (now + ttl, counts)
    return dict(counts)


def requester_domains(session: Session, limit: int = 200) -> list[str]:
    """The requester domains of open cases, most frequent first (for the filter's suggestions)."""
    rows = session.execute(
        select(Case.requester_domain, func.count())
        .where(Case.status.in_(OPEN_STATES), Case.requester_domain != "")
        .group_by(Case.requester_domain)
        .order_by(func.count().desc())
        .limit(limit)
    )
    return [domain for domain, _ in rows]
