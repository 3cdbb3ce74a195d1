"""The offline demo of ``tmsi run``: sample listings, a lead account, a Maildir of sample requests and
zone files answering DNS, all under ``<instance>/demo``; plus the demo job in which an ISP "fixes" the
reverse DNS of one failing address so that re-verification visibly moves its case along.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mailbox
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from tmsi.config import Settings
from tmsi.db import unit_of_work, utcnow
from tmsi.models import Listing, Role, User

log = logging.getLogger(__name__)

DEMO_EMAIL = "demo@example.test"
DEMO_AUTHSERV_ID = "mx.dul.example.test"
FIX_AFTER_SECONDS = 30.0
# The address the demo ISP fixes, and its names before and after.
FIX_ADDRESS = "198.51.100.77"
FIX_OLD_NAME = "dyn-198-51-100-77.pool.bluecable.example."
FIX_NEW_NAME = "static-198-51-100-77.biz.bluecable.example."


def data_dir() -> Path:
    return Path(str(resources.files("tmsi") / "data" / "demo"))


def demo_dir(instance_path: Path) -> Path:
    return instance_path.resolve() / "demo"


def demo_environment(instance_path: Path) -> dict[str, str]:
    """The TMSI_* variables of the demo (exported to the web and worker processes)."""
    base = instance_path.resolve()
    zones = demo_dir(base) / "zones"
    return {
        "TMSI_DEMO": "true",
        "TMSI_INSTANCE_PATH": str(base),
        "TMSI_DATABASE_URL": f"sqlite:///{base / 'tmsi.db'}",
        "TMSI_HUEY_STORAGE": "sqlite",
        "TMSI_MAILBOX_KIND": "maildir",
        "TMSI_MAILDIR_PATH": str(demo_dir(base) / "maildir"),
        "TMSI_MAILBOX_ADDRESS": "dul@example.test",
        "TMSI_AUTHSERV_IDS": DEMO_AUTHSERV_ID,
        "TMSI_RESOLVER_KIND": "zonefile",
        "TMSI_RESOLVER_ZONE_FILES": ",".join(str(zones / p.name) for p in sorted(_zone_sources())),
        "TMSI_REVERIFY_SCHEDULE": "15s,20s,20s,30s,1m,5m,15m,1h",
        "TMSI_ZONE_DIR": str(base / "zone"),
        "TMSI_EXPORT_DEBOUNCE_SECONDS": "5",
        "TMSI_SMTP_HOST": "127.0.0.1",
    }


def _zone_sources() -> list[Path]:
    return sorted((data_dir() / "zones").glob("*.zone"))


@dataclass
class DemoSignIn:
    email: str
    password: str
    created: bool


def hash_password(password: str) -> str:
    """Use the auth module's hasher when it exists (same scheme as sign-in); argon2id otherwise."""
    for module_name in ("tmsi.services.users", "tmsi.web.auth"):
        try:
            module = __import__(module_name, fromlist=["hash_password"])
        except ImportError:
            continue
        hasher = getattr(module, "hash_password", None)
        if hasher is not None:
            return str(hasher(password))
    from argon2 import PasswordHasher

    return PasswordHasher().hash(password)


def database_is_empty(session: Session) -> bool:
    users = session.scalar(select(func.count(User.id))) or 0
    listings = session.scalar(select(func.count(Listing.id))) or 0
    return users == 0 and listings == 0


def prepare_files(settings: Settings) -> None:
    """Copy the zone files (first start only: the demo job edits the copies) and start the clock."""
    target = demo_dir(settings.instance_path)
    zones = target / "zones"
    zones.mkdir(parents=True, exist_ok=True)
    for source in _zone_sources():
        if not (zones / source.name).exists():
            shutil.copyfile(source, zones / source.name)
    _write_state(settings, {"started_at": time.time(), "fixed": _read_state(settings).get("fixed", False)})


def fill_mailbox(maildir_path: Path) -> int:
    """Deliver the sample requests into the demo Maildir (new/), as a local MTA would."""
    box = mailbox.Maildir(str(maildir_path), create=True)
    count = 0
    for eml in sorted((data_dir() / "mail").glob("*.eml")):
        box.add(eml.read_bytes())
        count += 1
    return count


def seed(settings: Settings, factory: sessionmaker[Session]) -> DemoSignIn:
    """Load the demo into an empty database, or give the existing demo lead a fresh password."""
    from tmsi.domain.listfile import Entry, parse_listing_file
    from tmsi.services.listings import import_entries

    password = secrets.token_urlsafe(12)
    with unit_of_work(factory) as session:
        empty = database_is_empty(session)
        user = session.scalar(select(User).where(User.email == DEMO_EMAIL))
        if empty:
            text = (data_dir() / "listings.csv").read_text("utf-8")
            entries = [item for item in parse_listing_file(text, "csv") if isinstance(item, Entry)]
            import_entries(session, entries, source="demo")
        if user is None:
            user = User(email=DEMO_EMAIL, name="Demo Lead", role=Role.LEAD, created_at=utcnow())
            session.add(user)
        user.password_hash = hash_password(password)
        user.active = True
        user.failed_logins = 0
    if empty:
        count = fill_mailbox(settings.maildir_path)
        log.info("demo: %d sample requests delivered to %s", count, settings.maildir_path)
    return DemoSignIn(DEMO_EMAIL, password, empty)


# ---- the demo job: the ISP fixes its reverse DNS ------------------------------------------------
def _state_path(settings: Settings) -> Path:
    return demo_dir(settings.instance_path) / "state.json"


def _read_state(settings: Settings) -> dict[str, Any]:
    try:
        return dict(json.loads(_state_path(settings).read_text()))
    except (OSError, ValueError):
        return {}


def _write_state(settings: Settings, state: dict[str, Any]) -> None:
    path = _state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def _bump_serial(text: str) -> str:
    return re.sub(r"(IN SOA \S+ \S+ )(\d+)", lambda m: f"{m.group(1)}{int(m.group(2)) + 1}", text, count=1)


def _rewrite(path: Path, text: str) -> None:
    """Atomic replace with a new whole-second mtime, so readers that cache on mtime notice it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    stamp = max(int(time.time()), int(path.stat().st_mtime) + 1)
    os.utime(tmp, (stamp, stamp))
    os.replace(tmp, path)


def fix_demo_zone(settings: Settings) -> bool:
    """Give 198.51.100.77 a static, forward-confirmed name (once). True when it changed the zones."""
    zones = demo_dir(settings.instance_path) / "zones"
    reverse, forward = zones / "100.51.198.in-addr.arpa.zone", zones / "bluecable.example.zone"
    text = reverse.read_text()
    if FIX_OLD_NAME not in text:
        return False
    _rewrite(reverse, _bump_serial(text.replace(FIX_OLD_NAME, FIX_NEW_NAME)))
    relative = FIX_NEW_NAME.removesuffix(".bluecable.example.")
    fwd = forward.read_text().rstrip("\n") + f"\n{relative:<30} IN A   {FIX_ADDRESS}\n"
    _rewrite(forward, _bump_serial(fwd))
    return True


def job_fix_demo_zone(settings: Settings, factory: sessionmaker[Session]) -> bool:
    """Demo schedule: about 30 s after start, BlueCable corrects the rDNS of 198.51.100.77."""
    if not settings.demo:
        return False
    state = _read_state(settings)
    if state.get("fixed") or time.time() - float(state.get("started_at", time.time())) < FIX_AFTER_SECONDS:
        return False
    changed = fix_demo_zone(settings)
    state["fixed"] = True
    _write_state(settings, state)
    if changed:
        log.info("demo: bluecable.example changed the PTR of %s to %s", FIX_ADDRESS, FIX_NEW_NAME)
    return changed


# ---- the demo's outgoing mail: a tiny local SMTP sink writing a Maildir ---------------------------
class SentMailSink:
    """A minimal SMTP server on loopback storing every message in ``<instance>/demo/sent`` (Maildir),
    so the demo's replies are "sent" without any real mail server. Not for production use."""

    def __init__(self, maildir_path: Path, host: str = "127.0.0.1") -> None:
        self.maildir = mailbox.Maildir(str(maildir_path), create=True)
        self.host = host
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="demo-smtp", daemon=True)

    def start(self) -> int:
        self._thread.start()
        self._ready.wait(10)
        return self.port

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        server = loop.run_until_complete(asyncio.start_server(self._session, self.host, 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            loop.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def reply(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        await reply("220 demo-sink.example.test ESMTP tmsi demo")
        sender, recipients = "", list[str]()
        try:
            while line := await reader.readline():
                verb = line.decode("ascii", "replace").strip()
                upper = verb.upper()
                if upper.startswith("EHLO"):
                    await reply("250-demo-sink.example.test\r\n250-8BITMIME\r\n250 SMTPUTF8")
                elif upper.startswith("HELO"):
                    await reply("250 demo-sink.example.test")
                elif upper.startswith("MAIL FROM:"):
                    sender, recipients = verb[10:].strip(), []
                    await reply("250 OK")
                elif upper.startswith("RCPT TO:"):
                    recipients.append(verb[8:].strip())
                    await reply("250 OK")
                elif upper == "DATA":
                    await reply("354 end with <CRLF>.<CRLF>")
                    lines = []
                    while (data := await reader.readline()) not in (b".\r\n", b".\n", b""):
                        lines.append(data[1:] if data.startswith(b"..") else data)
                    head = f"X-Envelope-From: {sender}\r\nX-Envelope-To: {', '.join(recipients)}\r\n".encode()
                    self.maildir.add(head + b"".join(lines))
                    await reply("250 OK stored")
                elif upper in ("RSET", "NOOP"):
                    await reply("250 OK")
                elif upper == "QUIT":
                    await reply("221 bye")
                    break
                else:
                    await reply("502 not implemented")
        finally:
            writer.close()


def sample_messages() -> list[bytes]:
    return [eml.read_bytes() for eml in sorted((data_dir() / "mail").glob("*.eml"))]


def fill_configured_mailbox(settings: Settings) -> int:
    """Deliver the sample requests into the configured mailbox (Maildir, or IMAP APPEND)."""
    if settings.mailbox_kind == "maildir":
        return fill_mailbox(settings.maildir_path)
    if settings.mailbox_kind != "imap":
        raise ValueError("TMSI_MAILBOX_KIND is 'none': set it to maildir or imap first")
    from tmsi.adapters.mailbox import ImapMailbox

    mailbox_ = ImapMailbox.from_settings(settings)
    try:
        client = mailbox_.client
        messages = sample_messages()
        for raw in messages:
            client.append(settings.imap_source_folder, raw)
        return len(messages)
    finally:
        mailbox_.close()
