"""Helpers for the authority tests and bench: DKIM keys made with openssl, signed request mails, zone text."""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass
from email.utils import format_datetime
from pathlib import Path

import dkim

from tmsi.db import utcnow

OUR_MX = "mx.example.test"


@dataclass(frozen=True)
class DkimKey:
    selector: str
    domain: str
    private_pem: bytes
    public_b64: str

    @property
    def txt(self) -> str:
        return f"v=DKIM1; k=rsa; p={self.public_b64}"

    def zone_line(self, zone: str) -> str:
        """A master-file TXT line (strings of at most 255 characters) relative to ``zone``."""
        owner = f"{self.selector}._domainkey.{self.domain}".removesuffix("." + zone).removesuffix(zone)
        chunks = [self.txt[i : i + 200] for i in range(0, len(self.txt), 200)]
        return f"{owner or '@'} 300 IN TXT " + " ".join(f'"{c}"' for c in chunks) + "\n"


def make_key(directory: Path, selector: str, domain: str, bits: int = 2048) -> DkimKey:
    pem = directory / f"{selector}.{domain}.pem"
    subprocess.run(
        ["openssl", "genrsa", "-traditional", "-out", str(pem), str(bits)], check=True, capture_output=True
    )
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(pem), "-pubout", "-outform", "DER"], check=True, capture_output=True
    ).stdout
    return DkimKey(selector, domain, pem.read_bytes(), base64.b64encode(der).decode("ascii"))


def request_body(
    from_addr: str,
    *,
    from_name: str = "Network Operations",
    subject: str = "Please delist 192.0.2.7",
    body: str = "Hello,\r\n\r\nplease remove 192.0.2.7 from your list; its PTR now says static.\r\n",
    message_id: str = "<req-1@isp.example>",
) -> bytes:
    date = format_datetime(utcnow())
    return (
        f"From: {from_name} <{from_addr}>\r\n"
        f"To: dul@example.test\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {date}\r\n"
        f"Message-ID: {message_id}\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{body}"
    ).encode()


def sign(message: bytes, key: DkimKey) -> bytes:
    signature = dkim.sign(
        message,
        key.selector.encode(),
        key.domain.encode(),
        key.private_pem,
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    return signature + message


def received(
    client_ip: str, helo: str, *, by: str = OUR_MX, rdns: str | None = None, qid: str = "4Xq1"
) -> bytes:
    return (
        f"Received: from {helo} ({rdns or helo} [{client_ip}])\r\n"
        f"\tby {by} (Postfix) with ESMTPS id {qid}\r\n"
        f"\tfor <dul@example.test>; {format_datetime(utcnow())}\r\n"
    ).encode()


def delivered(
    message: bytes,
    *,
    client_ip: str,
    helo: str,
    mailfrom: str,
    our_results: str | None = None,
    above: bytes = b"",
) -> bytes:
    """``message`` as our mailbox holds it: Return-Path, our AR (if any), our Received, then the mail."""
    head = f"Return-Path: <{mailfrom}>\r\n".encode() + above
    if our_results is not None:
        head += f"Authentication-Results: {OUR_MX};\r\n\t{our_results}\r\n".encode()
    return head + received(client_ip, helo) + message
