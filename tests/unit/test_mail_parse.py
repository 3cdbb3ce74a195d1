"""parse_message / dedupe_key: charsets, headers, HTML, attachments, nesting, malformed MIME, size."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from datetime import UTC, datetime
from email.header import Header
from pathlib import Path

import pytest

from tmsi.domain.mail import (
    MailParseError,
    decode_bytes,
    decode_header_value,
    dedupe_key,
    html_to_text,
    message_ids,
    normalize_message_id,
    parse_message,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mail"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def simple(
    body: bytes, *, headers: str = "", ctype: str = "text/plain; charset=utf-8", cte: str = "8bit"
) -> bytes:
    head = (
        "From: NOC <noc@isp.example>\r\nTo: dul@example.test\r\nSubject: test\r\n"
        "Message-ID: <t1@isp.example>\r\nDate: Tue, 12 May 2026 09:00:00 +0000\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: {cte}\r\n{headers}\r\n"
    )
    return head.encode("ascii") + body


# --- headers -----------------------------------------------------------------------------------------


def test_plain_request_headers_are_decoded() -> None:
    parsed = parse_message(fixture("request_utf8_plain.eml"))
    assert parsed.message_id == "<20260512091358.GA1234@noc.isp.example>"
    assert parsed.from_addr == "noc@isp.example"
    assert parsed.from_name == "Example ISP NOC"
    assert parsed.to_addrs == ["dul@example.test"]
    assert parsed.subject == "Delisting request for 203.0.113.7 and 198.51.100.0/26"
    assert parsed.date == datetime(2026, 5, 12, 9, 13, 58, tzinfo=UTC)
    assert parsed.return_path == "noc@isp.example"
    assert "Jörg Müller — Example ISP" in parsed.text
    assert parsed.content_hash == hashlib.sha256(fixture("request_utf8_plain.eml")).hexdigest()
    assert parsed.headers[0] == ("Return-Path", "<noc@isp.example>")
    assert parsed.header("delivered-to") == "dul@example.test"
    assert len(parsed.header_all("received")) == 1


def test_rfc2047_subject_and_name_gb2312() -> None:
    parsed = parse_message(fixture("request_gb2312.eml"))
    assert parsed.subject == "申请解除封锁 203.0.113.45"
    assert parsed.from_name == "网络运维中心"


def test_rfc2047_words_split_inside_a_multibyte_character_are_joined() -> None:
    raw = "申请解除".encode("gbk")
    first, second = base64.b64encode(raw[:3]).decode(), base64.b64encode(raw[3:]).decode()
    value = f"=?gb2312?B?{first}?= =?gb2312?B?{second}?= 203.0.113.7"
    assert decode_header_value(value) == "申请解除 203.0.113.7"


def test_rfc2047_q_encoding_and_mixed_text() -> None:
    assert decode_header_value("Re: =?utf-8?q?Mail_abgelehnt_f=C3=BCr?= 203.0.113.177") == (
        "Re: Mail abgelehnt für 203.0.113.177"
    )


def test_rfc2047_with_wrong_declared_charset_uses_superset() -> None:
    # 喆 exists in GBK but not in GB2312; mailers label GBK text gb2312 all the time.
    encoded = Header("王喆", "gbk").encode().replace("gbk", "gb2312")
    assert decode_header_value(encoded) == "王喆"


@pytest.mark.parametrize(
    ("name", "subject", "from_name"),
    [
        ("request_big5.eml", "解除封鎖申請", "網路維運部"),
        ("request_iso2022jp.eml", "リスト削除のお願い", "ネットワーク運用センター"),
        ("request_koi8r.eml", "Просьба исключить адреса из списка", "Отдел эксплуатации"),
        ("request_cp1252.eml", "Bitte um Entfernung \u2013 198.51.100.*", "Netzbetrieb Müller"),
    ],
)
def test_encoded_headers_in_the_charset_zoo(name: str, subject: str, from_name: str) -> None:
    parsed = parse_message(fixture(name))
    assert parsed.subject == subject
    assert parsed.from_name == from_name


def test_unencoded_8bit_headers_are_decoded() -> None:
    parsed = parse_message(fixture("request_undeclared_8bit.eml"))
    assert parsed.subject == "Retrait de la liste — 203.0.113.88"
    assert parsed.from_name == "Équipe Réseau"
    assert parsed.from_addr == "reseau@isp-fr.example"


def test_message_id_normalization() -> None:
    assert normalize_message_id("  <abc@x.example> (comment)") == "<abc@x.example>"
    assert normalize_message_id("abc@x.example") == "<abc@x.example>"
    assert normalize_message_id("") == ""
    assert message_ids("<a@x> <b@y>\r\n <a@x>") == ["<a@x>", "<b@y>"]


def test_references_and_in_reply_to() -> None:
    parsed = parse_message(fixture("reply_with_ref.eml"))
    assert parsed.in_reply_to == "<ack.000123.1747555200@example.test>"
    assert parsed.references == [
        "<20260512091358.GA1234@noc.isp.example>",
        "<ack.000123.1747555200@example.test>",
    ]


def test_auto_submitted_and_null_return_path() -> None:
    assert parse_message(fixture("auto_reply_rfc3834.eml")).auto_submitted == "auto-replied"
    bounce = parse_message(fixture("bounce_dsn.eml"))
    assert bounce.return_path == ""
    assert parse_message(fixture("missing_headers.eml")).return_path is None


# --- body charsets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("request_gb2312.eml", "联系人\uff1a王喆"),  # GBK-only character under a gb2312 label
        ("request_big5.eml", "請協助解除封鎖"),
        ("request_iso2022jp.eml", "リストからの削除をお願いいたします"),
        ("request_koi8r.eml", "Просим исключить их из списка DUL"),
        ("request_cp1252.eml", "„Business-Anschlüsse“"),
        ("request_undeclared_8bit.eml", "L'adresse 203.0.113.88 est une IP fixe attribuée"),
        ("request_wrong_charset_latin1.eml", "Dzień dobry"),  # says latin-1, is UTF-8
        (
            "request_wrong_charset_utf8.eml",
            "dirección 198.51.100.99 es una IP estática",
        ),  # says UTF-8, is 1252
    ],
)
def test_body_charset_zoo(name: str, needle: str) -> None:
    parsed = parse_message(fixture(name))
    assert needle in parsed.text
    assert "\ufffd" not in parsed.text


@pytest.mark.parametrize(
    ("data", "declared", "expected"),
    [
        (b"plain", None, "plain"),
        ("Grüße".encode(), None, "Grüße"),
        ("Grüße".encode("cp1252"), None, "Grüße"),
        ("Grüße".encode(), "iso-8859-1", "Grüße"),
        ("€uro".encode("cp1252"), "iso-8859-1", "€uro"),
        ("王喆".encode("gbk"), "gb2312", "王喆"),
        ("Привет".encode("koi8_r"), "koi8-r", "Привет"),
        ("Привет".encode("koi8_r"), "x-unknown-charset", None),
        ("日本語".encode("iso2022_jp"), "iso-2022-jp", "日本語"),
        (b"test", 'utf-8"', "test"),
    ],
)
def test_decode_bytes_fallbacks(data: bytes, declared: str | None, expected: str | None) -> None:
    text, _charset = decode_bytes(data, declared)
    if expected is None:
        assert text  # unknown label: detection still yields text
        assert "\ufffd" not in text
    else:
        assert text == expected


def test_decode_bytes_never_raises_on_garbage() -> None:
    text, charset = decode_bytes(bytes(range(128, 256)) * 3, "utf-8")
    assert isinstance(text, str) and text
    assert charset


# --- HTML ------------------------------------------------------------------------------------------


def test_html_only_mail_is_converted_to_text() -> None:
    parsed = parse_message(fixture("request_html_only.eml"))
    assert parsed.html.startswith("<html>")
    assert "203.0.113.130 srv130.static.isp-html.example" in parsed.text
    assert "Dear DUL team," in parsed.text  # &nbsp; decoded
    assert "192.0.2.201" not in parsed.text  # script
    assert "10.9.8.7" not in parsed.text  # style
    assert "Please delist them \u2013 thank you." in parsed.text


def test_html_to_text_keeps_wildcards_and_ranges_literal() -> None:
    text = html_to_text("<p>Ranges: <b>203.0.113.*</b> and 198.51.100.10-20</p><br>next")
    assert "203.0.113.*" in text
    assert "198.51.100.10-20" in text
    assert text.splitlines()[-1] == "next"


def test_html_charset_from_meta_when_the_header_has_none() -> None:
    body = '<html><head><meta charset="koi8-r"></head><body>Привет 203.0.113.5</body></html>'.encode("koi8_r")
    parsed = parse_message(simple(body, ctype="text/html"))
    assert "Привет 203.0.113.5" in parsed.text


# --- attachments, nesting ----------------------------------------------------------------------------


def test_text_attachments_are_scanned_and_binary_ones_only_hashed() -> None:
    parsed = parse_message(fixture("attachments_csv_txt.eml"))
    by_name = {a.filename: a for a in parsed.attachments}
    assert set(by_name) == {"static-ips.csv", "more.txt", "contract.pdf"}
    assert by_name["static-ips.csv"].scanned and by_name["more.txt"].scanned
    assert not by_name["contract.pdf"].scanned
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
    assert by_name["contract.pdf"].size == len(pdf)
    assert by_name["contract.pdf"].sha256 == hashlib.sha256(pdf).hexdigest()
    assert by_name["contract.pdf"].content_type == "application/pdf"
    assert "203.0.113.200,static-200.biz.isp.example" in parsed.text
    assert "198.51.100.128/27" in parsed.text
    assert "%PDF" not in parsed.text


def test_nested_message_rfc822_body_and_subject_are_text() -> None:
    parsed = parse_message(fixture("nested_rfc822.eml"))
    assert "Subject: Mail abgelehnt für 203.0.113.177" in parsed.text
    assert "Client host [203.0.113.177] blocked" in parsed.text
    assert parsed.subject == "Fwd: blocked mail from our customer"
    assert parsed.from_addr == "noc@isp.example"  # the outer sender, not the nested one
    (forwarded,) = parsed.attachments
    assert (forwarded.filename, forwarded.content_type, forwarded.scanned) == (
        "rejected.eml",
        "message/rfc822",
        True,
    )
    assert forwarded.size > 100 and len(forwarded.sha256) == 64


def test_delivery_status_report_is_parsed() -> None:
    parsed = parse_message(fixture("bounce_dsn.eml"))
    assert parsed.content_type == "multipart/report"
    assert parsed.report_type == "delivery-status"
    assert parsed.delivery_status[0]["action"] == "failed"
    assert parsed.delivery_status[0]["status"] == "5.1.1"
    assert parsed.delivery_status[0]["original-envelope-id"] == "<ack.000126.1747735000@example.test>"
    assert ("Message-ID", "<ack.000126.1747735000@example.test>") in parsed.returned_headers


def test_dsn_with_a_full_returned_message() -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.isp.example\r\nTo: dul@example.test\r\nSubject: Undeliverable\r\n"
        b"Return-Path: <>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.isp.example\r\n\r\n"
        b"Final-Recipient: rfc822; x@isp.example\r\nAction: failed\r\nStatus: 5.0.0\r\n\r\n"
        b"--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: dul@example.test\r\n"
        b"Message-ID: <ack.9@example.test>\r\nSubject: [TMSI-2026-000009] ack\r\n\r\n"
        b"body 203.0.113.9\r\n--b--\r\n"
    )
    parsed = parse_message(raw)
    assert ("Message-ID", "<ack.9@example.test>") in parsed.returned_headers
    assert parsed.delivery_status == [
        {"final-recipient": "rfc822; x@isp.example", "action": "failed", "status": "5.0.0"}
    ]


# --- malformed ----------------------------------------------------------------------------------------


def test_broken_boundaries_still_yield_the_text() -> None:
    parsed = parse_message(fixture("malformed_boundary.eml"))
    assert "Please delist 198.51.100.201" in parsed.text
    assert parsed.defects  # the parser noticed


def test_missing_headers_are_tolerated() -> None:
    parsed = parse_message(fixture("missing_headers.eml"))
    assert parsed.message_id == ""
    assert parsed.from_addr == ""
    assert parsed.date is None
    assert "plz remove 203.0.113.241" in parsed.text


def test_broken_base64_and_bad_date_do_not_raise() -> None:
    raw = simple(b"SGVsbG8gMjAzLjAuMTEzLjU=!!!garbage***", cte="base64", headers="X-Date-Bad: x\r\n")
    raw = raw.replace(b"Date: Tue, 12 May 2026 09:00:00 +0000", b"Date: the 32nd of Nevermber")
    parsed = parse_message(raw)
    assert parsed.date is None
    assert "Hello 203.0.113.5" in parsed.text


def test_malformed_address_headers_do_not_raise() -> None:
    raw = simple(b"hi", headers='Cc: "unterminated <a@b\r\nReply-To: @@@,,<>\r\n')
    parsed = parse_message(raw)
    assert parsed.from_addr == "noc@isp.example"


def test_lf_only_line_ends_and_mbox_from_line() -> None:
    raw = (
        b"From noc@isp.example Tue May 12 09:00:00 2026\n"
        b"From: noc@isp.example\nSubject: hi\n\nbody 203.0.113.4\n"
    )
    parsed = parse_message(raw)
    assert parsed.subject == "hi"
    assert "203.0.113.4" in parsed.text


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b"   \r\n\r\n", "empty"),
        (b"\x00\xff\x13\x37" * 100, "no header block"),
        (b"just some words without any header\r\n", "no header block"),
    ],
)
def test_unparseable_mail_raises_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(MailParseError) as exc_info:
        parse_message(raw)
    assert reason in exc_info.value.reason


def test_garbage_fixture_is_unparseable() -> None:
    with pytest.raises(MailParseError):
        parse_message(fixture("garbage.eml"))


def test_max_bytes_limit() -> None:
    with pytest.raises(MailParseError, match="larger than"):
        parse_message(simple(b"x" * 5000), max_bytes=1024)


def test_every_fixture_but_garbage_parses() -> None:
    for path in sorted(FIXTURES.glob("*.eml")):
        if path.name == "garbage.eml":
            continue
        parsed = parse_message(path.read_bytes())
        assert parsed.text or parsed.attachments, path.name


# --- dedupe ----------------------------------------------------------------------------------------


def test_dedupe_key_is_stable_across_redelivery() -> None:
    raw = fixture("request_utf8_plain.eml")
    redelivered = (
        b"Return-Path: <noc@isp.example>\r\nDelivered-To: dul-alias@example.test\r\n"
        b"X-Original-To: dul-alias@example.test\r\n"
        b"Received: from relay2.example.test by mx2.example.test; Wed, 13 May 2026 00:00:00 +0000\r\n"
        + raw.split(b"\r\n", 2)[2]
    )
    first, second = parse_message(raw), parse_message(redelivered)
    assert first.content_hash != second.content_hash
    assert dedupe_key(first) == dedupe_key(second)
    assert dedupe_key(first).startswith("<20260512091358.GA1234@noc.isp.example>|")
    assert len(dedupe_key(first)) <= 255


def test_dedupe_key_differs_when_the_content_differs() -> None:
    raw = fixture("request_utf8_plain.eml")
    changed = raw.replace(b"Please remove them", b"Please delist them")
    assert dedupe_key(parse_message(raw)) != dedupe_key(parse_message(changed))


def test_dedupe_key_without_message_id_is_the_raw_hash() -> None:
    parsed = parse_message(fixture("missing_headers.eml"))
    assert dedupe_key(parsed) == f"raw:{parsed.content_hash}"


def test_dedupe_key_with_a_huge_message_id_stays_short() -> None:
    raw = simple(b"x").replace(b"<t1@isp.example>", b"<" + b"a" * 900 + b"@isp.example>")
    key = dedupe_key(parse_message(raw))
    assert len(key) <= 255
    assert key.startswith("sha256:")


# --- size ---------------------------------------------------------------------------------------------


def _big_message(payload: bytes, *, text_attachment: bytes = b"") -> bytes:
    parts = [
        b"From: NOC <noc@isp.example>\r\nTo: dul@example.test\r\nSubject: big\r\n"
        b"Message-ID: <big@isp.example>\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nplease delist 203.0.113.9\r\n",
        b"--b\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename=big.bin\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(payload).replace(b"\n", b"\r\n"),
    ]
    if text_attachment:
        parts.append(
            b"--b\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename=list.csv\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(text_attachment).replace(b"\n", b"\r\n")
        )
    parts.append(b"--b--\r\n")
    return b"".join(parts)


def test_20_mb_attachment_is_hashed_fast_and_not_decoded_as_text() -> None:
    payload = os.urandom(20 * 1024 * 1024)
    raw = _big_message(payload)
    started = time.perf_counter()
    parsed = parse_message(raw)
    elapsed = time.perf_counter() - started
    assert elapsed < 10, f"parsing a 20 MB message took {elapsed:.1f}s"
    (attachment,) = parsed.attachments
    assert attachment.size == len(payload)
    assert attachment.sha256 == hashlib.sha256(payload).hexdigest()
    assert not attachment.scanned
    assert parsed.text == "please delist 203.0.113.9"
    assert parsed.content_hash == hashlib.sha256(raw).hexdigest()


def test_large_base64_text_attachment_is_still_scanned() -> None:
    rows = "".join(f"customer{i},198.51.100.{i % 200 + 1}\n" for i in range(60000)).encode()
    raw = _big_message(os.urandom(2 * 1024 * 1024), text_attachment=rows)
    parsed = parse_message(raw)
    csv = next(a for a in parsed.attachments if a.filename == "list.csv")
    assert csv.scanned and csv.size == len(rows)
    assert csv.sha256 == hashlib.sha256(rows).hexdigest()
    assert "customer59999,198.51.100." in parsed.text


def test_long_runs_of_plain_lines_in_a_7bit_part_are_kept_verbatim() -> None:
    lines = "".join(f"{hashlib.sha256(str(i).encode()).hexdigest()}\r\n" for i in range(40000))
    raw = simple(lines.encode() + b"203.0.113.77\r\n", cte="7bit")
    parsed = parse_message(raw)
    assert parsed.text.startswith(hashlib.sha256(b"0").hexdigest())
    assert parsed.text.rstrip().endswith("203.0.113.77")


# --- robustness ---------------------------------------------------------------------------------------

MUTATIONS = [
    b'Content-Type: multipart/mixed; boundary="',
    b"--",
    b"\r\n",
    b"=?utf-8?b?",
    b"?=",
    b"(",
    b"<",
    b";",
    b"\xff\xfe",
    b"Content-Transfer-Encoding: base64\r\n",
    b"message/rfc822",
    b"filename*=''",
    b"\x00",
]


def test_mutated_fixtures_raise_only_mail_parse_error() -> None:
    import random

    rng = random.Random(20260512)
    fixtures = [p.read_bytes() for p in sorted(FIXTURES.glob("*.eml"))]
    for _ in range(400):
        data = bytearray(rng.choice(fixtures))
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(data) + 1)
            roll = rng.random()
            if roll < 0.4:
                data[pos:pos] = rng.choice(MUTATIONS)
            elif roll < 0.7:
                del data[pos : pos + rng.randint(1, 20)]
            else:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 5)))
        try:
            parsed = parse_message(bytes(data))
        except MailParseError:
            continue
        assert isinstance(parsed.text, str)
        assert len(dedupe_key(parsed)) <= 255


def _alternative(plain: str, html: str) -> bytes:
    return (
        "From: noc@isp.example\r\nTo: dul@example.test\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n'
        f"--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{plain}\r\n"
        f"--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n--alt--\r\n"
    ).encode()


def test_html_twin_of_a_plain_part_is_not_read_twice() -> None:
    parsed = parse_message(
        _alternative(
            "Please delist 203.0.113.7, the PTR is static now.",
            "<p>Please delist <b>203.0.113.7</b>, static.</p>",
        )
    )
    assert parsed.text == "Please delist 203.0.113.7, the PTR is static now."
    assert parsed.html.startswith("<p>Please delist")


def test_stub_plain_part_falls_back_to_the_html() -> None:
    parsed = parse_message(_alternative("View in HTML.", "<p>Please delist <b>203.0.113.8</b></p>"))
    assert "Please delist 203.0.113.8" in parsed.text


def test_raw_utf8_subject_in_a_gb2312_mail() -> None:
    raw = (
        "From: NOC <noc@isp.example>\r\nSubject: 申请解除 203.0.113.9\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=gb2312\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode() + "您好".encode("gbk")
    parsed = parse_message(raw)
    assert parsed.subject == "申请解除 203.0.113.9"
    assert parsed.text == "您好"


def test_raw_gbk_subject_uses_the_body_charset_as_a_hint() -> None:
    raw = (
        b"From: NOC <noc@isp.example>\r\nSubject: "
        + "申请解除封锁".encode("gbk")
        + b"\r\nContent-Type: text/plain; charset=gbk\r\n\r\nhello\r\n"
    )
    assert parse_message(raw).subject == "申请解除封锁"


@pytest.mark.parametrize(
    ("disposition", "expected"),
    [
        ('attachment; filename="list.csv"', "list.csv"),
        ("attachment; filename*=utf-8''Liste%20f%C3%BCr%20DUL.csv", "Liste für DUL.csv"),
        ("attachment; filename*0*=utf-8''Liste%20; filename*1*=f%C3%BCr.csv", "Liste für.csv"),
        ('attachment; filename="=?utf-8?b?5YiX6KGoLmNzdg==?="', "列表.csv"),
        ("attachment;\r\n filename=plain.txt", "plain.txt"),
    ],
)
def test_attachment_file_names(disposition: str, expected: str) -> None:
    raw = (
        "From: noc@isp.example\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
        f"--b\r\nContent-Type: text/csv\r\nContent-Disposition: {disposition}\r\n\r\n203.0.113.5\r\n--b--\r\n"
    ).encode()
    parsed = parse_message(raw)
    assert [a.filename for a in parsed.attachments] == [expected]
    assert "203.0.113.5" in parsed.text


def test_invalid_content_type_means_plain_text() -> None:
    parsed = parse_message(simple(b"delist 203.0.113.6", ctype="garbage; charset=utf-8"))
    assert parsed.content_type == "text/plain"
    assert parsed.text == "delist 203.0.113.6"


def test_huge_inline_text_is_read_only_in_its_head() -> None:
    line = b"Nov 29 10:00:00 mx postfix/smtpd[123]: connect from unknown[203.0.113.9]\r\n"
    body = line * (20 * 1024 * 1024 // len(line))
    started = time.perf_counter()
    parsed = parse_message(simple(body))
    assert time.perf_counter() - started < 20
    assert len(parsed.text) <= 8 * 1024 * 1024
    assert any("read only in its first 8 MiB" in defect for defect in parsed.defects)


def test_glimpse_reads_sender_and_subject_of_mail_the_parser_refuses() -> None:
    from tmsi.domain.mail import glimpse

    raw = (
        b"Received: from x\r\nFrom: =?iso-8859-1?q?J=F6rg?= <noc@isp.example>\r\n"
        b"Subject: Please delist\r\n\t198.51.100.0/24\r\nSubject: second one ignored\r\n"
        b"X-Bad: \x00\r\n\r\nFrom: body@example.test\r\n"
    )
    assert glimpse(raw) == ("Jörg", "noc@isp.example", "Please delist 198.51.100.0/24")
    assert glimpse(b"\x00\x01 not mail at all") == ("", "", "")
    assert glimpse(b"Subject: only\n\nFrom: in the body <x@example.test>\n") == ("", "", "only")
