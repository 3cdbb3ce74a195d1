"""Each real-service fixture of tests.services.plugin does what the other tests rely on."""

from __future__ import annotations

import smtplib
import socket
import time
from email.message import EmailMessage
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.resolver
import dns.reversename
import pytest

pytestmark = pytest.mark.integration

RAW = (
    b"From: noc@isp.example\r\nTo: dul@example.test\r\nSubject: delist 192.0.2.7\r\n\r\n"
    b"please delist 192.0.2.7\r\n"
)


def test_dovecot_append_fetch_move_over_plain_starttls_and_tls(dovecot):
    user, _ = dovecot.add_user("smoke@example.test", "pw-smoke")
    uid = dovecot.append("INBOX", RAW, user=user)
    for tls in ("none", "starttls", "implicit"):
        client = dovecot.client(user, tls=tls)
        client.select_folder("INBOX")
        uids = client.search(["ALL"])
        assert uids == [uid]
        body = client.fetch(uids, ["RFC822"])[uid][b"RFC822"]
        assert b"please delist 192.0.2.7" in body
        client.logout()
    client = dovecot.client(user)
    for folder in ("Processed", "Quarantine"):
        assert not client.folder_exists(folder)
        client.create_folder(folder)
    client.select_folder("INBOX")
    client.move([uid], "Processed")
    assert client.search(["ALL"]) == []
    assert client.select_folder("Processed")[b"EXISTS"] == 1
    client.logout()


def test_knot_serves_standard_zones_and_applies_dynamic_updates(knot):
    resolver = knot.resolver()
    ptr = resolver.resolve(dns.reversename.from_address("192.0.2.7"), "PTR")
    assert [r.to_text() for r in ptr] == ["static-customer-7.isp.example."]
    assert [r.to_text() for r in resolver.resolve("mail6.example.test", "AAAA")] == ["2001:db8::25"]
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve(dns.reversename.from_address("203.0.113.77"), "PTR")

    knot.update_ptr("203.0.113.77", "static-77.isp.example", ttl=60)
    knot.update_a("static-77.isp.example", "203.0.113.77")
    assert [r.to_text() for r in resolver.resolve(dns.reversename.from_address("203.0.113.77"), "PTR")] == [
        "static-77.isp.example."
    ]
    assert [r.to_text() for r in resolver.resolve("static-77.isp.example", "A")] == ["203.0.113.77"]
    knot.update_ptr("2001:db8::77", "static6-77.isp.example")
    assert [r.to_text() for r in resolver.resolve(dns.reversename.from_address("2001:db8::77"), "PTR")] == [
        "static6-77.isp.example."
    ]

    knot.delete("203.0.113.77")
    knot.delete("static-77.isp.example", "A")
    knot.delete("2001:db8::77", "PTR")
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve(dns.reversename.from_address("203.0.113.77"), "PTR")
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("static-77.isp.example", "A")


def test_knot_server_factory_serves_custom_zones(knot_server):
    from tests.services.knot import soa_header

    zones = {"18.198.in-addr.arpa": soa_header("18.198.in-addr.arpa") + "7.0 IN PTR custom.example.test.\n"}
    with knot_server(zones) as custom:
        answer = custom.resolver().resolve(dns.reversename.from_address("198.18.0.7"), "PTR")
        assert [r.to_text() for r in answer] == ["custom.example.test."]


def test_dead_dns_never_answers(dead_dns):
    query = dns.message.make_query("7.2.0.192.in-addr.arpa", "PTR")
    started = time.monotonic()
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(query, dead_dns.host, port=dead_dns.port, timeout=0.3)
    assert time.monotonic() - started >= 0.3
    deadline = time.monotonic() + 2
    while dead_dns.received == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert dead_dns.received >= 1


def test_rbldnsd_answers_listed_addresses_and_reloads(rbldnsd, tmp_path: Path):
    from tests.services.rbldnsd import lookup_name

    data = tmp_path / "zone"
    data.mkdir()
    (data / "dul.ip4set").write_text(
        ":127.0.0.2:Dynamic IP $ - see https://dul.example.test/lookup?ip=$\n192.0.2.10\n198.51.100.0/24\n"
    )
    (data / "dul.ip6trie").write_text(":127.0.0.2:Dynamic IPv6 $\n2001:db8:1::/48\n")
    server = rbldnsd("dul.example.test", data)
    assert lookup_name("192.0.2.10", "dul.example.test") == "10.2.0.192.dul.example.test"
    assert server.query("192.0.2.10") == ["127.0.0.2"]
    assert server.query("192.0.2.10", "TXT") == [
        "Dynamic IP 192.0.2.10 - see https://dul.example.test/lookup?ip=192.0.2.10"
    ]
    assert server.query("198.51.100.200") == ["127.0.0.2"]
    assert server.query("2001:db8:1::7") == ["127.0.0.2"]
    assert server.query("192.0.2.11") is None

    # same-second rewrite: only a forced new whole-second mtime makes rbldnsd notice
    path = data / "dul.ip4set"
    tmp = data / "dul.ip4set.tmp"
    tmp.write_text(":127.0.0.2:Dynamic IP $\n192.0.2.11\n198.51.100.0/24\n")
    tmp.chmod(0o644)
    stamp = max(int(time.time()), int(path.stat().st_mtime) + 1)
    import os

    os.utime(tmp, (stamp, stamp))
    os.replace(tmp, path)
    server.reload()
    assert server.wait_for("192.0.2.10", None) is None
    assert server.query("192.0.2.11") == ["127.0.0.2"]


def test_smtp_sink_receives(smtp_sink):
    smtp_sink.clear()
    message = EmailMessage()
    message["From"] = "dul@example.test"
    message["To"] = "noc@isp.example"
    message["Subject"] = "[TMSI-2026-000001] delisted"
    message.set_content("192.0.2.7 has been delisted.")
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=5) as smtp:
        smtp.send_message(message)
    (envelope,) = smtp_sink.wait_for(1, timeout=5)
    assert envelope.mail_from == "dul@example.test"
    assert envelope.rcpt_tos == ["noc@isp.example"]
    assert smtp_sink.parsed(0)["Subject"] == "[TMSI-2026-000001] delisted"


def test_chromium_renders_a_data_url(chromium_page):
    html = "<title>smoke</title><button id=b onclick=\"this.textContent='done'\">go</button>"
    chromium_page.goto("data:text/html," + html)
    assert chromium_page.title() == "smoke"
    chromium_page.click("#b")
    assert chromium_page.text_content("#b") == "done"
    assert chromium_page.screenshot()[:8] == b"\x89PNG\r\n\x1a\n"


def test_free_ports_are_distinct_and_bindable():
    from tests.services.ports import free_port

    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", port))
