"""The listings store: containment/overlap look-ups answered by the index, and idempotent bulk import.

A listing overlaps a query network exactly when it is a supernet of it (one of at most 33/129 CIDRs,
found by exact key) or starts inside it (a range scan on ``(version, start_key)``): no full scans.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Integer, bindparam, column, insert, literal_column, select, text, union_all, update
from sqlalchemy.orm import Session

from tmsi.db import Reader, dialect_name, utcnow
from tmsi.domain.listfile import Entry
from tmsi.domain.networks import IPNetwork, collapse, first_last, network_keys, supernet_keys
from tmsi.models import Coverage, Listing, ListingEvent, ListingEventKind

IMPORT_CHUNK = 20_000


def _overlap_statement(columns: Sequence[Any], active_only: bool, limited: bool = False) -> Any:
    """The union of the two index-friendly SELECTs that find every listing overlapping a network:

    1. listings starting inside it (a range scan on ``(version, start_key)``);
    2. listings starting at one of its supernet boundaries and reaching its end (at most 33/129 exact
       key probes; CIDRs either nest or are disjoint, so nothing else can overlap).
    Kept as two statements: an OR of both defeats the index on SQLite. Built once per shape, so the hot
    path only binds values. (Measured: an array parameter instead of the expanding IN, which pays for
    the union of many look-ups below, costs more than it saves for one.)

    ``limited``: the covering listings first (a handful at most), then those inside, stopping after
    ``:limit`` rows; no ORDER BY, so a wide query stops early instead of sorting every listing.
    """
    version: Any = bindparam("version")
    start: Any = bindparam("start")
    end: Any = bindparam("end")
    inside = select(*columns).where(Listing.version == version, Listing.start_key.between(start, end))
    probe = Listing.start_key.in_(bindparam("keys", expanding=True))
    covering = select(*columns).where(Listing.version == version, probe, Listing.end_key >= end)
    if active_only:
        inside = inside.where(Listing.active.is_(True))
        covering = covering.where(Listing.active.is_(True))
    if limited:
        return union_all(covering, inside).limit(bindparam("limit"))
    return union_all(inside, covering)


# What a look-up shows of a listing: enough for the API and the public page, without ORM objects.
ROW_COLUMNS = (
    Listing.id,
    Listing.network,
    Listing.version,
    Listing.prefixlen,
    Listing.start_key,
    Listing.reason,
    Listing.listed_at,
    Listing.source,
    Listing.active,
    Listing.removed_at,
)
_OVERLAP = {
    flag: select(Listing).from_statement(_overlap_statement([Listing], flag)) for flag in (True, False)
}
_OVERLAP_ROWS = {flag: _overlap_statement(ROW_COLUMNS, flag) for flag in (True, False)}
_OVERLAP_ROWS_LIMITED = _overlap_statement(ROW_COLUMNS, True, limited=True)
# The most listings one look-up returns (the API, `tmsi listings lookup`): 0.0.0.0/0 would be all of them.
LOOKUP_LIMIT = 1000


def _arrays(session: Reader) -> bool:
    return dialect_name(session) == "postgresql"


def _overlap_params(network: IPNetwork) -> dict[str, Any]:
    version, start, end = network_keys(network)
    return {
        "version": version,
        "start": start,
        "end": end,
        "keys": sorted({key for _plen, key in supernet_keys(network)}),
    }


def find_overlapping(session: Session, network: IPNetwork, *, active_only: bool = True) -> list[Listing]:
    """Every listing that covers or overlaps ``network``, as ORM objects (to change them)."""
    stmt = _OVERLAP[active_only]
    found = {item.id: item for item in session.scalars(stmt, _overlap_params(network))}
    return sorted(found.values(), key=lambda item: (item.start_key, item.prefixlen))


def find_overlapping_rows(session: Reader, network: IPNetwork, *, active_only: bool = True) -> list[Any]:
    """As :func:`find_overlapping`, but read-only rows (``ROW_COLUMNS``): the fast path for look-ups."""
    stmt = _OVERLAP_ROWS[active_only]
    found = {row.id: row for row in session.execute(stmt, _overlap_params(network))}
    return sorted(found.values(), key=lambda row: (row.start_key, row.prefixlen))


MANY_CHUNK = 16
UNNEST_CHUNK = 500


def _overlap_many_statement(size: int) -> Any:
    """:func:`_overlap_statement` for ``size`` networks at once (SQLite), each row tagged with its
    network's position ``q``: one round trip for many look-ups. Every chunk has the same size (padded),
    so the statement is compiled once."""
    parts = []
    for i in range(size):
        version: Any = bindparam(f"version{i}")
        start: Any = bindparam(f"start{i}")
        end: Any = bindparam(f"end{i}")
        keys: Any = bindparam(f"keys{i}", expanding=True)
        tag: Any = literal_column(str(i)).label("q")
        parts.append(
            select(tag, *ROW_COLUMNS).where(
                Listing.version == version, Listing.start_key.between(start, end), Listing.active.is_(True)
            )
        )
        parts.append(
            select(tag, *ROW_COLUMNS).where(
                Listing.version == version,
                Listing.start_key.in_(keys),
                Listing.end_key >= end,
                Listing.active.is_(True),
            )
        )
    return union_all(*parts)


_OVERLAP_MANY = _overlap_many_statement(MANY_CHUNK)

# PostgreSQL: any number of networks in one statement whose text never changes (so it stays prepared):
# the networks arrive as parallel arrays, and each one's supernet keys are its slice lo..hi of one flat
# array. LATERAL keeps both halves index probes per network, as in the single look-up.
_LISTING_COLUMNS = ", ".join(f"l.{column.key}" for column in ROW_COLUMNS)
_OVERLAP_UNNEST = (
    text(
        f"""
SELECT t.q AS q, {_LISTING_COLUMNS}
FROM unnest(CAST(:qs AS integer[]), CAST(:versions AS integer[]), CAST(:starts AS bytea[]),
            CAST(:ends AS bytea[]), CAST(:los AS integer[]), CAST(:his AS integer[]))
     AS t(q, version, s, e, lo, hi)
CROSS JOIN LATERAL (
    SELECT * FROM listings
    WHERE listings.version = t.version AND listings.start_key BETWEEN t.s AND t.e AND listings.active
    UNION ALL
    SELECT * FROM listings
    WHERE listings.version = t.version AND listings.start_key = ANY((CAST(:keys AS bytea[]))[t.lo:t.hi])
      AND listings.end_key >= t.e AND listings.active
) AS l
"""
    )
    .columns(column("q", Integer), *ROW_COLUMNS)
    .subquery("overlap")
)
_OVERLAP_UNNEST_SELECT = select(*_OVERLAP_UNNEST.c)


def _unnest_params(networks: Sequence[IPNetwork]) -> dict[str, Any]:
    params: dict[str, list[Any]] = {name: [] for name in ("qs", "versions", "starts", "ends", "los", "his")}
    keys: list[bytes] = []
    for q, net in enumerate(networks):
        version, start, end = network_keys(net)
        supernets = sorted({key for _plen, key in supernet_keys(net)})
        params["qs"].append(q)
        params["versions"].append(version)
        params["starts"].append(start)
        params["ends"].append(end)
        params["los"].append(len(keys) + 1)  # PostgreSQL arrays count from 1; slices include both ends
        params["his"].append(len(keys) + len(supernets))
        keys += supernets
    return {**params, "keys": keys}


def find_overlapping_rows_many(session: Reader, networks: Iterable[IPNetwork]) -> dict[str, list[Any]]:
    """:func:`find_overlapping_rows` (active listings) for many networks, keyed by CIDR: one statement
    for up to :data:`UNNEST_CHUNK` networks on PostgreSQL (:data:`MANY_CHUNK` on SQLite). What ingest
    needs for a whole batch of mail, and the case page for its targets."""
    wanted = list(dict.fromkeys(networks))
    found: dict[str, dict[int, Any]] = {str(net): {} for net in wanted}
    if _arrays(session):
        for first in range(0, len(wanted), UNNEST_CHUNK):
            chunk = wanted[first : first + UNNEST_CHUNK]
            for row in session.execute(_OVERLAP_UNNEST_SELECT, _unnest_params(chunk)):
                found[str(chunk[row.q])][row.id] = row
    elif len(wanted) <= 2:  # SQLite answers a single look-up in-process: cheaper than a padded union
        for net in wanted:
            found[str(net)] = {row.id: row for row in find_overlapping_rows(session, net)}
    else:
        for first in range(0, len(wanted), MANY_CHUNK):
            chunk = wanted[first : first + MANY_CHUNK]
            padded = chunk + [chunk[-1]] * (MANY_CHUNK - len(chunk))
            params: dict[str, Any] = {}
            for i, net in enumerate(padded):
                params.update({f"{k}{i}": v for k, v in _overlap_params(net).items()})
            for row in session.execute(_OVERLAP_MANY, params):
                found[str(padded[row.q])][row.id] = row
    return {
        cidr: sorted(rows.values(), key=lambda row: (row.start_key, row.prefixlen))
        for cidr, rows in found.items()
    }


def coverage_of(network: IPNetwork, listings: Sequence[Any]) -> Coverage:
    """Whether ``network`` is fully, partly or not at all covered by ``listings`` (assumed overlapping)."""
    if not listings:
        return Coverage.NOT_LISTED
    nets = [ipaddress.ip_network(item.network) for item in listings]
    if any(network.subnet_of(n) for n in nets if n.version == network.version):  # type: ignore[arg-type]
        return Coverage.LISTED
    inside = collapse([n for n in nets if n.version == network.version and n.subnet_of(network)])  # type: ignore[arg-type]
    covered = sum(n.num_addresses for n in inside)
    return Coverage.LISTED if covered >= network.num_addresses else Coverage.PARTLY_LISTED


def listing_to_dict(listing: Any, query: IPNetwork | None = None) -> dict[str, Any]:
    """A listing (ORM object or look-up row) as JSON."""
    net = ipaddress.ip_network(listing.network)
    relation = "equal"
    if query is not None and net != query:
        relation = "covers" if query.subnet_of(net) else "inside"  # type: ignore[arg-type]
    return {
        "network": listing.network,
        "reason": listing.reason,
        "listed_at": listing.listed_at.isoformat(),
        "source": listing.source,
        "active": listing.active,
        "relation": relation,
    }


def lookup(session: Session, network: IPNetwork, *, limit: int = LOOKUP_LIMIT) -> dict[str, Any]:
    """The active listings overlapping ``network``: those covering it first, then at most ``limit`` in
    all. ``truncated`` says more exist; coverage is then of the listings shown (a covering listing is
    always among them, so "listed" stays exact)."""
    rows = list(session.execute(_OVERLAP_ROWS_LIMITED, {**_overlap_params(network), "limit": limit + 1}))
    truncated = len(rows) > limit
    found = {row.id: row for row in rows[:limit]}
    listings = sorted(found.values(), key=lambda row: (row.start_key, row.prefixlen))
    return {
        "query": str(network),
        "listed": bool(listings),
        "coverage": coverage_of(network, listings).value,
        "truncated": truncated,
        "listings": [listing_to_dict(item, network) for item in listings],
    }


@dataclass
class ImportReport:
    added: int = 0
    unchanged: int = 0
    covered: int = 0
    superseded: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "unchanged": self.unchanged,
            "covered": self.covered,
            "superseded": self.superseded,
            "errors": len(self.errors),
        }


def _sort_key(entry: Entry) -> tuple[int, int, int]:
    return entry.network.version, int(entry.network.network_address), entry.network.prefixlen


def _dedupe_nested(entries: Iterable[Entry], report: ImportReport) -> list[Entry]:
    """Drop input entries equal to or nested in an earlier (wider) input entry of the same version."""
    ordered = sorted(entries, key=_sort_key)
    kept: list[Entry] = []
    last_version, last_end = 0, -1
    for entry in ordered:
        net = entry.network
        _start, end = first_last(net)
        if net.version == last_version and end <= last_end:
            if net == kept[-1].network:
                report.unchanged += 1
            else:
                report.covered += 1
            continue
        kept.append(entry)
        last_version, last_end = net.version, end
    return kept


def import_entries(
    session: Session,
    entries: Iterable[Entry],
    *,
    source: str = "import",
    actor: str = "system",
    default_reason: str = "listed",
    now: datetime | None = None,
) -> ImportReport:
    """Add the entries not already listed. Idempotent: a second import of the same file adds nothing.

    An entry already covered by an active listing is skipped (``covered``); an entry that covers
    narrower active listings replaces them (they become history, ``superseded``). Adjacent entries
    stay separate: each keeps its own reason and date.
    """
    report = ImportReport()
    now = now or utcnow()
    kept = _dedupe_nested(entries, report)
    for offset in range(0, len(kept), IMPORT_CHUNK):
        _import_chunk(
            session, kept[offset : offset + IMPORT_CHUNK], report, source, actor, default_reason, now
        )
    return report


def _existing_for_chunk(session: Session, chunk: Sequence[Entry]) -> list[tuple[int, int, int, bytes, bytes]]:
    """Active listings that could overlap any entry of a sorted single-version chunk."""
    rows: list[tuple[int, int, int, bytes, bytes]] = []
    by_version: dict[int, list[IPNetwork]] = {}
    for entry in chunk:
        by_version.setdefault(entry.network.version, []).append(entry.network)
    for version, nets in by_version.items():
        lo = nets[0].network_address.packed
        hi = max(network_keys(n)[2] for n in nets)
        first_host = ipaddress.ip_network(nets[0].network_address)
        cols = (Listing.id, Listing.version, Listing.prefixlen, Listing.start_key, Listing.end_key)
        inside = select(*cols).where(
            Listing.active.is_(True), Listing.version == version, Listing.start_key.between(lo, hi)
        )
        keys = sorted({key for _plen, key in supernet_keys(first_host)})
        covering = select(*cols).where(
            Listing.active.is_(True), Listing.version == version, Listing.start_key.in_(keys)
        )
        seen: set[int] = set()
        for stmt in (inside, covering):
            for r in session.execute(stmt):
                if r[0] not in seen:
                    seen.add(r[0])
                    rows.append((r[0], r[1], r[2], r[3], r[4]))
    return rows


def _import_chunk(
    session: Session,
    chunk: Sequence[Entry],
    report: ImportReport,
    source: str,
    actor: str,
    default_reason: str,
    now: datetime,
) -> None:
    existing = _existing_for_chunk(session, chunk)
    exact = {(v, start, plen) for (_id, v, plen, start, _end) in existing}
    # Sorted intervals of existing active listings, per version, for covered/covering checks.
    intervals: dict[int, list[tuple[bytes, bytes, int]]] = {}
    for lid, v, _plen, start, end in existing:
        intervals.setdefault(v, []).append((start, end, lid))
    for items in intervals.values():
        items.sort()

    rows: list[dict[str, Any]] = []
    superseded_ids: set[int] = set()
    for entry in chunk:
        version, start, end = network_keys(entry.network)
        if (version, start, entry.network.prefixlen) in exact:
            report.unchanged += 1
            continue
        spans = intervals.get(version, [])
        if any(s <= start and end <= e for s, e, _ in spans):
            report.covered += 1
            continue
        for s, e, lid in spans:
            if start <= s and e <= end:
                superseded_ids.add(lid)
        rows.append(
            {
                "network": str(entry.network),
                "version": version,
                "prefixlen": entry.network.prefixlen,
                "start_key": start,
                "end_key": end,
                "reason": (entry.reason or default_reason)[:255],
                "listed_at": entry.listed_at or now,
                "source": source,
                "evidence": {},
                "active": True,
                "created_at": now,
            }
        )
    if superseded_ids:
        ids = sorted(superseded_ids)
        session.execute(
            update(Listing).where(Listing.id.in_(ids)).values(active=False, removed_at=now),
            execution_options={"synchronize_session": False},
        )
        session.execute(
            insert(ListingEvent),
            [
                {
                    "listing_id": lid,
                    "kind": ListingEventKind.SUPERSEDED,
                    "at": now,
                    "actor": actor,
                    "detail": {"reason": "covered by a wider imported listing"},
                }
                for lid in ids
            ],
        )
        report.superseded += len(ids)
    if rows:
        _bulk_insert_listings(session, rows)
        report.added += len(rows)


@functools.lru_cache(maxsize=4096)
def _sqlite_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


_COPY_COLUMNS = (
    "network",
    "version",
    "prefixlen",
    "start_key",
    "end_key",
    "reason",
    "listed_at",
    "source",
    "evidence",
    "active",
    "created_at",
)


def _bulk_insert_listings(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert many listings: COPY on PostgreSQL, the driver's executemany on SQLite.

    Both bypass per-row SQLAlchemy type processing, which dominates at a million rows; values are
    written in the same representation the column types use (SQLite: ``YYYY-MM-DD HH:MM:SS.ffffff`` UTC).
    """
    conn = session.connection()
    dbapi: Any = conn.connection.dbapi_connection
    if conn.dialect.name == "sqlite":
        marks = ", ".join("?" * len(_COPY_COLUMNS))
        sql = f"INSERT INTO listings ({', '.join(_COPY_COLUMNS)}) VALUES ({marks})"
        dbapi.cursor().executemany(
            sql,
            [
                (
                    row["network"],
                    row["version"],
                    row["prefixlen"],
                    row["start_key"],
                    row["end_key"],
                    row["reason"],
                    _sqlite_time(row["listed_at"]),
                    row["source"],
                    "{}",
                    1,
                    _sqlite_time(row["created_at"]),
                )
                for row in rows
            ],
        )
        return
    if conn.dialect.name != "postgresql":
        conn.execute(insert(Listing), rows)
        return
    with dbapi.cursor() as cur, cur.copy(f"COPY listings ({', '.join(_COPY_COLUMNS)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(
                (
                    row["network"],
                    row["version"],
                    row["prefixlen"],
                    row["start_key"],
                    row["end_key"],
                    row["reason"],
                    row["listed_at"],
                    row["source"],
                    "{}",
                    row["active"],
                    row["created_at"],
                )
            )
