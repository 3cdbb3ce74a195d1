"""Realistic test mail for the ingest tests (documentation addresses and .test/.example domains only)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

_seq = itertools.count(1)


def request(
    ip: str = "203.0.113.7",
    *,
    sender: str = "noc@isp.example",
    name: str = "ISP Example NOC",
    subject: str | None = None,
    body: str | None = None,
    message_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    n = next(_seq)
    msg = EmailMessage()
    msg["From"] = f"{name} <{sender}>"
    msg["To"] = "dul@example.test"
    msg["Subject"] = subject if subject is not None else f"Delisting request for {ip}"
    msg["Date"] = format_datetime(datetime(2026, 11, 29, 10, 0, n % 60, tzinfo=UTC))
    msg["Message-ID"] = message_id or make_msgid(idstring=f"req{n}", domain="mail.isp.example")
    msg["Authentication-Results"] = "mx.example.test; dmarc=pass header.from=isp.example"
    for key, value in (headers or {}).items():
        msg[key] = value
    msg.set_content(
        body
        if body is not None
        else (
            "Hello,\n\nour customer's mail server is blocked by your Dynamic User List.\n"
            f"We have set a static reverse DNS for {ip}: static-{ip.replace('.', '-')}.isp.example.\n"
            "Please remove it from the list.\n\nRegards,\nNOC, ISP Example\n"
        )
    )
    return msg.as_bytes()


def reply_to(original: bytes, *, subject: str, body: str, sender: str = "noc@isp.example") -> bytes:
    """A person's reply to one of our mails: In-Reply-To/References only (the subject may lack the ref)."""
    import email
    from email import policy

    parent = email.message_from_bytes(original, policy=policy.default)
    msg = EmailMessage()
    msg["From"] = f"ISP Example NOC <{sender}>"
    msg["To"] = "dul@example.test"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC))
    msg["Message-ID"] = make_msgid(idstring=f"re{next(_seq)}", domain="mail.isp.example")
    msg["In-Reply-To"] = parent["Message-ID"]
    refs = str(parent.get("References", "")).split()
    msg["References"] = " ".join([*refs, str(parent["Message-ID"])])
    msg["Authentication-Results"] = "mx.example.test; dmarc=pass header.from=isp.example"
    msg.set_content(body)
    return msg.as_bytes()


def auto_reply(to_subject: str = "Re: your message") -> bytes:
    msg = EmailMessage()
    msg["From"] = "hostmaster@isp.example"
    msg["To"] = "dul@example.test"
    msg["Subject"] = f"Out of office: {to_subject}"
    msg["Auto-Submitted"] = "auto-replied"
    msg["Message-ID"] = make_msgid(idstring=f"ooo{next(_seq)}", domain="isp.example")
    msg.set_content("I am out of the office until Monday. For 203.0.113.9 please ask the NOC.")
    return msg.as_bytes()


def mailing_list() -> bytes:
    msg = EmailMessage()
    msg["From"] = "announce@lists.example"
    msg["To"] = "dul@example.test"
    msg["Subject"] = "[ops-announce] maintenance 198.51.100.0/24"
    msg["List-Id"] = "<ops-announce.lists.example>"
    msg["Precedence"] = "list"
    msg["Message-ID"] = make_msgid(idstring=f"list{next(_seq)}", domain="lists.example")
    msg.set_content("Maintenance on 198.51.100.0/24 tonight.")
    return msg.as_bytes()


def ticket_ack(ref: str = "") -> bytes:
    msg = EmailMessage()
    msg["From"] = "support@isp.example"
    msg["To"] = "dul@example.test"
    msg["Subject"] = f"[Ticket#2026112910000123] Your request has been received {ref}".strip()
    msg["X-OTRS-Ticket"] = "2026112910000123"
    msg["Message-ID"] = make_msgid(idstring=f"otrs{next(_seq)}", domain="isp.example")
    msg.set_content("Your request has been received and logged as ticket 2026112910000123.")
    return msg.as_bytes()


def bounce_of(original: bytes, recipient: str = "noc@isp.example") -> bytes:
    """A multipart/report DSN from MAILER-DAEMON carrying the headers of ``original``."""
    head = original.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0].decode("ascii", "replace")
    boundary = f"dsn-boundary-{next(_seq)}"
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.test>\r\n"
        "To: dul@example.test\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <dsn{next(_seq)}@mx.example.test>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n"
        f"I'm sorry to have to inform you that your message could not be delivered to {recipient}.\r\n\r\n"
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.test\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n"
        f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n{head.strip()}\r\n\r\n"
        f"--{boundary}--\r\n"
    ).encode()


def malformed() -> bytes:
    return b"\x00\x01\x02 this is not a mail message at all \x00\x00" * 50


def large_request(size: int = 20 * 1024 * 1024, ip: str = "198.51.100.77") -> bytes:
    """A request with a binary attachment of about ``size`` bytes (base64 in the message)."""
    import os

    msg = EmailMessage()
    msg["From"] = "ISP Example NOC <noc@isp.example>"
    msg["To"] = "dul@example.test"
    msg["Subject"] = f"Delist {ip} (logs attached)"
    msg["Message-ID"] = make_msgid(idstring=f"big{next(_seq)}", domain="mail.isp.example")
    msg.set_content(f"Please delist {ip}; the PTR is now mail.isp.example. Logs attached.")
    msg.add_attachment(
        os.urandom(size * 3 // 4), maintype="application", subtype="octet-stream", filename="logs.bin"
    )
    return msg.as_bytes()
