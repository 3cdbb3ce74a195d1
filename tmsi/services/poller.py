"""The mailbox poller: a pass drains the source folder into :mod:`tmsi.services.ingest`.

``poll_once`` is the mailbox edge: one poller per mailbox (a ``job_locks`` lease, renewed during the
pass), and a message leaves the source folder only after its commit; deliveries (mailbox, folder,
UIDVALIDITY, UID) make a restart after a crash exactly-once. A pass:

- a feeder thread (the only user of the mailbox connection meanwhile) fetches the source folder in IMAP
  batches of ``imap_batch_size`` UIDs, in parts of at most ``BATCH_BYTES`` of mail, hands each part to
  the parser and runs the MOVEs; mail already committed by an earlier (crashed) pass is only moved;
- parsing and extraction (pure functions of the bytes) run in ``ingest_parse_workers`` processes (a
  forkserver pool kept for the life of the process), one part ahead of the poller; with none, or when a
  parser process dies, the poller parses;
- the poller stores and processes a whole part in one unit of work (``ingest.process_batch``); if that
  fails, the part again one message per unit of work, where a failure quarantines only that message;
- committed mail leaves the source folder in MOVEs of about ``MOVE_EVERY`` messages or at the end of the
  pass; a crash before the MOVE leaves it in the folder, and the next pass finds its deliveries and
  only moves it: nothing is lost or processed twice.

``PollReport.seconds`` says where the pass spent its time.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from tmsi.adapters.mailbox import Mailbox, MailboxError, batched, mailbox_from_settings
from tmsi.config import Settings
from tmsi.db import unit_of_work, utcnow
from tmsi.models import MailboxCursor, Message, MessageDelivery, MessageStatus
from tmsi.services import joblock
from tmsi.services.ingest import (
    Delivery,
    IngestResult,
    Prepared,
    prepare,
    process_batch,
    store_and_process,
    store_failed,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# singleton lease (job_locks): one poller per mailbox, whoever schedules it


def acquire_lease(factory: sessionmaker[Session], name: str, holder: str, seconds: float) -> bool:
    """Take or renew the lease ``name`` for ``holder``; False while another holder's lease runs."""
    with unit_of_work(factory) as session:
        return joblock.try_acquire(session, name, holder, seconds)


def release_lease(factory: sessionmaker[Session], name: str, holder: str) -> None:
    with unit_of_work(factory) as session:
        joblock.release(session, name, holder)


# --------------------------------------------------------------------------------------------------
# poller


@dataclass
class PollReport:
    mailbox: str
    folder: str
    uidvalidity: int = 0
    uidvalidity_reset: bool = False
    seen: int = 0
    processed: int = 0
    quarantined: int = 0
    duplicates: int = 0
    stored: int = 0  # kept for the workers (TMSI_INGEST_DEFER)
    moved_only: int = 0
    new_cases: int = 0
    replies: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)
    skipped: str = ""
    # where the pass spent its time (seconds): the poller storing, waiting for a fetched part, waiting
    # for the parser processes; the feeder thread fetching and moving (beside the poller)
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("store", "wait", "parse", "fetch", "move"), 0.0)
    )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


LEASE_SECONDS = 300.0


def _cursor(session: Session, mailbox: str, folder: str) -> MailboxCursor:
    cursor = session.scalar(
        select(MailboxCursor).where(MailboxCursor.mailbox == mailbox, MailboxCursor.folder == folder)
    )
    if cursor is None:
        cursor = MailboxCursor(mailbox=mailbox, folder=folder, uidvalidity=0, last_uid=0, updated_at=utcnow())
        session.add(cursor)
        session.flush()
    return cursor


def poll_once(
    settings: Settings,
    factory: sessionmaker[Session],
    mailbox: Mailbox,
    *,
    holder: str | None = None,
    limit: int | None = None,
) -> PollReport:
    """Drain the source folder once: each message stored and processed in its own committed unit of
    work, then moved (Processed or Quarantine). Messages already committed (known delivery) are only
    moved. ``limit`` caps how many new messages this pass processes."""
    source = settings.imap_source_folder
    processed_folder, quarantine_folder = settings.imap_processed_folder, settings.imap_quarantine_folder
    name = mailbox.name[:255]
    report = PollReport(mailbox=name, folder=source)
    holder = holder or joblock.new_holder()
    lock = f"poll:{name}"[:128]
    if not acquire_lease(factory, lock, holder, LEASE_SECONDS):
        report.skipped = "another worker holds the poller lease"
        return report
    try:
        _poll(
            settings,
            factory,
            mailbox,
            report,
            holder,
            lock,
            source,
            processed_folder,
            quarantine_folder,
            limit,
        )
    except MailboxError as exc:
        log.error("polling %s failed: %s", name, exc)
        report.errors.append(str(exc))
    finally:
        release_lease(factory, lock, holder)
    return report


def _fetch_parts(
    settings: Settings,
    factory: sessionmaker[Session],
    mailbox: Mailbox,
    report: PollReport,
    parser: Parser,
    source: str,
    processed_folder: str,
    quarantine_folder: str,
    limit: int | None,
) -> Iterator[tuple[dict[str, list[int]], list[tuple[int, bytes]], Parsing | None]]:
    """The source folder as parts to store: (the IMAP batch's moves, the part's (uid, raw), its parsing);
    after the parts of each IMAP batch, (moves, [], None). Mail already committed is only moved."""
    name = report.mailbox
    mailbox.ensure_folders([processed_folder, quarantine_folder])
    uidvalidity = mailbox.select(source)
    report.uidvalidity = uidvalidity
    with unit_of_work(factory) as session:
        cursor = _cursor(session, name, source)
        if cursor.uidvalidity != uidvalidity:
            if cursor.uidvalidity:
                # RFC 3501: every UID we knew is void. Start over; the dedupe key keeps mail exactly-once.
                log.warning(
                    "%s %s: UIDVALIDITY %s -> %s, cursor reset", name, source, cursor.uidvalidity, uidvalidity
                )
                report.uidvalidity_reset = True
            cursor.uidvalidity, cursor.last_uid, cursor.updated_at = uidvalidity, 0, utcnow()
    # Everything still in the source folder: new mail, and mail committed before a crash but not moved.
    uids = mailbox.uids_after(source, 0)
    budget = limit if limit is not None else len(uids)
    for batch in batched(uids, settings.imap_batch_size):
        if budget <= 0:
            break
        with unit_of_work(factory) as session:
            known = dict(
                session.execute(
                    select(MessageDelivery.uid, Message.status)
                    .join(Message, Message.id == MessageDelivery.message_id)
                    .where(
                        MessageDelivery.mailbox == name,
                        MessageDelivery.folder == source,
                        MessageDelivery.uidvalidity == uidvalidity,
                        MessageDelivery.uid.in_(batch),
                    )
                ).all()
            )
        moves: dict[str, list[int]] = {processed_folder: [], quarantine_folder: []}
        for uid, status in known.items():
            moves[quarantine_folder if status == MessageStatus.QUARANTINED else processed_folder].append(uid)
            report.moved_only += 1
        todo = [uid for uid in batch if uid not in known][: max(budget, 0)]
        budget -= len(todo)
        for part in _by_size(mailbox.fetch(source, todo), BATCH_BYTES):
            yield moves, part, parser.submit(settings, [raw for _, raw in part])
        yield moves, [], None  # the batch is complete: its mail may move


class _Feeder:
    """The mailbox side of a poll pass, in its own thread (the only user of the connection meanwhile):
    it fetches the next parts and hands them to the parser while the poller stores the current one, and
    runs the poller's MOVEs between fetches. Both wait on the IMAP server, not on our CPU."""

    _END = object()

    def __init__(
        self,
        parts: Iterator[tuple[dict[str, list[int]], list[tuple[int, bytes]], Parsing | None]],
        mailbox: Mailbox,
        source: str,
        seconds: dict[str, float],
    ) -> None:
        self.parts, self.mailbox, self.source, self.seconds = parts, mailbox, source, seconds
        self.ready: queue.Queue[Any] = queue.Queue(maxsize=2)  # fetched parts: bounds the memory held
        self.moves: queue.Queue[Any] = queue.Queue()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="tmsi-poll-feeder", daemon=True)
        self.thread.start()

    def _put(self, item: Any) -> None:
        while not self.stop.is_set():
            try:
                self.ready.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _move(self, block: bool) -> bool:
        """Run the MOVEs asked for so far; with ``block``, wait for requests until the end marker."""
        while True:
            try:
                request = self.moves.get(block=block, timeout=0.2 if block else None)
            except queue.Empty:
                if block and not self.stop.is_set():
                    continue
                return False
            if request is self._END:
                return True
            started = time.perf_counter()
            for destination, uids in request.items():
                if uids:
                    self.mailbox.move(self.source, sorted(uids), destination)
            self.seconds["move"] += time.perf_counter() - started

    def _run(self) -> None:
        try:
            while True:
                self._move(block=False)
                started = time.perf_counter()
                item = next(self.parts, self._END)
                self.seconds["fetch"] += time.perf_counter() - started
                self._put(item)
                if item is self._END:
                    break
            self._move(block=True)
        except BaseException as exc:  # handed to the poller, which raises it
            self._put(exc)

    def get(self) -> Any:
        item = self.ready.get()
        if isinstance(item, BaseException):
            raise item
        return None if item is self._END else item

    def finish(self) -> None:
        """The poller is done: the last MOVEs run, then the thread ends (also after an error)."""
        self.moves.put(self._END)
        self.thread.join()
        while not self.ready.empty():  # an error raised after the last part
            item = self.ready.get()
            if isinstance(item, BaseException):
                raise item

    def abandon(self) -> None:
        self.stop.set()
        self.moves.put(self._END)
        self.thread.join(timeout=30)


def _poll(
    settings: Settings,
    factory: sessionmaker[Session],
    mailbox: Mailbox,
    report: PollReport,
    holder: str,
    lock: str,
    source: str,
    processed_folder: str,
    quarantine_folder: str,
    limit: int | None,
) -> None:
    """Fetch, parse, store, move, overlapped: a feeder thread fetches the next part (and the parser
    processes parse it) while this thread stores the current one; mail moves only after the commit of
    its whole IMAP batch, in MOVEs of about MOVE_EVERY messages."""
    name = report.mailbox
    parser = Parser(settings.ingest_parse_workers)
    seconds = report.seconds
    parts = _fetch_parts(
        settings, factory, mailbox, report, parser, source, processed_folder, quarantine_folder, limit
    )
    feeder = _Feeder(parts, mailbox, source, seconds)
    to_move: dict[str, list[int]] = {}
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[phase] += now - clock
        clock = now

    try:
        while (current := feeder.get()) is not None:
            lap("wait")
            moves, part, pending = current
            if pending is None:
                # Only now, after each message's commit: a crash before the MOVE leaves them in the
                # folder, and the next pass recognises their deliveries and just moves them.
                for destination, moved in moves.items():
                    to_move.setdefault(destination, []).extend(moved)
                if sum(map(len, to_move.values())) >= MOVE_EVERY:
                    feeder.moves.put(to_move)
                    to_move = {}
                acquire_lease(factory, lock, holder, LEASE_SECONDS)
                lap("store")
                continue
            prepared = pending.result()
            lap("parse")
            items = list(zip([uid for uid, _ in part], prepared, strict=True))
            report.seen += len(items)
            report.bytes += sum(len(item.raw) for _, item in items)
            deliveries = {uid: Delivery(name, source, report.uidvalidity, uid) for uid, _ in items}
            outcomes = _ingest_many(settings, factory, items, deliveries, report)
            for uid, outcome in outcomes.items():
                if outcome is not None:
                    moves[
                        quarantine_folder if outcome == MessageStatus.QUARANTINED.value else processed_folder
                    ].append(uid)
            del items, part, pending, prepared
            lap("store")
        if to_move:
            feeder.moves.put(to_move)
        feeder.finish()
        lap("wait")
    except BaseException:
        feeder.abandon()
        raise
    for phase in seconds:
        seconds[phase] = round(seconds[phase], 3)


# --------------------------------------------------------------------------------------------------
# parsing in other processes (TMSI_INGEST_PARSE_WORKERS): parse + extract is a pure function of the
# bytes, about half the poller's CPU per message; the database work stays in the poller.

_POOLS: dict[int, concurrent.futures.ProcessPoolExecutor] = {}


def _pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """One pool per process, started on first use and kept (a forkserver: safe beside threads)."""
    pool = _POOLS.get(workers)
    if pool is None:
        if not _POOLS:
            atexit.register(_stop_pools)
        context = multiprocessing.get_context("forkserver")
        pool = _POOLS[workers] = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)
    return pool


def _stop_pools() -> None:
    for pool in list(_POOLS.values()):
        pool.shutdown(wait=True, cancel_futures=True)
    _POOLS.clear()


def _prepare_remote(raws: list[bytes], settings: Settings) -> list[Prepared]:
    """In a parser process: everything but the raw bytes goes back (the poller has them)."""
    prepared = [prepare(raw, settings) for raw in raws]
    for item in prepared:
        item.raw = b""
    return prepared


class Parsing:
    """The parse of one part: in a parser process, or (no workers, or that process failed) here."""

    def __init__(
        self, settings: Settings, raws: list[bytes], futures: list[concurrent.futures.Future[list[Prepared]]]
    ) -> None:
        self.settings, self.raws, self.futures = settings, raws, futures

    def result(self) -> list[Prepared]:
        if self.futures:
            try:
                prepared = [item for future in self.futures for item in future.result()]
            except Exception:  # a parser process died (a hostile message, memory): parse here instead
                log.exception("a parser process failed; parsing %d message(s) in the poller", len(self.raws))
                _POOLS.clear()
            else:
                for item, raw in zip(prepared, self.raws, strict=True):
                    item.raw = bytes(raw)
                return prepared
        return [prepare(raw, self.settings) for raw in self.raws]


class Parser:
    def __init__(self, workers: int) -> None:
        self.workers = workers

    def submit(self, settings: Settings, raws: list[bytes]) -> Parsing:
        if self.workers <= 0 or len(raws) < 2:
            return Parsing(settings, raws, [])
        try:
            pool = _pool(self.workers)
            size = -(-len(raws) // self.workers)  # one share per parser process, in order
            shares = [raws[first : first + size] for first in range(0, len(raws), size)]
            return Parsing(
                settings, raws, [pool.submit(_prepare_remote, share, settings) for share in shares]
            )
        except Exception:  # a broken pool: start a new one next time
            log.exception("cannot hand mail to a parser process; parsing in the poller")
            _POOLS.clear()
            return Parsing(settings, raws, [])


# Committed mail leaves the source folder in MOVEs of about this many messages (or at the end of a
# pass): a server may rewrite a whole folder index per MOVE (Dovecot's maildir does), so few large moves
# cost far less than one per IMAP batch. Until moved, a restart recognises the mail as committed.
MOVE_EVERY = 2000

# A fetched batch is processed in parts of at most this many bytes of mail (a part has one message at
# least): the memory a batch holds does not depend on how large its messages are.
BATCH_BYTES = 32 * 2**20


def _by_size(fetched: Iterable[tuple[int, bytes]], limit: int) -> Iterator[list[tuple[int, bytes]]]:
    part: list[tuple[int, bytes]] = []
    size = 0
    for uid, raw in fetched:
        if part and size + len(raw) > limit:
            yield part
            part, size = [], 0
        part.append((uid, raw))
        size += len(raw)
    if part:
        yield part


def _advance_cursor(session: Session, delivery: Delivery) -> None:
    session.execute(
        update(MailboxCursor)
        .where(
            MailboxCursor.mailbox == delivery.mailbox,
            MailboxCursor.folder == delivery.folder,
            MailboxCursor.last_uid < delivery.uid,
        )
        .values(last_uid=delivery.uid, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def _count(report: PollReport, result: IngestResult) -> None:
    if result.duplicate:
        report.duplicates += 1
    elif result.status == MessageStatus.STORED.value:
        report.stored += 1
    elif result.quarantined:
        report.quarantined += 1
    else:
        report.processed += 1
    report.new_cases += int(result.new_case)
    report.replies += len(result.replies)


def _ingest_many(
    settings: Settings,
    factory: sessionmaker[Session],
    items: list[tuple[int, Prepared]],
    deliveries: dict[int, Delivery],
    report: PollReport,
) -> dict[int, str | None]:
    """Part of a fetched batch in one unit of work (:func:`process_batch`); if that fails for any reason,
    the same messages one per unit of work, so that one bad message costs only itself.
    Returns each UID's message status, or None when the message must stay in the folder."""
    if len(items) > 1:
        try:
            with unit_of_work(factory) as session:
                results = process_batch(
                    session,
                    [(item, deliveries[uid]) for uid, item in items],
                    settings,
                    source=report.mailbox,
                    defer=settings.ingest_defer,
                )
                _advance_cursor(session, deliveries[max(deliveries)])
        except Exception:
            log.warning(
                "a batch of %d messages failed; processing them one by one", len(items), exc_info=True
            )
        else:
            outcomes: dict[int, str | None] = {}
            for (uid, _), result in zip(items, results, strict=True):
                _count(report, result)
                outcomes[uid] = result.status
            return outcomes
    return {uid: _ingest_one(settings, factory, item, deliveries[uid], report) for uid, item in items}


def _ingest_one(
    settings: Settings, factory: sessionmaker[Session], item: Prepared, delivery: Delivery, report: PollReport
) -> str | None:
    """One unit of work; returns the message status, or None when it must stay in the folder."""
    try:
        with unit_of_work(factory) as session:
            result = store_and_process(
                session,
                item,
                settings,
                source=delivery.mailbox,
                delivery=delivery,
                defer=settings.ingest_defer,
            )
            _advance_cursor(session, delivery)
    except Exception as exc:  # a system failure (database down, a bug): keep the mail, say so loudly
        log.exception("ingesting %s uid %s failed", delivery.folder, delivery.uid)
        report.errors.append(f"uid {delivery.uid}: {type(exc).__name__}: {exc}")
        try:
            with unit_of_work(factory) as session:
                store_failed(
                    session,
                    item.raw,
                    f"{type(exc).__name__}: {exc}",
                    source=delivery.mailbox,
                    delivery=delivery,
                )
        except Exception:
            log.exception("could not even store uid %s raw; it stays in %s", delivery.uid, delivery.folder)
            return None
        report.quarantined += 1
        return MessageStatus.QUARANTINED.value
    _count(report, result)
    return result.status


def job_poll_mailbox(settings: Settings, factory: sessionmaker[Session]) -> dict[str, Any]:
    """Scheduled job: one pass over the configured mailbox (``TMSI_MAILBOX_KIND``)."""
    mailbox = mailbox_from_settings(settings)
    if mailbox is None:
        return {"skipped": "TMSI_MAILBOX_KIND is none"}
    try:
        return poll_once(settings, factory, mailbox).as_dict()
    finally:
        mailbox.close()


def watch_mailbox(
    settings: Settings, factory: sessionmaker[Session], mailbox: Mailbox, *, passes: int | None = None
) -> None:
    """Poll, then wait (IDLE where the server offers it, else ``poll_interval_seconds``), forever."""
    done = 0
    while passes is None or done < passes:
        report = poll_once(settings, factory, mailbox)
        log.info("poll: %s", report.as_dict())
        done += 1
        if passes is None or done < passes:
            mailbox.wait(settings.imap_source_folder, float(settings.poll_interval_seconds))
