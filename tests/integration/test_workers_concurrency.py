"""Two ``tmsi worker`` processes on PostgreSQL + Redis, ingesting from Dovecot and sending through a
slow SMTP server at the same time; one is killed with SIGKILL in the middle of a send.

Every message is stored once, every reply is accepted by the SMTP server exactly once, every due check
runs once, and the killed worker's claimed work is completed by the survivor.

The outbox claim lease is 5 minutes and a verification claim 15 minutes; instead of waiting, the test
moves the *dead* worker's leases into the past (its rows only, found by the pid in the holder id) —
the same state the clock would reach.
"""

from __future__ import annotations

import asyncio
import collections
import email
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from email import policy
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine

from tests.services.plugin import require_or_skip
from tests.services.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS_DB = 9
DEMO_ZONES = sorted((Path(__file__).resolve().parents[2] / "tmsi" / "data" / "demo" / "zones").glob("*.zone"))
TMSI = str(Path(sys.executable).with_name("tmsi"))


def _reachable(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def pg_url() -> Iterator[str]:
    if not _reachable("127.0.0.1", 5432):
        require_or_skip("PostgreSQL is not running on 127.0.0.1:5432")
    name = f"tmsi_workers_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    from tmsi.cli.db import upgrade

    upgrade(url)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def redis_url() -> Iterator[str]:
    if not _reachable("127.0.0.1", 6379):
        require_or_skip("Redis is not running on 127.0.0.1:6379")
    import redis

    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


class SlowSmtp:
    """An SMTP server that takes ``delay`` seconds to accept each message; a message whose client
    vanished during the delay is not accepted (aiosmtpd cancels the handler when the connection drops)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.accepted: list[str] = []
        self.in_flight_since: float | None = None
        self.port = free_port()
        self._controller: Any = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.in_flight_since = time.monotonic()
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight_since = None
        if server.transport is None:
            return "451 client gone"
        message = email.message_from_bytes(envelope.content, policy=policy.default)
        self.accepted.append(str(message["Message-ID"]))
        return "250 OK"

    def __enter__(self) -> SlowSmtp:
        from aiosmtpd.controller import Controller

        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._controller.stop()


def _request(i: int, batch: str) -> bytes:
    address = f"198.51.100.{100 + i}" if batch == "b" else f"192.0.2.{100 + i}"
    return (
        f"From: NOC {i} <noc@isp{i}{batch}.example>\r\n"
        "To: dul@example.test\r\n"
        f"Subject: Please delist {address}\r\n"
        f"Message-ID: <req-{batch}-{i}-{uuid.uuid4().hex[:6]}@isp{i}{batch}.example>\r\n"
        "Date: Sun, 29 Nov 2026 10:00:00 +0000\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Hello, our customer on {address} has a static address now. Please remove it from the DUL.\r\n"
    ).encode()


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [TMSI, "worker", "--workers", "2"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _wait(predicate: Any, timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tail = "\n".join(p.read_text(errors="replace")[-3000:] for p in logs)
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def _fast_forward_leases(engine: Engine, pid: int) -> dict[str, int]:
    """Expire every lease the dead worker holds (as the clock would), and only those."""
    moved = {}
    with engine.begin() as conn:
        for table, column, holder in (
            ("outbox", "claimed_until", "claimed_by"),
            ("case_targets", "claimed_until", "claimed_by"),
            ("job_locks", "expires_at", "holder"),
        ):
            result = conn.execute(
                text(
                    f"UPDATE {table} SET {column} = now() - interval '1 second' "
                    f"WHERE {holder} LIKE :a OR {holder} LIKE :b"
                ),
                {"a": f"%:{pid}", "b": f"%:{pid}:%"},
            )
            moved[table] = result.rowcount
    return moved


def test_two_workers_ingest_and_send_exactly_once_and_survive_a_kill(
    pg_url: str, redis_url: str, dovecot: Any, knot: Any, tmp_path: Path
) -> None:
    from tmsi.models import (
        CaseTarget,
        Direction,
        Message,
        MessageDelivery,
        OutboxMessage,
        OutboxStatus,
        VerificationRun,
    )

    user, password = dovecot.add_user(f"ops{uuid.uuid4().hex[:6]}", "ops-password")
    first_batch, second_batch = 16, 8
    for i in range(first_batch):
        dovecot.append("INBOX", _request(i, "a"), user=user)

    engine = create_engine(pg_url)
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    with SlowSmtp(delay=1.0) as smtp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TMSI_")} | {
            "TMSI_DATABASE_URL": pg_url,
            "TMSI_HUEY_STORAGE": "redis",
            "TMSI_REDIS_URL": redis_url,
            "TMSI_INSTANCE_PATH": str(tmp_path / "instance"),
            "TMSI_ENVIRONMENT": "test",
            "TMSI_MAILBOX_KIND": "imap",
            "TMSI_MAILBOX_ADDRESS": "dul@example.test",
            "TMSI_IMAP_HOST": dovecot.host,
            "TMSI_IMAP_PORT": str(dovecot.port),
            "TMSI_IMAP_TLS": "none",
            "TMSI_IMAP_USER": user,
            "TMSI_IMAP_PASSWORD": password,
            "TMSI_SMTP_HOST": "127.0.0.1",
            "TMSI_SMTP_PORT": str(smtp.port),
            "TMSI_SMTP_TLS": "none",
            "TMSI_RESOLVER_KIND": "zonefile",
            "TMSI_RESOLVER_ZONE_FILES": ",".join(str(p) for p in DEMO_ZONES),
            "TMSI_RESOLVERS": knot.nameserver,
            "TMSI_JOB_INTERVALS": "poll_mailbox=3s,send_outbox=3s,reverify_due=3s,evaluate_authority=5s",
            "TMSI_LOG_LEVEL": "INFO",
        }
        workers = [_start_worker(env, logs[0]), _start_worker(env, logs[1])]
        try:
            # Kill whichever worker is in the middle of delivering a message (its SMTP DATA is pending).
            victim: subprocess.Popen[bytes] | None = None

            def sending_worker() -> bool:
                nonlocal victim
                since = smtp.in_flight_since
                if since is None or time.monotonic() - since > 0.6:
                    return False
                with engine.connect() as conn:
                    holders = (
                        conn.execute(
                            select(OutboxMessage.claimed_by).where(
                                OutboxMessage.status == OutboxStatus.SENDING
                            )
                        )
                        .scalars()
                        .all()
                    )
                for proc in workers:
                    if any(h and h.endswith(f":{proc.pid}") for h in holders):
                        victim = proc
                        return True
                return False

            _wait(sending_worker, 90, "a worker in the middle of a send", logs)
            assert victim is not None
            accepted_before_kill = len(smtp.accepted)
            victim.send_signal(signal.SIGKILL)
            assert victim.wait(timeout=10) == -signal.SIGKILL
            survivor = next(p for p in workers if p is not victim)
            moved = _fast_forward_leases(engine, victim.pid)
            assert moved["outbox"] >= 1, moved  # it held at least the row it was sending

            # New mail keeps arriving after the kill; the survivor takes over the mailbox too.
            for i in range(second_batch):
                dovecot.append("INBOX", _request(i, "b"), user=user)
            total = first_batch + second_batch

            def drained() -> bool:
                with engine.connect() as conn:
                    stored = conn.scalar(
                        select(func.count(Message.id)).where(Message.direction == Direction.IN)
                    )
                    unsent = conn.scalar(
                        select(func.count(OutboxMessage.id)).where(OutboxMessage.status != OutboxStatus.SENT)
                    )
                    sent = conn.scalar(select(func.count(OutboxMessage.id)))
                    unchecked = conn.scalar(
                        select(func.count(CaseTarget.id)).where(CaseTarget.last_checked_at.is_(None))
                    )
                return stored == total and unsent == 0 and sent >= total and unchecked == 0

            _wait(drained, 150, "ingest, outbox and checks to drain", logs)
            assert survivor.poll() is None
            survivor.send_signal(signal.SIGINT)
            assert survivor.wait(timeout=30) == 0
        finally:
            for proc in workers:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

        with engine.connect() as conn:
            messages = (
                conn.execute(select(Message.dedupe_key).where(Message.direction == Direction.IN))
                .scalars()
                .all()
            )
            deliveries = conn.execute(select(MessageDelivery.uid, MessageDelivery.folder)).all()
            outbox = conn.execute(select(OutboxMessage.message_id_header, OutboxMessage.attempts)).all()
            runs = conn.execute(
                select(VerificationRun.target_id, func.count())
                .where(VerificationRun.status == "done")
                .group_by(VerificationRun.target_id)
            ).all()
            targets = conn.scalar(select(func.count(CaseTarget.id)))
            held = conn.scalar(select(func.count(CaseTarget.id)).where(CaseTarget.claimed_by.is_not(None)))
        engine.dispose()

        print(
            f"killed pid {victim.pid} with {moved} leases; {len(smtp.accepted)} accepted "
            f"({accepted_before_kill} before the kill); retried: {sum(a >= 2 for _, a in outbox)}; "
            f"targets {targets}"
        )
        # every message stored once (one row and one delivery per appended message)
        assert len(messages) == len(set(messages)) == total
        assert len(deliveries) == len(set(deliveries)) == total
        # every reply accepted by the SMTP server exactly once, including the one cut off by the kill
        counts = collections.Counter(smtp.accepted)
        assert set(counts) == {mid for mid, _ in outbox}
        assert max(counts.values()) == 1, [m for m, c in counts.items() if c > 1]
        assert any(attempts >= 2 for _, attempts in outbox), "the killed send was never retried"
        assert len(smtp.accepted) > accepted_before_kill
        # every due check ran once (one finished run per target), none left claimed
        assert targets >= total and len(runs) == targets
        assert all(count == 1 for _, count in runs), runs
        assert held == 0
