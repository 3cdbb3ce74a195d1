"""classify_message, Authentication-Results trust, explain() and ``tmsi mail explain``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tmsi.config import Settings
from tmsi.domain.authority_headers import dmarc_verdict, evaluate_trust
from tmsi.domain.authres import parse_authentication_results
from tmsi.domain.classify import (
    AUTO_REPLY,
    BOUNCE,
    EXPLAIN_FIELDS,
    KINDS,
    LIST,
    REPLY,
    REQUEST,
    SPAM_OR_OTHER,
    Classification,
    classify_message,
    explain,
    find_thread_ref,
)
from tmsi.domain.extract import extract_targets
from tmsi.domain.mail import parse_message
from tmsi.enums import MessageKind

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mail"
MAILBOX = "dul@example.test"
AUTHSERV = ["mx.example.test"]


@pytest.fixture
def settings() -> Settings:
    return Settings(
        mailbox_address=MAILBOX,
        authserv_ids=AUTHSERV,
        mail_domain="example.test",
        own_networks=["192.0.2.248/29"],
        dnsbl_zone="dul.example.test",
        _env_file=None,  # type: ignore[call-arg]
    )


def classify(raw: bytes, **kwargs: Any) -> Classification:
    parsed = parse_message(raw)
    options: dict[str, Any] = {
        "mailbox_address": MAILBOX,
        "authserv_ids": AUTHSERV,
        "own_domain": "example.test",
    }
    options.update(kwargs)
    return classify_message(parsed, **options)


def mail(headers: str, body: str = "Please delist 203.0.113.7, it is static now.") -> bytes:
    base = {
        "From": "NOC <noc@isp.example>",
        "To": MAILBOX,
        "Subject": "Delisting request",
        "Message-ID": "<m1@isp.example>",
        "Date": "Tue, 12 May 2026 09:00:00 +0000",
    }
    lines = [line for line in headers.strip("\n").split("\n") if line]
    for line in lines:
        name = line.split(":", 1)[0]
        base.pop(name, None)
    head = "\r\n".join(lines + [f"{k}: {v}" for k, v in base.items()])
    return f"{head}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n".encode()


def test_kinds_match_the_model_enum() -> None:
    assert set(KINDS) == {k.value for k in MessageKind} - {"outgoing"}


# --- fixtures end to end ----------------------------------------------------------------------------

EXPECTED: dict[str, dict[str, Any]] = {
    "request_utf8_plain.eml": {
        "kind": REQUEST,
        "should_autoreply": True,
        "authentic": True,
        "targets": ["198.51.100.0/26", "203.0.113.7/32"],
    },
    "request_gb2312.eml": {"kind": REQUEST, "should_autoreply": True, "targets": ["203.0.113.45/32"]},
    "request_big5.eml": {"kind": REQUEST, "targets": ["198.51.100.16/28"]},
    "request_iso2022jp.eml": {"kind": REQUEST, "targets": ["203.0.113.0/28"]},
    "request_koi8r.eml": {
        "kind": REQUEST,
        "targets": ["192.0.2.130/31", "192.0.2.132/30", "192.0.2.136/30", "192.0.2.140/32"],
    },
    "request_cp1252.eml": {"kind": REQUEST, "targets": ["198.51.100.0/24"]},
    "request_undeclared_8bit.eml": {"kind": REQUEST, "targets": ["203.0.113.88/32"]},
    "request_wrong_charset_latin1.eml": {"kind": REQUEST, "targets": ["192.0.2.77/32"]},
    "request_wrong_charset_utf8.eml": {"kind": REQUEST, "targets": ["198.51.100.99/32"]},
    "request_html_only.eml": {
        "kind": REQUEST,
        "targets": ["198.51.100.64/28", "203.0.113.130/32", "203.0.113.131/32"],
    },
    "request_ipv6.eml": {"kind": REQUEST, "targets": ["2001:db8:4400::/40"]},
    "request_masked.eml": {"kind": REQUEST, "targets": [], "masked": True, "should_autoreply": True},
    "forward_of_notice.eml": {"kind": REQUEST, "targets": [], "masked": True},
    "attachments_csv_txt.eml": {
        "kind": REQUEST,
        "targets": ["198.51.100.128/27", "203.0.113.200/32", "203.0.113.201/32"],
    },
    "nested_rfc822.eml": {"kind": REQUEST, "targets": ["203.0.113.177/32"]},
    "dnsbl_names.eml": {
        "kind": REQUEST,
        "targets": ["198.51.100.44/32", "203.0.113.7/32", "2001:db8::25/128"],
    },
    "version_dates.eml": {"kind": REQUEST, "targets": ["203.0.113.61/32"]},
    # the declared boundary is wrong; the parts are found anyway (one is broken base64)
    "malformed_boundary.eml": {"kind": REQUEST, "targets": ["198.51.100.201/32", "198.51.100.202/32"]},
    "every_notation.eml": {
        "kind": REQUEST,
        "targets": [
            "192.0.2.1/32",  # single
            "192.0.2.64/27",  # CIDR
            "192.0.2.128/30",  # host bits set
            "192.0.2.160/29",  # full range
            "192.0.2.168/29",  # spaced range
            "192.0.2.176/29",  # "to" range
            "192.0.2.184/29",  # en-dash range
            "198.0.0.0/15",  # oversized, kept
            "198.51.100.10/31",  # short range
            "198.51.100.12/31",
            "203.0.113.0/24",  # wildcard
            "2001:db8:1::/48",
            "2001:db8:5::25/128",
            "2001:db8:8000::/33",  # oversized, kept
        ],
    },
    "missing_headers.eml": {
        "kind": REQUEST,
        "should_autoreply": False,
        "authentic": None,
        "targets": ["203.0.113.241/32"],
    },
    "hostnames_only.eml": {"kind": REQUEST, "targets": [], "masked": False},
    "reply_with_ref.eml": {
        "kind": REPLY,
        "should_autoreply": False,
        "thread_ref": "TMSI-2026-000123",
        "targets": ["203.0.113.7/32"],
    },
    "ticket_human_reply.eml": {
        "kind": REPLY,
        "should_autoreply": False,
        "thread_ref": "TMSI-2026-000125",
        "targets": ["203.0.113.150/32"],
    },
    "auto_reply_rfc3834.eml": {
        "kind": AUTO_REPLY,
        "should_autoreply": False,
        "thread_ref": "TMSI-2026-000123",
    },
    "out_of_office_de.eml": {"kind": AUTO_REPLY, "should_autoreply": False, "targets": []},
    "out_of_office_zh.eml": {"kind": AUTO_REPLY, "should_autoreply": False, "targets": []},
    "null_sender_vacation.eml": {"kind": AUTO_REPLY, "should_autoreply": False},
    "ticket_ack_zendesk.eml": {"kind": AUTO_REPLY, "should_autoreply": False},
    "ticket_ack_otrs.eml": {"kind": AUTO_REPLY, "should_autoreply": False},
    "ticket_ack_rt.eml": {"kind": AUTO_REPLY, "should_autoreply": False},
    "bounce_dsn.eml": {"kind": BOUNCE, "should_autoreply": False, "targets": []},
    "bounce_qmail.eml": {"kind": BOUNCE, "should_autoreply": False},
    "mailing_list.eml": {"kind": LIST, "should_autoreply": False, "targets": []},
    "spam.eml": {"kind": SPAM_OR_OTHER, "should_autoreply": False},
    "spam_flagged.eml": {"kind": SPAM_OR_OTHER, "should_autoreply": False},
    "from_own_address.eml": {"kind": SPAM_OR_OTHER, "should_autoreply": False},
    "dmarc_fail.eml": {"kind": REQUEST, "should_autoreply": False, "authentic": False},
    "forged_ar_bottom.eml": {"kind": REQUEST, "authentic": None},
}


def test_every_fixture_has_an_expectation() -> None:
    names = {p.name for p in FIXTURES.glob("*.eml")} - {"garbage.eml"}
    assert names == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_explained(name: str, settings: Settings) -> None:
    result = explain((FIXTURES / name).read_bytes(), name, settings)
    assert tuple(result) == EXPLAIN_FIELDS
    for key, value in EXPECTED[name].items():
        assert result[key] == value, (key, result)
    assert all(isinstance(reason, str) and reason for reason in result["reasons"])


def test_garbage_fixture_gets_an_error_object(settings: Settings) -> None:
    result = explain((FIXTURES / "garbage.eml").read_bytes(), "garbage.eml", settings)
    assert set(result) == {"file", "error"}
    assert result["error"].startswith("cannot parse:")


def test_explain_output_is_stable(settings: Settings) -> None:
    raw = (FIXTURES / "every_notation.eml").read_bytes()
    assert json.dumps(explain(raw, "x", settings)) == json.dumps(explain(raw, "x", settings))


def test_explain_reports_extraction_decisions(settings: Settings) -> None:
    result = explain((FIXTURES / "every_notation.eml").read_bytes(), "every_notation.eml", settings)
    assert "192.0.2.130/30: host bits set; using the network 192.0.2.128/30" in result["reasons"]
    assert "oversized, not expanded: 198.0.0.0/15" in result["reasons"]
    assert "oversized, not expanded: 2001:db8:8000::/33" in result["reasons"]
    assert "192.0.2.160/29" in result["targets"] and "198.0.0.0/15" in result["targets"]
    version = explain((FIXTURES / "version_dates.eml").read_bytes(), "v", settings)
    assert "not a target: 10.20.30.40 (private)" in version["reasons"]
    assert "not a target: 3.7.10.1 (version string)" in version["reasons"]


# --- rules, one by one -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "Auto-Submitted: auto-replied",
        "Auto-Submitted: auto-generated",
        "Auto-Submitted: auto-notified; owner-email=x@isp.example",
        "X-Autoreply: yes",
        "X-Autorespond: Vacation",
        "X-Auto-Response-Suppress: OOF, AutoReply",
        "Precedence: bulk",
        "Precedence: junk",
    ],
)
def test_auto_reply_headers(header: str) -> None:
    result = classify(mail(header))
    assert result.kind == AUTO_REPLY
    assert not result.should_autoreply


@pytest.mark.parametrize("header", ["Auto-Submitted: auto-generated", "Precedence: bulk"])
def test_an_automated_request_is_a_case_without_acknowledgement(header: str) -> None:
    raw = mail(header, "Automated report: please delist 203.0.113.7, the PTR is static now.")
    parsed = parse_message(raw)
    common = {"mailbox_address": MAILBOX, "authserv_ids": AUTHSERV, "own_domain": "example.test"}
    result = classify_message(parsed, targets=extract_targets(parsed.extraction_text), **common)
    assert result.kind == REQUEST
    assert not result.should_autoreply
    assert "no automatic reply: the request is auto-generated" in result.reasons


def test_auto_generated_mail_without_a_listing_is_an_auto_reply() -> None:
    raw = mail("Auto-Submitted: auto-generated", "Your password expires in 3 days.")
    parsed = parse_message(raw)
    common = {"mailbox_address": MAILBOX, "authserv_ids": AUTHSERV, "own_domain": "example.test"}
    assert (
        classify_message(parsed, targets=extract_targets(parsed.extraction_text), **common).kind == AUTO_REPLY
    )


def test_spam_flag_does_not_lose_a_delisting_request() -> None:
    raw = mail("X-Spam-Flag: YES", "Please delist 203.0.113.7 from your blacklist.")
    parsed = parse_message(raw)
    common = {"mailbox_address": MAILBOX, "authserv_ids": AUTHSERV, "own_domain": "example.test"}
    result = classify_message(parsed, targets=extract_targets(parsed.extraction_text), **common)
    assert result.kind == REQUEST
    assert not result.should_autoreply


@pytest.mark.parametrize("local", ["postmaster", "hostmaster", "abuse"])
def test_role_addresses_asking_for_a_delisting_get_an_acknowledgement(local: str) -> None:
    result = classify(mail(f"From: {local}@isp.example"))
    assert result.kind == REQUEST
    assert result.should_autoreply


def test_auto_submitted_no_is_a_person() -> None:
    assert classify(mail("Auto-Submitted: no")).kind == REQUEST


@pytest.mark.parametrize(
    "subject",
    [
        "Out of Office: Delisting request",
        "Automatic reply: Delisting request",
        "Autoreply: Delisting request",
        "Abwesenheitsnotiz: Delisting request",
        "Automatische Antwort: Ihre Anfrage",
        "Réponse automatique : Delisting request",
        "Respuesta automática: Delisting request",
        "Risposta automatica: Delisting request",
        "Automatisch antwoord: Delisting request",
        "自动回复: Delisting request",
        "自動回覆\uff1aDelisting request",
        "自動応答: Delisting request",
        "Автоответ: Delisting request",
        "Автоматический ответ: Delisting request",
    ],
)
def test_auto_reply_subjects_in_several_languages(subject: str) -> None:
    from email.header import Header

    result = classify(mail(f"Subject: {Header(subject, 'utf-8').encode()}"))
    assert result.kind == AUTO_REPLY
    assert "subject looks like an automatic reply" in result.reasons


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (
            "X-Zendesk-From-Account-Id: 1\nSubject: Re: Delisting request",
            "Your request (4711) has been received.",
        ),
        (
            "X-OTRS-Loop: yes\nSubject: [Ticket#2026051934000123] Ihre Anfrage",
            "Ihre Anfrage ist eingegangen.",
        ),
        ("X-Mailer: Znuny\nSubject: [Ticket#1234567] Delisting", "We have received your message."),
        ("Subject: Your request has been received [#123456]", "Someone will be in touch."),
        ("Subject: [SR 20260519-0001] Request received", "Thank you."),
        ("Subject: [INC0012345] Ticket created", "We have received your e-mail."),
    ],
)
def test_ticket_system_acknowledgements_are_auto_replies(headers: str, body: str) -> None:
    result = classify(mail(headers, body))
    assert result.kind == AUTO_REPLY
    assert not result.should_autoreply


def test_ticket_system_mail_that_is_not_an_ack_is_never_acknowledged() -> None:
    result = classify(
        mail("X-RT-Loop-Prevention: isp.example", "Please delist 203.0.113.7, the PTR is fixed.")
    )
    assert result.kind == REQUEST
    assert result.ticket_system
    assert not result.should_autoreply


@pytest.mark.parametrize(
    "headers",
    [
        "List-Id: Operators <ops.lists.example>",
        "List-Post: <mailto:ops@lists.example>",
        "Precedence: list",
        "List-Unsubscribe: <mailto:leave@lists.example>",
    ],
)
def test_mailing_lists(headers: str) -> None:
    result = classify(mail(headers))
    assert result.kind == LIST
    assert not result.should_autoreply


def test_dsn_bounce_names_the_bounced_message() -> None:
    result = classify((FIXTURES / "bounce_dsn.eml").read_bytes())
    assert result.kind == BOUNCE
    assert result.bounced_message_ids == ["<ack.000126.1747735000@example.test>"]
    assert "DSN action: failed" in result.reasons


def test_delay_warning_says_so() -> None:
    raw = (FIXTURES / "bounce_dsn.eml").read_bytes().replace(b"Action: failed", b"Action: delayed")
    assert "DSN action: delayed" in classify(raw).reasons


def test_plain_bounce_finds_our_message_id_in_the_quoted_copy() -> None:
    result = classify((FIXTURES / "bounce_qmail.eml").read_bytes())
    assert result.bounced_message_ids == ["<ack.000127.1747738000@example.test>"]


def test_bounce_ignores_message_ids_that_are_not_ours_in_the_quoted_text() -> None:
    raw = mail(
        "From: MAILER-DAEMON@mx.isp.example\nReturn-Path: <>\nSubject: Mail delivery failed",
        "The original message:\n> Message-ID: <other@isp.example>\n> Message-ID: <ack.5@example.test>",
    )
    result = classify(raw)
    assert result.kind == BOUNCE
    assert result.bounced_message_ids == ["<ack.5@example.test>"]


@pytest.mark.parametrize(
    "headers",
    [
        "From: MAILER-DAEMON@mx.isp.example\nSubject: Undelivered Mail Returned to Sender",
        "From: postmaster@isp.example\nReturn-Path: <>\nSubject: Delivery Status Notification (Failure)",
        "Return-Path: <>\nSubject: Undeliverable: Delisting request",
        "X-Failed-Recipients: noc@isp.example\nSubject: Mail delivery failed: returning message to sender",
    ],
)
def test_bounces_without_a_report(headers: str) -> None:
    assert classify(mail(headers)).kind == BOUNCE


def test_null_sender_without_bounce_signs_is_an_auto_reply() -> None:
    assert classify(mail("Return-Path: <>")).kind == AUTO_REPLY


def test_read_receipt_is_an_auto_reply() -> None:
    raw = (
        b"From: noc@isp.example\r\nTo: dul@example.test\r\nSubject: Read: Delisting\r\n"
        b'Content-Type: multipart/report; report-type=disposition-notification; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nread\r\n--b--\r\n"
    )
    assert classify(raw).kind == AUTO_REPLY


@pytest.mark.parametrize("sender", [MAILBOX, "analyst@example.test", "DUL@EXAMPLE.TEST"])
def test_mail_from_ourselves_is_never_a_request(sender: str) -> None:
    result = classify(mail(f"From: {sender}"))
    assert result.kind == SPAM_OR_OTHER
    assert not result.should_autoreply


def test_x_loop_naming_our_mailbox_is_an_auto_reply() -> None:
    result = classify(mail("X-Loop: dul@example.test"))
    assert result.kind == AUTO_REPLY
    assert classify(mail("X-Loop: helpdesk@isp.example")).kind == REQUEST


def test_reply_by_thread_reference() -> None:
    result = classify(mail("Subject: RE: AW: [tmsi-2026-000042] Delisting request"))
    assert result.kind == REPLY
    assert result.thread_ref == "TMSI-2026-000042"


def test_reply_by_in_reply_to_our_domain() -> None:
    result = classify(mail("In-Reply-To: <ack.7@example.test>\nSubject: Re: your mail"))
    assert result.kind == REPLY
    assert result.in_reply_to == "<ack.7@example.test>"
    assert result.thread_ref is None


def test_reply_when_the_caller_knows_the_message_ids() -> None:
    raw = mail("In-Reply-To: <first-request@isp.example>")
    assert classify(raw).kind == REQUEST
    assert classify(raw, sent_message_ids_known=True).kind == REPLY


def test_find_thread_ref() -> None:
    assert find_thread_ref("Re: [TMSI-2026-000123] x") == "TMSI-2026-000123"
    assert find_thread_ref("TMSI-2026-12345") is None
    assert find_thread_ref("") is None


def test_spam_needs_targets_to_be_judged() -> None:
    raw = mail("Subject: Cheap watches", "Buy now at https://shop.example")
    parsed = parse_message(raw)
    targets = extract_targets(parsed.extraction_text)
    assert classify(raw).kind == REQUEST  # without extraction there is nothing to go on
    common = {"mailbox_address": MAILBOX, "authserv_ids": AUTHSERV, "own_domain": "example.test"}
    assert classify_message(parsed, targets=targets, **common).kind == SPAM_OR_OTHER


def test_request_without_an_address_but_about_a_listing_is_a_request() -> None:
    raw = mail("Subject: Bitte entfernen", "Unsere IP ist statisch, bitte aus der Sperrliste entfernen.")
    parsed = parse_message(raw)
    common = {"mailbox_address": MAILBOX, "authserv_ids": AUTHSERV, "own_domain": "example.test"}
    result = classify_message(parsed, targets=extract_targets(parsed.extraction_text), **common)
    assert result.kind == REQUEST
    assert "names no address; the requester must be asked for it" in result.reasons


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ("From: no-reply@isp.example", "does not take replies"),
        ("From: noreply+abc@isp.example", "does not take replies"),
        ("Reply-To: dul@example.test", "Reply-To points back at us"),
        ("From: undisclosed-recipients:;", "no usable sender address"),
    ],
)
def test_no_acknowledgement_to_unusable_senders(headers: str, why: str) -> None:
    result = classify(mail(headers))
    assert result.kind == REQUEST
    assert not result.should_autoreply
    assert any(why in reason for reason in result.reasons)


# --- Authentication-Results -------------------------------------------------------------------------


def test_parse_authentication_results() -> None:
    value = (
        'mx.example.test 1; dkim=pass (2048-bit key; unprotected) header.d=isp.example header.b="ab;cd";\r\n'
        "\tspf = pass (sender SPF authorized) smtp.mailfrom=noc@isp.example;\r\n"
        "\tdmarc=pass (p=reject dis=none) header.from=isp.example; arc=none"
    )
    authserv_id, results = parse_authentication_results(value)
    assert authserv_id == "mx.example.test"
    assert [(r.method, r.result) for r in results] == [
        ("dkim", "pass"),
        ("spf", "pass"),
        ("dmarc", "pass"),
        ("arc", "none"),
    ]
    method, result, props = results[0]
    assert (method, result) == ("dkim", "pass")
    assert props == {"header.d": "isp.example", "header.b": "ab;cd"}
    assert results[1].props == {"smtp.mailfrom": "noc@isp.example"}


def test_parse_authentication_results_comments_and_quotes() -> None:
    nested = (
        "mx.example.test (a (nested) comment; with semicolon); dkim=pass (good \\) sig) header.d=isp.example;"
        ' dmarc=pass header.from="isp.example" policy.dmarc=reject'
    )
    _, results = parse_authentication_results(nested)
    assert [(r.method, r.result, r.props) for r in results] == [
        ("dkim", "pass", {"header.d": "isp.example"}),
        ("dmarc", "pass", {"header.from": "isp.example", "policy.dmarc": "reject"}),
    ]
    quoted = 'mx.example.test;\r\n\tdkim=fail reason="signature \\"bad\\"; really" header.d=isp.example'
    _, results = parse_authentication_results(quoted)
    assert results[0].props == {"reason": 'signature "bad"; really', "header.d": "isp.example"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("mx.example.test; none", ("mx.example.test", [])),
        ("", ("", [])),
        ("(comment only)", ("", [])),
        ('"mx.example.test"; dmarc/1=FAIL', ("mx.example.test", [("dmarc", "fail")])),
        (
            'mx.example.test; dkim=pass reason="good sig" header.i=@isp.example',
            ("mx.example.test", [("dkim", "pass")]),
        ),
    ],
)
def test_parse_authentication_results_edge_cases(
    value: str, expected: tuple[str, list[tuple[str, str]]]
) -> None:
    authserv_id, results = parse_authentication_results(value)
    assert (authserv_id, [(r.method, r.result) for r in results]) == expected


RECEIVED_OURS = "from mail.isp.example (mail.isp.example [192.0.2.25]) by mx.example.test with ESMTPS"
AR_OURS_PASS = "mx.example.test; dmarc=pass header.from=isp.example"
AR_OURS_FAIL = "mx.example.test; dmarc=fail header.from=isp.example"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("Authentication-Results", AR_OURS_PASS), ("Received", RECEIVED_OURS), ("From", "x")], True),
        ([("Authentication-Results", AR_OURS_FAIL), ("Received", RECEIVED_OURS)], False),
        ([("Return-Path", "<a@b>"), ("Authentication-Results", AR_OURS_PASS)], True),
        ([("Authentication-Results", "mx.example.test; dkim=pass; dmarc=none")], None),
        ([("Authentication-Results", "mx.example.test; spf=pass smtp.mailfrom=x")], None),
        # another authserv-id: not ours, and it hides everything below it
        (
            [
                ("Authentication-Results", "mx.other.example; dmarc=pass"),
                ("Authentication-Results", AR_OURS_PASS),
            ],
            None,
        ),
        # our id below the hop from outside, or below a sender-written field: written by the sender
        ([("Received", RECEIVED_OURS), ("Authentication-Results", AR_OURS_PASS)], None),
        ([("From", "x"), ("Authentication-Results", AR_OURS_PASS)], None),
        ([("Received", "from a by mx.other.example"), ("Authentication-Results", AR_OURS_PASS)], None),
        # internal hop between our own hosts keeps the zone open
        (
            [
                ("Received", "from mx.example.test (localhost [127.0.0.1]) by mx.example.test"),
                ("Authentication-Results", AR_OURS_FAIL),
                ("Received", RECEIVED_OURS),
            ],
            False,
        ),
        # the topmost of our results wins
        ([("Authentication-Results", AR_OURS_PASS), ("Authentication-Results", AR_OURS_FAIL)], True),
        ([], None),
    ],
)
def test_dmarc_verdict_trusts_only_our_topmost_results(
    headers: list[tuple[str, str]], expected: bool | None
) -> None:
    assert dmarc_verdict(headers, AUTHSERV)[0] is expected


def test_no_trusted_ids_means_nothing_is_trusted() -> None:
    assert evaluate_trust([("Authentication-Results", AR_OURS_PASS)], []).trusted == ()


def test_forged_result_below_a_foreign_one_is_ignored() -> None:
    result = classify((FIXTURES / "forged_ar_bottom.eml").read_bytes())
    assert result.authentic is None


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_explain_prints_one_object_per_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tmsi.cli.mail import mail as mail_group

    monkeypatch.setenv("TMSI_AUTHSERV_IDS", "mx.example.test")
    monkeypatch.setenv("TMSI_MAILBOX_ADDRESS", MAILBOX)
    monkeypatch.chdir(tmp_path)  # no .env from the working tree
    files = [
        str(FIXTURES / "request_utf8_plain.eml"),
        str(tmp_path / "missing.eml"),
        str(FIXTURES / "garbage.eml"),
    ]
    result = CliRunner().invoke(mail_group, ["explain", *files])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["file"] for line in lines] == files
    assert lines[0]["kind"] == "request"
    assert lines[0]["authentic"] is True
    assert lines[0]["targets"] == ["198.51.100.0/26", "203.0.113.7/32"]
    assert tuple(lines[0]) == (*EXPLAIN_FIELDS, "authority")
    assert lines[0]["authority"]["result"] in {"pass", "fail", "none", "unverifiable"}
    assert set(lines[1]) == {"file", "error"} and "cannot read" in lines[1]["error"]
    assert set(lines[2]) == {"file", "error"} and "cannot parse" in lines[2]["error"]


def test_cli_explain_without_files_is_a_usage_error() -> None:
    from tmsi.cli.mail import mail as mail_group

    result = CliRunner().invoke(mail_group, ["explain"])
    assert result.exit_code == 2


def test_cli_explain_with_a_bad_setting_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tmsi.cli.mail import mail as mail_group

    monkeypatch.setenv("TMSI_OWN_NETWORKS", "not-a-network")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(mail_group, ["explain", str(FIXTURES / "spam.eml")])
    assert result.exit_code == 2
    assert "TMSI_OWN_NETWORKS" in result.output


def test_explain_file_survives_a_failing_message(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    import tmsi.cli.mail as cli_mail

    def broken(raw: bytes, file: str, settings: Any, annotate: Any = None) -> dict[str, Any]:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli_mail, "explain", broken)
    result = cli_mail.explain_file(str(FIXTURES / "spam.eml"), settings)
    assert result == {"file": str(FIXTURES / "spam.eml"), "error": "cannot explain: RuntimeError: boom"}


def test_forged_result_below_a_hop_that_helos_as_our_mx_is_ignored() -> None:
    """The HELO name is the client's choice: only the recorded client address makes a hop internal."""
    headers = [
        (
            "Received",
            "from mx.example.test (unknown [198.51.100.99]) by mx.example.test with ESMTP id 1; "
            "Sun, 29 Nov 2026 10:00:00 +0000",
        ),
        ("Authentication-Results", "mx.example.test; dmarc=pass header.from=isp.example"),
        ("From", "noc@isp.example"),
    ]
    assert dmarc_verdict(headers, ["mx.example.test"])[0] is None
    internal = [
        (
            "Received",
            "from mx.example.test (localhost [127.0.0.1]) by mx.example.test with ESMTP id 2; "
            "Sun, 29 Nov 2026 10:00:01 +0000",
        ),
        *headers[1:],
    ]
    assert dmarc_verdict(internal, ["mx.example.test"])[0] is True
