"""The hand-rolled query builder and reply reader agree with dnspython on the same wire messages."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from tmsi.adapters.resolver import (
    DnsAnswer,
    ErrorKind,
    FakeResolver,
    SlowPath,
    StaticDns,
    build_query,
    classify_reply,
    parse_reply,
    parse_reply_any,
    parse_server,
    question_wire,
    reply_from_message,
)

QNAME = "7.2.0.192.in-addr.arpa."


def _reply(
    qname: str,
    qtype: str,
    *answers: tuple[str, int, str, str],
    rcode: int = 0,
    aa: bool = True,
    soa: bool = False,
    ns: bool = False,
) -> bytes:
    query = dns.message.make_query(qname, qtype)
    msg = dns.message.make_response(query)
    msg.set_rcode(dns.rcode.Rcode(rcode))
    if not aa:
        msg.flags &= ~dns.flags.AA
    else:
        msg.flags |= dns.flags.AA
    msg.flags &= ~dns.flags.RA
    for owner, ttl, kind, value in answers:
        msg.answer.append(dns.rrset.from_text(owner, ttl, "IN", kind, value))
    if soa:
        msg.authority.append(
            dns.rrset.from_text(
                "2.0.192.in-addr.arpa.",
                300,
                "IN",
                "SOA",
                "ns1.example.test. hostmaster.example.test. 1 3600 600 86400 60",
            )
        )
    if ns:
        msg.authority.append(
            dns.rrset.from_text("2.0.192.in-addr.arpa.", 300, "IN", "NS", "ns1.example.test.")
        )
    return msg.to_wire()


def test_query_wire_is_what_dnspython_would_send():
    wire = build_query(0x1234, question_wire(QNAME, "PTR"))
    msg = dns.message.from_wire(wire)
    assert msg.id == 0x1234 and msg.flags & dns.flags.RD
    assert msg.question[0].to_text() == f"{QNAME} IN PTR"
    assert msg.edns == 0 and msg.payload == 1232
    expected = dns.message.make_query(QNAME, "PTR", use_edns=0, payload=1232)
    expected.id = 0x1234
    assert msg == expected
    assert (
        dns.message.from_wire(build_query(1, question_wire("mail6.Example.test", "AAAA"))).question[0].rdtype
        == 28
    )


@pytest.mark.parametrize(
    ("answers", "kind"),
    [
        ([(QNAME, 300, "PTR", "Static-Customer-7.isp.example.")], "PTR"),
        ([(QNAME, 300, "PTR", "a.example.test."), (QNAME, 300, "PTR", "b.isp.example.")], "PTR"),
        (
            [
                (QNAME, 60, "CNAME", "7.0-25.2.0.192.in-addr.arpa."),
                ("7.0-25.2.0.192.in-addr.arpa.", 120, "PTR", "host.isp.example."),
            ],
            "PTR",
        ),
    ],
)
def test_fast_reader_matches_dnspython(answers, kind):
    wire = _reply(QNAME, kind, *answers)
    fast = parse_reply(wire, question_wire(QNAME, kind), QNAME)
    slow = reply_from_message(dns.message.from_wire(wire))
    assert fast is not None
    assert fast.records == slow.records and fast.rcode == slow.rcode == 0
    assert fast.authoritative and not fast.recursion_available


def test_reader_reports_negative_ttl_referral_and_rcodes():
    nx = parse_reply(_reply(QNAME, "PTR", rcode=3, soa=True), question_wire(QNAME, "PTR"), QNAME)
    assert nx is not None and nx.rcode == 3 and nx.negative_ttl == 60  # min(SOA TTL 300, minimum 60)
    referral = parse_reply(_reply(QNAME, "PTR", aa=False, ns=True), question_wire(QNAME, "PTR"), QNAME)
    assert referral is not None and referral.referral and not referral.authoritative
    answer = DnsAnswer(QNAME, "PTR")
    classify_reply(referral, answer)
    assert answer.error == ErrorKind.LAME and answer.detail == "referral"
    for rcode, kind in (
        (2, ErrorKind.SERVFAIL),
        (5, ErrorKind.REFUSED),
        (1, ErrorKind.FORMERR),
        (4, ErrorKind.RCODE),
    ):
        reply = parse_reply(_reply(QNAME, "PTR", rcode=rcode), question_wire(QNAME, "PTR"), QNAME)
        answer = DnsAnswer(QNAME, "PTR")
        assert reply is not None
        classify_reply(reply, answer)
        assert answer.error == kind


def test_reply_for_another_question_is_rejected_and_odd_names_take_the_slow_path():
    wire = _reply(QNAME, "PTR", (QNAME, 300, "PTR", "host.isp.example."))
    assert (
        parse_reply_any(
            wire, question_wire("8.2.0.192.in-addr.arpa.", "PTR"), "8.2.0.192.in-addr.arpa.", "PTR"
        )
        is None
    )
    assert parse_reply(wire, question_wire(QNAME, "A"), QNAME) is None  # same name, other type
    odd = _reply(QNAME, "PTR", (QNAME, 300, "PTR", r"we\.ird\032name.isp.example."))
    with pytest.raises(SlowPath):
        parse_reply(odd, question_wire(QNAME, "PTR"), QNAME)
    slow = parse_reply_any(odd, question_wire(QNAME, "PTR"), QNAME, "PTR")
    assert slow is not None and slow.records[0].value == r"we\.ird\032name.isp.example."


def test_parse_server_forms():
    assert parse_server("127.0.0.1") == ("127.0.0.1", 53)
    assert parse_server("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_server("[::1]:5353") == ("::1", 5353)
    assert parse_server("::1") == ("::1", 53)


def test_static_dns_semantics_match_knot():
    static = StaticDns()
    static.add_zone("2.0.192.in-addr.arpa", negative_ttl=60)
    static.add(QNAME, "PTR", "host.isp.example")
    assert static.answer(QNAME, "PTR").records[0].value == "host.isp.example."
    assert static.answer(QNAME, "A").rcode == "NOERROR" and not static.answer(QNAME, "A").records  # NODATA
    missing = static.answer("9.2.0.192.in-addr.arpa", "PTR")
    assert missing.rcode == "NXDOMAIN" and missing.negative_ttl == 60 and missing.ok
    outside = static.answer("1.113.0.203.in-addr.arpa", "PTR")
    assert outside.error == ErrorKind.REFUSED and not outside.ok


def test_fake_resolver_injects_errors_and_logs():
    fake = (
        FakeResolver().host("192.0.2.7", "static-7.isp.example").fail("x.isp.example", "A", ErrorKind.TIMEOUT)
    )
    ok, broken = fake.resolve_many([(QNAME, "PTR"), ("x.isp.example", "A")])
    assert ok.records[0].value == "static-7.isp.example." and broken.error == ErrorKind.TIMEOUT
    assert fake.log == [(QNAME, "PTR"), ("x.isp.example.", "A")]
