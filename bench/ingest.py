"""Mail ingest end to end: N mixed messages from a real Dovecot through ``poll_once`` (fetch, store,
parse, extract, classify, thread, link to listings, acknowledgement in the outbox), on SQLite and
PostgreSQL; prints messages/s and the poller process's peak RSS.

Each (database, size) run is a fresh child process on a fresh Dovecot user and a fresh database, so
its peak RSS is its own: memory is flat when the 10,000-message peak matches the 2,000-message one.
The mail is written into the user's Maildir the way a local delivery agent does (faster to set up
than 10,000 APPENDs; Dovecot indexes it on the first SELECT). Usage:

    python -m bench.ingest [--db sqlite|postgresql|both] [--sizes 2000,10000]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

PG_BASE = os.environ.get("TMSI_BENCH_PG_BASE", "postgresql+psycopg://postgres@127.0.0.1:5432")
YEAR = time.gmtime().tm_year


# --- the mail ------------------------------------------------------------------------------------
def _doc_ip(rng: random.Random) -> str:
    net = rng.choice(("192.0.2", "198.51.100", "203.0.113"))
    return f"{net}.{rng.randrange(1, 255)}"


def _notation(rng: random.Random) -> str:
    ip = _doc_ip(rng)
    base, last = ip.rsplit(".", 1)
    kind = rng.random()
    if kind < 0.55:
        return ip
    if kind < 0.7:
        return f"{base}.{int(last) & ~15}/28"
    if kind < 0.8:
        low = min(int(last), 200)
        return f"{base}.{low}-{low + rng.randrange(1, 40)}"
    if kind < 0.88:
        return f"{base}.*"
    if kind < 0.95:
        return f"2001:db8:{rng.randrange(1, 0xFFFF):x}::{rng.randrange(1, 0xFFFF):x}"
    return ".".join(reversed(ip.split("."))) + ".dul.example.test"


BODY_FILLER = (
    "Our customer runs a small business mail server behind this address. The reverse DNS has been\n"
    "changed so that it clearly indicates a static assignment, and the forward record matches.\n"
)


def make_message(i: int, rng: random.Random, tag: str) -> bytes:
    """One of a realistic mix: requests (many notations, charsets, HTML), replies, auto-replies,
    mailing lists, ticket acknowledgements, bounces, spam and a little malformed mail."""
    roll = rng.random()
    domain = f"isp{i % 700}.example"
    msg = EmailMessage()
    msg["To"] = "dul@example.test"
    msg["Date"] = format_datetime(datetime.fromtimestamp(1_795_000_000 + i, UTC))
    msg["Message-ID"] = make_msgid(idstring=f"{tag}.{i}", domain=f"mail.{domain}")
    msg["Authentication-Results"] = (
        f"mx.example.test; dmarc={'pass' if roll < 0.9 else 'none'} header.from={domain}"
    )
    if roll < 0.02:
        return b"\x00\x01garbage that is not mail " + os.urandom(64) + b"\x00" * 40
    if roll < 0.62:  # new requests
        targets = [_notation(rng) for _ in range(rng.choice((1, 1, 1, 2, 3)))]
        msg["From"] = f"NOC {i % 700} <noc{i % 50}@{domain}>"
        msg["Subject"] = f"Delisting request {targets[0]}"
        filler = BODY_FILLER * rng.randrange(1, 6)
        text = f"Hello,\n\nplease remove {', '.join(targets)} from the DUL.\n{filler}\nNOC\n"
        charset = rng.choice(("utf-8", "utf-8", "iso-8859-1", "koi8-r"))
        if rng.random() < 0.15:
            msg.set_content(text)
            msg.add_alternative(
                f"<html><body><p>{text.replace(chr(10), '<br>')}</p></body></html>", subtype="html"
            )
        else:
            msg.set_content(text + ("Grüße\n" if charset != "koi8-r" else "Спасибо\n"), charset=charset)
        return msg.as_bytes()
    if roll < 0.74:  # replies to earlier cases
        msg["From"] = f"NOC <noc{i % 50}@{domain}>"
        ref = f"TMSI-{YEAR}-{max(1, rng.randrange(1, max(2, i // 2))):06d}"
        msg["Subject"] = f"Re: Delisting request [{ref}]"
        msg.set_content(f"We fixed the PTR for {_doc_ip(rng)} as well.\n\n> earlier text\n> {BODY_FILLER}")
        return msg.as_bytes()
    if roll < 0.82:
        msg["From"] = f"hostmaster@{domain}"
        msg["Subject"] = "Automatic reply: Delisting request"
        msg["Auto-Submitted"] = "auto-replied"
        msg.set_content("I am out of the office until Monday.")
        return msg.as_bytes()
    if roll < 0.87:
        msg["From"] = "announce@lists.example"
        msg["Subject"] = "[ops] weekly maintenance"
        msg["List-Id"] = "<ops.lists.example>"
        msg["Precedence"] = "list"
        msg.set_content("Maintenance window on Sunday.\n" + BODY_FILLER)
        return msg.as_bytes()
    if roll < 0.92:
        msg["From"] = f"support@{domain}"
        msg["Subject"] = f"[Ticket#{2026000000 + i}] Your request has been received"
        msg["X-OTRS-Ticket"] = str(2026000000 + i)
        msg.set_content("Your request has been received and logged.")
        return msg.as_bytes()
    if roll < 0.96:
        boundary = f"b{i}"
        return (
            f"From: MAILER-DAEMON@mx.{domain}\r\nTo: dul@example.test\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\n"
            f"Message-ID: <dsn.{tag}.{i}@mx.{domain}>\r\nMIME-Version: 1.0\r\n"
            f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n\r\n'
            f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n"
            f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
            f"Reporting-MTA: dns; mx.{domain}\r\n\r\n"
            f"Final-Recipient: rfc822; noc@{domain}\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
            f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            f"Message-ID: <tmsi.{i}@example.test>\r\n"
            f"\r\n--{boundary}--\r\n"
        ).encode()
    msg["From"] = f"deals@promo{i % 30}.example"
    msg["Subject"] = "Best prices this week"
    msg.set_content("Buy now! " * 40)
    return msg.as_bytes()


def fill_maildir(maildir: Path, count: int, tag: str, seed: int = 11) -> int:
    rng = random.Random(seed)
    new = maildir / "new"
    total = 0
    for i in range(count):
        raw = make_message(i, rng, tag)
        total += len(raw)
        (new / f"{1_795_000_000 + i}.M{i}P1.bench").write_bytes(raw)
    subprocess.run(["chown", "-R", "dovecot:dovecot", str(maildir)], check=True)
    return total


# --- one run, in a child process ---------------------------------------------------------------
def bench_settings(url: str, **extra: Any) -> Any:
    """The settings of the poller and the workers: our mailbox, zone and MTA on documentation names."""
    from tmsi.config import Settings

    return Settings(
        database_url=url,
        mailbox_address="dul@example.test",
        mail_domain="example.test",
        dnsbl_zone="dul.example.test",
        own_networks=["192.0.2.0/28"],
        authserv_ids=["mx.example.test"],
        _env_file=None,
        **extra,
    )


def child(args: argparse.Namespace) -> None:
    from tmsi.adapters.mailbox import ImapMailbox
    from tmsi.db import make_engine, make_sessionmaker
    from tmsi.services.poller import poll_once

    settings = bench_settings(
        args.url, imap_batch_size=200, ingest_defer=args.defer > 0, ingest_parse_workers=args.parse_workers
    )
    factory = make_sessionmaker(make_engine(args.url))
    box = ImapMailbox(host="127.0.0.1", port=args.port, user=args.user, password="pw", tls="none")
    box.select("INBOX")
    rss_start = current_rss_kib()
    # ru_maxrss cannot show growth below an earlier peak (imports), so also sample VmRSS while polling.
    samples = [rss_start]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            samples.append(current_rss_kib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    cpu_started = time.process_time()
    report = poll_once(settings, factory, box)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    done.set()
    sampler.join()
    box.close()
    handled = report.processed + report.quarantined + report.duplicates + report.stored
    extra: dict[str, float] = {}
    if args.defer:
        # The workers, as separate processes, process what the poller stored (in production they overlap
        # with polling; measured here one after the other).
        poll_seconds = elapsed
        work_started = time.perf_counter()
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.ingest", "--work", "--url", args.url], stdout=subprocess.PIPE
            )
            for _ in range(args.defer)
        ]
        outputs = [json.loads(w.communicate()[0].decode().strip().splitlines()[-1]) for w in workers]
        work_seconds = time.perf_counter() - work_started
        elapsed = poll_seconds + work_seconds
        extra = {
            "poll_seconds": round(poll_seconds, 2),
            "poll_per_second": round(handled / poll_seconds, 1),
            "workers": args.defer,
            "work_seconds": round(work_seconds, 2),
        }
        report.new_cases = sum(o["new_cases"] for o in outputs)
        report.replies = sum(o["replies"] for o in outputs)
        report.quarantined += sum(o["quarantined"] for o in outputs)
    print(
        json.dumps(
            {
                **extra,
                "seen": report.seen,
                "handled": handled,
                "new_cases": report.new_cases,
                "replies": report.replies,
                "quarantined": report.quarantined,
                "errors": len(report.errors),
                "seconds": round(elapsed, 2),
                "per_second": round(handled / elapsed, 1),
                "cpu_ms_per_message": round(1000 * cpu / max(handled, 1), 2),
                "rss_at_start_mib": round(rss_start / 1024, 1),
                "rss_max_while_polling_mib": round(max(samples) / 1024, 1),
                "peak_rss_mib": round(current_rss_kib("VmHWM") / 1024, 1),
                "poll_seconds_by_phase": report.seconds,
            }
        )
    )


def work(args: argparse.Namespace) -> None:
    """One worker process: process stored messages until none is left."""
    from tmsi.db import make_engine, make_sessionmaker
    from tmsi.services.ingest import process_stored_batch

    settings = bench_settings(args.url)
    report = process_stored_batch(settings, make_sessionmaker(make_engine(args.url)), limit=10**9)
    print(json.dumps(report.as_dict()))


def current_rss_kib(field: str = "VmRSS") -> int:
    """VmRSS (now) or VmHWM (peak) of this process. Not ru_maxrss: Linux carries that over from the
    forking parent across exec, so a child would report the parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return 0


# --- orchestration -------------------------------------------------------------------------------
def prepare_db(kind: str, name: str) -> tuple[str, object]:
    from sqlalchemy import text

    from tmsi.cli.db import upgrade
    from tmsi.db import make_engine

    if kind == "sqlite":
        url = f"sqlite:///{tempfile.mkdtemp(prefix='tmsi-bench-')}/ingest.db"
        cleanup: object = None
    else:
        admin = make_engine(f"{PG_BASE}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = f"{PG_BASE}/{name}"
        cleanup = admin
    upgrade(url)
    seed_listings(url)
    return url, cleanup


def seed_listings(url: str) -> None:
    """A listings store the requests link against: the documentation /24s split into /28s."""
    from tmsi.db import make_engine, make_sessionmaker, unit_of_work
    from tmsi.domain.listfile import Entry
    from tmsi.services.listings import import_entries

    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for base in ("198.51.100.0/24", "203.0.113.0/24"):
        nets += list(ipaddress.ip_network(base).subnets(new_prefix=28))
    with unit_of_work(make_sessionmaker(make_engine(url))) as session:
        import_entries(
            session, [Entry(network=n, reason="dynamic", line=0, listed_at=None) for n in nets[::2]]
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--sizes", default="2000,10000")
    parser.add_argument(
        "--defer",
        type=int,
        default=0,
        metavar="N",
        help="TMSI_INGEST_DEFER: the poller only stores; then N worker processes process the stored mail",
    )
    parser.add_argument(
        "--parse-workers",
        type=int,
        default=1,
        metavar="N",
        help="TMSI_INGEST_PARSE_WORKERS: processes that parse the next batch while the poller stores one",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--user", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.work:
        work(args)
        return

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.services.dovecot import dovecot_server

    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with dovecot_server() as dovecot:
        for kind in kinds:
            for size in sizes:
                user = f"bench-{kind}-{size}-{uuid.uuid4().hex[:6]}@example.test"
                dovecot.add_user(user, "pw")
                deadline = time.monotonic() + 30
                while True:  # Dovecot notices the new passwd-file entry after a moment
                    try:
                        client = dovecot.client(user, "pw")
                        break
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.3)
                client.select_folder("INBOX")  # creates the Maildir
                client.logout()
                maildir = dovecot.directory / "mail" / user / "Maildir"
                mail_bytes = fill_maildir(maildir, size, uuid.uuid4().hex[:8])
                name = f"tmsi_bench_ingest_{uuid.uuid4().hex[:8]}"
                url, admin = prepare_db(kind, name)
                out = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bench.ingest",
                        "--child",
                        "--url",
                        url,
                        "--port",
                        str(dovecot.port),
                        "--user",
                        user,
                        "--defer",
                        str(args.defer),
                        "--parse-workers",
                        str(args.parse_workers),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                    cwd=Path(__file__).resolve().parents[1],
                )
                result = json.loads(out.stdout.strip().splitlines()[-1])
                label = f"{kind} (deferred, {args.defer} worker(s))" if args.defer else kind
                result.update({"db": label, "messages": size, "mail_mib": round(mail_bytes / 2**20, 1)})
                rows.append(result)
                print(json.dumps(result), flush=True)
                if kind == "sqlite":
                    shutil.rmtree(Path(url.split("///", 1)[1]).parent, ignore_errors=True)
                elif admin is not None:
                    from sqlalchemy import text

                    with admin.connect() as conn:  # type: ignore[attr-defined]
                        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print()
    print(
        "| database | messages | mail MiB | seconds | messages/s | CPU ms/message | new cases | acks | "
        "quarantined | RSS at start MiB | max RSS while polling MiB | peak RSS (VmHWM) MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['db']} | {r['messages']} | {r['mail_mib']} | {r['seconds']} | {r['per_second']} | "
            f"{r['cpu_ms_per_message']} | {r['new_cases']} | {r['replies']} | {r['quarantined']} | "
            f"{r['rss_at_start_mib']} | {r['rss_max_while_polling_mib']} | {r['peak_rss_mib']} |"
        )


if __name__ == "__main__":
    main()
