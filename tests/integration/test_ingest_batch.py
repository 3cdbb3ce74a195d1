"""The poller's fast path: a fetched batch stored and processed in one transaction (``process_batch``),
parser processes, grouped MOVEs. Its outcome must equal processing one message at a time, including for
messages of one batch that depend on each other (a reply to a request of the same batch, the same
message twice, several requests from one sender against the reply limit)."""

from __future__ import annotations

import ipaddress

import pytest
from sqlalchemy import func, select

from tests.integration import ingest_helpers as mails
from tmsi.adapters.mailbox import MemoryMailbox
from tmsi.db import unit_of_work
from tmsi.domain.listfile import Entry
from tmsi.domain.networks import parse_network
from tmsi.models import AuditEvent, Case, CaseCounter, Message, MessageStatus, OutboxMessage
from tmsi.services import ingest, listings, poller


def _count(factory, model, *where):
    with unit_of_work(factory) as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def _box(*raws: bytes) -> MemoryMailbox:
    box = MemoryMailbox()
    for raw in raws:
        box.add("INBOX", raw)
    return box


def test_a_reply_in_the_same_batch_threads_into_the_case_its_request_opened(settings, factory):
    request = mails.request("203.0.113.7", sender="noc@isp.example")
    reply = mails.reply_to(request, subject="more addresses", body="Also 203.0.113.9, thanks.")
    report = poller.poll_once(settings, factory, _box(request, reply))
    assert (report.processed, report.new_cases) == (2, 1)
    with unit_of_work(factory) as s:
        (case,) = s.scalars(select(Case)).all()
        assert sorted(t.network for t in case.targets) == ["203.0.113.7/32", "203.0.113.9/32"]
        assert {m.case_id for m in s.scalars(select(Message).where(Message.direction == "in"))} == {case.id}


def test_the_same_message_twice_in_one_batch_is_one_message_with_two_deliveries(settings, factory):
    raw = mails.request("198.51.100.20")
    report = poller.poll_once(settings, factory, _box(raw, raw))
    assert (report.processed, report.duplicates, report.new_cases, report.replies) == (1, 1, 1, 1)
    with unit_of_work(factory) as s:
        (message,) = s.scalars(select(Message).where(Message.direction == "in")).all()
        assert message.delivery_count == 2 and len(message.deliveries) == 2


def test_reply_limit_counts_the_replies_queued_earlier_in_the_same_batch(settings, factory):
    limit = settings.autoreply_per_sender_per_hour
    raws = [mails.request(f"203.0.113.{10 + i}", sender="noc@busy.example") for i in range(limit + 2)]
    report = poller.poll_once(settings, factory, _box(*raws))
    assert report.new_cases == limit + 2
    assert _count(factory, OutboxMessage) == limit
    assert _count(factory, AuditEvent, AuditEvent.action == "reply.suppressed") == 2


def test_references_of_a_batch_are_consecutive_and_the_counter_ends_at_the_last(settings, factory):
    raws = [mails.request(f"198.51.100.{30 + i}", sender=f"noc{i}@isp{i}.example") for i in range(7)]
    box = _box(*raws)
    poller.poll_once(settings, factory, box)
    with unit_of_work(factory) as s:
        numbers = sorted(int(ref.rsplit("-", 1)[1]) for ref in s.scalars(select(Case.reference)))
        assert numbers == list(range(1, 8))
        assert s.scalar(select(CaseCounter.value)) == 7
    box.add("INBOX", mails.request("198.51.100.50", sender="x@later.example"))
    poller.poll_once(settings, factory, box)
    with unit_of_work(factory) as s:
        assert s.scalar(select(func.max(Case.reference))).endswith("-000008")


def test_audit_events_name_the_rows_they_are_about(settings, factory):
    poller.poll_once(settings, factory, _box(mails.request("203.0.113.77")))
    with unit_of_work(factory) as s:
        queued = s.scalars(select(AuditEvent).where(AuditEvent.action == "reply.queued")).one()
        row = s.scalars(select(OutboxMessage)).one()
        assert queued.object_id == str(row.id) and queued.case_id == row.case_id is not None
        actions = [e.action for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))]
        assert actions.index("case.opened") < actions.index("reply.queued")


def test_a_failing_batch_is_redone_one_message_at_a_time(settings, factory, monkeypatch):
    """A processing error aborts the whole batch transaction; the one-by-one pass then quarantines only
    the message that fails and processes the others, so nothing is lost or doubled."""
    bad = mails.request("203.0.113.66", sender="noc@breaks.example")
    good = [mails.request(f"198.51.100.{60 + i}", sender=f"noc{i}@fine.example") for i in range(3)]
    original = ingest._handle_human

    def failing(session, message, parsed, *args, **kwargs):
        if parsed.from_addr == "noc@breaks.example":
            raise RuntimeError("a bug in processing")
        return original(session, message, parsed, *args, **kwargs)

    monkeypatch.setattr(ingest, "_handle_human", failing)
    box = _box(good[0], bad, *good[1:])
    report = poller.poll_once(settings, factory, box)
    assert (report.processed, report.quarantined, report.new_cases) == (3, 1, 3)
    assert _count(factory, Message, Message.direction == "in") == 4
    assert _count(factory, Message, Message.status == MessageStatus.QUARANTINED) == 1
    assert _count(factory, OutboxMessage) == 3
    assert len(box.folders["Processed"].messages) == 3 and len(box.folders["Quarantine"].messages) == 1


def test_moves_are_grouped_but_everything_committed_leaves_the_folder(settings, factory):
    settings = settings.model_copy(update={"imap_batch_size": 2})
    box = _box(*[mails.request(f"203.0.113.{100 + i}", sender=f"n{i}@isp.example") for i in range(5)])
    report = poller.poll_once(settings, factory, box)
    assert report.processed == 5 and not box.folders["INBOX"].messages
    assert len(box.moves) == 1  # 3 IMAP batches, one MOVE (fewer than MOVE_EVERY messages)
    assert set(report.seconds) == {"store", "wait", "parse", "fetch", "move"}


def test_parser_processes_give_the_same_outcome_as_parsing_in_the_poller(settings, factory):
    raws = [
        mails.request("203.0.113.5", sender="a@isp.example"),
        mails.request("2001:db8:5::1", sender="b@isp.example"),
        mails.malformed(),
        mails.auto_reply(),
    ]
    parallel = settings.model_copy(update={"ingest_parse_workers": 1})
    report = poller.poll_once(parallel, factory, _box(*raws))
    assert (report.processed, report.quarantined, report.new_cases) == (3, 1, 2)
    with unit_of_work(factory) as s:
        targets = sorted(t for case in s.scalars(select(Case)) for t in (x.network for x in case.targets))
        assert targets == ["2001:db8:5::1/128", "203.0.113.5/32"]
        raw_sizes = {m.raw_size for m in s.scalars(select(Message).where(Message.direction == "in"))}
        assert raw_sizes == {len(raw) for raw in raws}


@pytest.mark.parametrize(
    "queries",
    [
        ["203.0.113.7/32", "203.0.113.0/24", "198.51.100.128/25", "192.0.2.1/32"],
        [f"203.0.113.{i}/32" for i in range(0, 256, 7)],  # more than one chunk of 16
        ["2001:db8::/32", "2001:db8:1::/48", "203.0.113.16/28"],
        ["203.0.113.130/31"],  # a case page's one or two targets
        ["203.0.113.0/25", "2001:db8:1:2::/64"],
    ],
)
def test_many_lookups_at_once_equal_one_lookup_each(factory, queries, monkeypatch):
    monkeypatch.setattr(listings, "UNNEST_CHUNK", 3)  # several PostgreSQL statements, one padded chunk
    with unit_of_work(factory) as s:
        listings.import_entries(
            s,
            [
                Entry(network=ipaddress.ip_network(net), reason="dynamic", line=1, listed_at=None)
                for net in ("203.0.113.0/26", "203.0.113.128/28", "198.51.100.0/24", "2001:db8:1::/48")
            ],
        )
    with unit_of_work(factory) as s:
        networks = [parse_network(q) for q in queries]
        many = listings.find_overlapping_rows_many(s, networks)
        assert set(many) == {str(n) for n in networks}
        for net in networks:
            one = listings.find_overlapping_rows(s, net)
            assert [r.id for r in many[str(net)]] == [r.id for r in one]
