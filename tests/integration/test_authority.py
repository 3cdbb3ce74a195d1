"""Authority against real services: Knot on loopback serving DKIM keys, SPF and DMARC records made in the
test, RDAP served by an HTTP server on loopback (and one that never answers), the database and the outbox."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dns.query
import dns.rcode
import dns.update
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.authority_support import DkimKey, delivered, make_key, request_body, sign
from tests.services.knot import soa_header
from tmsi.adapters.authority_dns import DnspythonDns
from tmsi.adapters.rdap import HttpRdap
from tmsi.config import Settings
from tmsi.db import utcnow
from tmsi.domain.networks import network_keys, parse_network
from tmsi.models import (
    AuditEvent,
    Case,
    CaseStatus,
    CaseTarget,
    CheckResult,
    Direction,
    DnsCheck,
    Message,
    OutboxMessage,
    RdapCache,
    TargetStatus,
)
from tmsi.services import authority as svc
from tmsi.services.cases import open_case

pytestmark = pytest.mark.integration


# --- DNS: keys generated here, published in Knot -----------------------------------------------------------
@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DkimKey]:
    d = tmp_path_factory.mktemp("dkim")
    return {
        "isp": make_key(d, "sel1", "isp.example"),
        "other": make_key(d, "sel2", "other.example"),
        "lsp": make_key(d, "k1", "lsp.example", bits=1024),
        "rotated": make_key(d, "sel2027", "isp.example", bits=1024),
    }


def zones(keys: dict[str, DkimKey]) -> dict[str, str]:
    return {
        "isp.example": soa_header("isp.example")
        + keys["isp"].zone_line("isp.example")
        + '@ IN TXT "v=spf1 mx -all"\n'
        "@ IN MX 10 mail.isp.example.\n"
        "mail IN A 203.0.113.25\n"
        'mail IN TXT "v=spf1 a -all"\n'
        'noc IN TXT "v=spf1 ip4:203.0.113.16/28 -all"\n'
        '_dmarc IN TXT "v=DMARC1; p=reject; rua=mailto:dmarc@isp.example"\n'
        "static-customer-7 IN A 192.0.2.7\n",
        "other.example": soa_header("other.example")
        + keys["other"].zone_line("other.example")
        + '@ IN TXT "v=spf1 ip4:198.51.100.25 -all"\n'
        '_dmarc IN TXT "v=DMARC1; p=quarantine; adkim=s"\n'
        "mail IN A 198.51.100.25\n",
        "lsp.example": soa_header("lsp.example")
        + keys["lsp"].zone_line("lsp.example")
        + '@ IN TXT "v=spf1 ip4:198.51.100.66 -all"\n',
        "freemail.example": soa_header("freemail.example") + '@ IN TXT "v=spf1 ip4:198.51.100.70 -all"\n'
        '_dmarc IN TXT "v=DMARC1; p=none"\n',
        "attacker.test": soa_header("attacker.test"),
        "2.0.192.in-addr.arpa": soa_header("2.0.192.in-addr.arpa")
        + "7 IN PTR static-customer-7.isp.example.\n",
        "100.51.198.in-addr.arpa": soa_header("100.51.198.in-addr.arpa")
        + "".join(f"{i} IN PTR host-{i}.other.example.\n" for i in range(1, 4)),
        "113.0.203.in-addr.arpa": soa_header("113.0.203.in-addr.arpa")
        + "".join(f"{i} IN PTR host-203-0-113-{i}.dsl.carrier.example.\n" for i in range(1, 8)),
    }


@pytest.fixture(scope="module")
def knot_dns(knot_server: Callable[..., Any], keys: dict[str, DkimKey]) -> Iterator[Any]:
    with knot_server(zones(keys)) as server:
        yield server


# --- RDAP over HTTP on loopback ---------------------------------------------------------------------------
def entity(email: str, *roles: str, nested: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "objectClassName": "entity",
        "roles": list(roles),
        "vcardArray": [
            "vcard",
            [
                ["version", {}, "text", "4.0"],
                ["fn", {}, "text", email.split("@")[1]],
                ["email", {}, "text", email],
            ],
        ],
        "entities": nested or [],
    }


RDAP_OBJECTS: dict[str, dict[str, Any]] = {
    "198.51.100.0/24": {
        "objectClassName": "ip network",
        "handle": "NET-198-51-100-0",
        "name": "OTHER-NET",
        "startAddress": "198.51.100.0",
        "endAddress": "198.51.100.255",
        "entities": [
            entity("registry@other.example", "registrant", nested=[entity("abuse@other.example", "abuse")])
        ],
    },
    "203.0.113.0/24": {
        "objectClassName": "ip network",
        "handle": "NET-203-0-113-0",
        "name": "CARRIER-FOR-ISP",
        "startAddress": "203.0.113.0",
        "endAddress": "203.0.113.255",
        "entities": [
            entity("hostmaster@isp.example", "administrative", "technical"),
            entity("peering@carrier.example", "noc"),
        ],
    },
}


class RdapServer:
    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        self.objects = objects
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                body, status = outer.answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/rdap+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/rdap/"

    def answer(self, path: str) -> tuple[dict[str, Any], int]:
        query = path.split("/rdap/ip/", 1)[-1]
        net = ipaddress.ip_network(query, strict=False)
        for key, obj in self.objects.items():
            candidate = ipaddress.ip_network(key)
            if candidate.version == net.version and net.subnet_of(candidate):  # type: ignore[arg-type]
                return obj, 200
        return {"errorCode": 404, "title": "Not Found"}, 404

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def rdap_server() -> Iterator[RdapServer]:
    server = RdapServer(RDAP_OBJECTS)
    yield server
    server.close()


@pytest.fixture
def silent_rdap() -> Iterator[str]:
    """Accepts TCP connections (kernel backlog) and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/rdap/"
    sock.close()


@pytest.fixture
def conf(settings: Settings, knot_dns: Any, rdap_server: RdapServer) -> Settings:
    return settings.model_copy(
        update={
            "resolvers": [knot_dns.nameserver],
            "rdap_base_urls": [rdap_server.base_url],
            "rdap_timeout": 2.0,
            "dns_timeout": 1.0,
            "dns_retries": 0,
        }
    )


@pytest.fixture
def resolver(conf: Settings) -> DnspythonDns:
    return DnspythonDns.from_settings(conf)


# --- cases ---------------------------------------------------------------------------------
def make_case(session: Session, sender: str, *targets: str, ptr: dict[str, list[str]] | None = None) -> Case:
    case = open_case(session, subject="Please delist", requester_email=sender)
    for text in targets:
        net = parse_network(text, strict=False)
        version, start, end = network_keys(net)
        target = CaseTarget(
            case_id=case.id,
            network=str(net),
            version=version,
            prefixlen=net.prefixlen,
            start_key=start,
            end_key=end,
            summary={},
            authority_evidence={},
        )
        session.add(target)
        session.flush()
        for address, names in (ptr or {}).items():
            if ipaddress.ip_address(address) in net:
                session.add(
                    DnsCheck(
                        target_id=target.id,
                        address=address,
                        version=version,
                        address_key=ipaddress.ip_address(address).packed,
                        result=CheckResult.PASS,
                        ptr_names=names,
                        reasons=[],
                        evidence={},
                        checked_at=utcnow(),
                    )
                )
    session.flush()
    session.refresh(case)
    return case


def outbox(session: Session, case: Case) -> list[OutboxMessage]:
    return list(session.scalars(select(OutboxMessage).where(OutboxMessage.case_id == case.id)))


ISP_MAIL = {"client_ip": "203.0.113.25", "helo": "mail.isp.example"}


# --- tests ---------------------------------------------------------------------------------
def test_signed_request_from_subdomain_sender_passes_and_may_be_delisted_automatically(
    session: Session,
    conf: Settings,
    resolver: DnspythonDns,
    keys: dict[str, DkimKey],
    rdap_server: RdapServer,
) -> None:
    raw = delivered(
        sign(request_body("noc@noc.isp.example"), keys["isp"]), mailfrom="noc@noc.isp.example", **ISP_MAIL
    )
    case = make_case(
        session, "noc@noc.isp.example", "192.0.2.7", ptr={"192.0.2.7": ["static-customer-7.isp.example."]}
    )
    before = len(rdap_server.requests)
    result = svc.evaluate_case_authority(session, case, raw, conf, resolver, HttpRdap.from_settings(conf))

    assert result.result == CheckResult.PASS
    assert case.authority_result == CheckResult.PASS
    target = case.targets[0]
    assert target.authority_result == CheckResult.PASS
    assert target.authority_evidence["via"] == "ptr_domain"
    assert target.authority_evidence["ptr"]["source"] == "verification"
    checks = case.authority_evidence["authenticity"]["checks"]
    dkim_check = next(c for c in checks if c["method"] == "dkim")
    assert (
        dkim_check["result"] == "pass" and dkim_check["detail"]["key_lookup"]["server"] == conf.resolvers[0]
    )
    assert {c["identity"]: c["result"] for c in checks if c["method"] == "spf"} == {
        "mailfrom": "pass",
        "helo": "pass",
    }
    assert case.authority_evidence["authenticity"]["dmarc_policy"]["p"] == "reject"
    assert len(rdap_server.requests) == before  # the PTR domain decided: RDAP not asked
    assert outbox(session, case) == []
    assert (
        session.scalar(
            select(AuditEvent).where(
                AuditEvent.case_id == case.id, AuditEvent.action == "authority.evaluated"
            )
        )
        is not None
    )

    case.verification_result = CheckResult.PASS
    target.status = TargetStatus.PASS
    assert svc.is_auto_delist_eligible(case, conf.model_copy(update={"auto_delist": True}))
    assert not svc.is_auto_delist_eligible(case, conf)  # the deployment does not allow it (default)


def test_forged_results_above_ours_are_not_trusted_and_the_sender_is_asked(
    session: Session, conf: Settings, resolver: DnspythonDns
) -> None:
    forged = (
        b"Authentication-Results: mx.example.test; dkim=pass header.d=isp.example header.s=sel1;\r\n"
        b"\tspf=pass smtp.mailfrom=noc@isp.example; dmarc=pass header.from=isp.example\r\n"
    ) + request_body("noc@isp.example", message_id="<forged-1@attacker.test>")
    # The attacker also HELOs as our MX; our MTA records its real address and its own (failing) results.
    raw = delivered(
        forged,
        client_ip="198.51.100.66",
        helo="mx.example.test",
        mailfrom="noc@isp.example",
        our_results="spf=fail smtp.mailfrom=noc@isp.example; dkim=none; dmarc=fail header.from=isp.example",
    )
    case = make_case(
        session, "noc@isp.example", "192.0.2.7", ptr={"192.0.2.7": ["static-customer-7.isp.example"]}
    )
    result = svc.evaluate_case_authority(session, case, raw, conf, resolver, HttpRdap.from_settings(conf))

    assert result.result == CheckResult.FAIL
    ar = case.authority_evidence["authenticity"]["authentication_results"]
    assert len(ar["untrusted_ours"]) == 1 and "dmarc=pass" in ar["untrusted_ours"][0]["raw"]
    assert ar["boundary"]["from_ips"] == ["198.51.100.66"]
    assert case.targets[0].authority_result == CheckResult.FAIL
    rows = outbox(session, case)
    assert [r.template_key for r in rows] == ["wrong_sender"]
    body = rows[0].raw.decode("utf-8", "replace")
    assert "DMARC" in body and "noc@isp.example" in body
    assert case.status == CaseStatus.AWAITING_REQUESTER
    assert case.flags["authority_reply"]["key"] == "wrong_sender"

    svc.evaluate_case_authority(session, case, raw, conf, resolver, HttpRdap.from_settings(conf))
    assert len(outbox(session, case)) == 1  # the same message is never answered twice


def test_multi_owner_request_passes_only_for_the_senders_network(
    session: Session,
    conf: Settings,
    resolver: DnspythonDns,
    keys: dict[str, DkimKey],
    rdap_server: RdapServer,
) -> None:
    raw = delivered(
        sign(request_body("noc@noc.isp.example", body="192.0.2.7 and 198.51.100.0/30\r\n"), keys["isp"]),
        mailfrom="noc@noc.isp.example",
        **ISP_MAIL,
    )
    # no stored PTR names for the second target: the service looks them up in Knot
    case = make_case(
        session,
        "noc@noc.isp.example",
        "192.0.2.7",
        "198.51.100.0/30",
        ptr={"192.0.2.7": ["static-customer-7.isp.example"]},
    )
    result = svc.evaluate_case_authority(session, case, raw, conf, resolver, HttpRdap.from_settings(conf))

    assert result.result == CheckResult.PARTIAL
    mine, theirs = case.targets
    assert mine.authority_result == CheckResult.PASS
    assert theirs.authority_result == CheckResult.FAIL
    assert theirs.authority_evidence["ptr"]["source"] == "lookup"
    assert theirs.authority_evidence["ptr"]["names"] == ["host-1.other.example", "host-2.other.example"]
    assert [c["email"] for c in theirs.authority_evidence["rdap_contacts"]] == [
        "registry@other.example",
        "abuse@other.example",
    ]
    assert "/rdap/ip/198.51.100.0/30" in rdap_server.requests
    assert [r.template_key for r in outbox(session, case)] == ["wrong_sender"]
    assert any("198.51.100.0/30" in line for line in result.checks)


def test_rdap_contact_entitles_and_the_answer_is_cached(
    session: Session,
    conf: Settings,
    resolver: DnspythonDns,
    keys: dict[str, DkimKey],
    rdap_server: RdapServer,
) -> None:
    raw = delivered(
        sign(request_body("hostmaster@isp.example"), keys["isp"]),
        mailfrom="hostmaster@isp.example",
        **ISP_MAIL,
    )
    ptr = {"203.0.113.5": ["host-203-0-113-5.dsl.carrier.example"]}
    case = make_case(session, "hostmaster@isp.example", "203.0.113.5", ptr=ptr)
    rdap = HttpRdap.from_settings(conf)
    result = svc.evaluate_case_authority(session, case, raw, conf, resolver, rdap)
    assert result.result == CheckResult.PASS
    assert case.targets[0].authority_evidence["via"] == "rdap_contact"
    url = rdap_server.base_url + "ip/203.0.113.5"
    cached = session.get(RdapCache, url)
    assert cached is not None and cached.data["handle"] == "NET-203-0-113-0"
    assert cached.expires_at is not None and cached.expires_at > utcnow()

    requests = len(rdap_server.requests)
    again = svc.evaluate_case_authority(session, case, raw, conf, resolver, rdap)
    assert again.result == CheckResult.PASS
    assert len(rdap_server.requests) == requests
    assert case.targets[0].authority_evidence["rdap"]["cached"] is True

    cached.expires_at = utcnow()  # expired: asked again
    svc.evaluate_case_authority(session, case, raw, conf, resolver, rdap)
    assert len(rdap_server.requests) == requests + 1


def test_rdap_timeout_is_unverifiable_not_failed(
    session: Session, conf: Settings, resolver: DnspythonDns, keys: dict[str, DkimKey], silent_rdap: str
) -> None:
    conf = conf.model_copy(update={"rdap_base_urls": [silent_rdap], "rdap_timeout": 0.5})
    raw = delivered(
        sign(request_body("noc@noc.isp.example"), keys["isp"]), mailfrom="noc@noc.isp.example", **ISP_MAIL
    )
    case = make_case(
        session, "noc@noc.isp.example", "198.51.100.1", ptr={"198.51.100.1": ["host-1.other.example"]}
    )
    started = time.monotonic()
    result = svc.evaluate_case_authority(session, case, raw, conf, resolver, HttpRdap.from_settings(conf))
    assert time.monotonic() - started < 5
    assert result.result == CheckResult.UNVERIFIABLE
    evidence = case.targets[0].authority_evidence
    assert evidence["rdap"]["status"] == "unverifiable"
    assert evidence["rdap"]["errors"][0]["kind"] == "timeout"
    assert outbox(session, case) == []
    assert session.scalar(select(RdapCache)) is None  # failures are not cached


def test_dns_that_never_answers_makes_authenticity_unverifiable(
    session: Session, conf: Settings, dead_dns: Any, keys: dict[str, DkimKey]
) -> None:
    dead = DnspythonDns([dead_dns.nameserver], timeout=0.3, retries=0)
    raw = delivered(
        sign(request_body("noc@noc.isp.example"), keys["isp"]), mailfrom="noc@noc.isp.example", **ISP_MAIL
    )
    case = make_case(
        session, "noc@noc.isp.example", "192.0.2.7", ptr={"192.0.2.7": ["static-customer-7.isp.example"]}
    )
    result = svc.evaluate_case_authority(session, case, raw, conf, dead, HttpRdap.from_settings(conf))
    assert result.result == CheckResult.UNVERIFIABLE
    checks = {(c.method, c.identity): c.result for c in result.authenticity.checks}
    assert checks[("dkim", "sel1")] == "temperror"
    assert checks[("spf", "mailfrom")] == "temperror"
    assert outbox(session, case) == []


def test_strict_dkim_alignment_from_the_organizational_dmarc_record(
    session: Session, conf: Settings, resolver: DnspythonDns, keys: dict[str, DkimKey]
) -> None:
    # d=other.example signs for noc@ops.other.example; other.example publishes adkim=s: not aligned.
    raw = delivered(
        sign(request_body("noc@ops.other.example"), keys["other"]),
        client_ip="203.0.113.99",
        helo="attacker.test",
        mailfrom="noc@ops.other.example",
    )
    case = make_case(
        session, "noc@ops.other.example", "198.51.100.1", ptr={"198.51.100.1": ["host-1.other.example"]}
    )
    result = svc.evaluate_case_authority(session, case, raw, conf, resolver, HttpRdap.from_settings(conf))
    assert next(c for c in result.authenticity.checks if c.method == "dkim").result == "pass"
    assert result.authenticity.policy is not None and result.authenticity.policy.domain == "other.example"
    assert result.result == CheckResult.FAIL


def test_freemail_sender_is_told_to_contact_the_isp(
    session: Session, conf: Settings, resolver: DnspythonDns
) -> None:
    raw = delivered(
        request_body("customer@freemail.example"),
        client_ip="198.51.100.70",
        helo="out.freemail.example",
        mailfrom="customer@freemail.example",
    )
    case = make_case(
        session,
        "customer@freemail.example",
        "192.0.2.7",
        ptr={"192.0.2.7": ["static-customer-7.isp.example"]},
    )
    result = svc.evaluate_case_authority(session, case, raw, conf, resolver, HttpRdap.from_settings(conf))
    assert result.authenticity.result == CheckResult.PASS  # SPF pass, aligned
    assert result.result == CheckResult.FAIL
    assert [r.template_key for r in outbox(session, case)] == ["freemail"]
    assert case.flags["freemail_sender"] is True


def test_lookalike_and_display_name_spoof_are_flagged(
    session: Session, conf: Settings, resolver: DnspythonDns, keys: dict[str, DkimKey]
) -> None:
    raw = delivered(
        sign(request_body("noc@lsp.example", from_name="abuse@isp.example"), keys["lsp"]),
        client_ip="198.51.100.66",
        helo="attacker.test",
        mailfrom="noc@lsp.example",
    )
    case = make_case(
        session, "noc@lsp.example", "192.0.2.7", ptr={"192.0.2.7": ["static-customer-7.isp.example"]}
    )
    result = svc.evaluate_case_authority(session, case, raw, conf, resolver, HttpRdap.from_settings(conf))
    assert result.authenticity.result == CheckResult.PASS  # the lookalike domain signs its own mail
    assert result.result == CheckResult.FAIL
    kinds = [f["kind"] for f in case.flags["authority_flags"]]
    assert kinds == ["display_name_spoof", "lookalike_domain"]
    assert "isp.example" in case.flags["authority_flags"][1]["detail"]


def test_key_published_by_dynamic_update_and_the_verification_engine_resolver(
    session: Session, conf: Settings, knot_dns: Any, keys: dict[str, DkimKey]
) -> None:
    from tmsi.adapters.resolver import DnsResolver

    rotated = keys["rotated"]
    update = dns.update.UpdateMessage("isp.example")
    update.replace(f"{rotated.selector}._domainkey.isp.example.", 60, "TXT", f'"{rotated.txt}"')
    assert dns.query.tcp(update, knot_dns.host, port=knot_dns.port, timeout=5).rcode() == dns.rcode.NOERROR

    raw = delivered(
        sign(request_body("noc@noc.isp.example"), rotated), mailfrom="noc@noc.isp.example", **ISP_MAIL
    )
    case = make_case(session, "noc@noc.isp.example", "192.0.2.7")  # PTR looked up through the engine
    engine = DnsResolver.from_settings(conf)
    result = svc.evaluate_case_authority(session, case, raw, conf, engine, HttpRdap.from_settings(conf))
    assert result.result == CheckResult.PASS
    assert next(c for c in result.authenticity.checks if c.method == "dkim").identity == "sel2027"
    assert case.targets[0].authority_evidence["ptr"]["names"] == ["static-customer-7.isp.example"]


def test_job_evaluates_the_latest_inbound_mail_and_commits(
    factory: sessionmaker[Session], conf: Settings, keys: dict[str, DkimKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tmsi.db import unit_of_work

    raw = delivered(
        sign(request_body("noc@noc.isp.example"), keys["isp"]), mailfrom="noc@noc.isp.example", **ISP_MAIL
    )
    with unit_of_work(factory) as session:
        case = make_case(
            session, "noc@noc.isp.example", "192.0.2.7", ptr={"192.0.2.7": ["static-customer-7.isp.example"]}
        )
        session.add(
            Message(
                case_id=case.id,
                direction=Direction.IN,
                dedupe_key="job-1",
                content_hash="0" * 64,
                raw=raw,
                raw_size=len(raw),
                to_addrs=[],
                references=[],
                headers=[],
                attachments=[],
                explain={},
            )
        )
        case_id = case.id
    assert svc.job_evaluate_authority(conf, factory, case_id) == "pass"
    with factory() as session:
        stored = session.get(Case, case_id)
        assert stored is not None and stored.authority_result == CheckResult.PASS
        assert stored.authority_evidence["message_sha256"]
        evidence, version = stored.authority_evidence, stored.lock_version
    # Queued again by a sweep while the first task waited: nothing is evaluated or written twice.
    assert svc.job_evaluate_authority(conf, factory, case_id) == "already evaluated"
    with factory() as session:
        again = session.get_one(Case, case_id)
        assert again.authority_evidence == evidence and again.lock_version == version
    assert svc.job_evaluate_authority(conf, factory, 987654) == "missing"

    with unit_of_work(factory) as session:
        empty_id = make_case(session, "noc@noc.isp.example", "192.0.2.7").id
    assert svc.job_evaluate_authority(conf, factory, empty_id) == "none"
    with factory() as session:
        empty = session.get(Case, empty_id)
        assert empty is not None and empty.authority_result == CheckResult.NONE


def test_rdap_cache_row_written_meanwhile_by_another_worker_is_updated(session: Session) -> None:
    from sqlalchemy import insert

    url = "http://127.0.0.1:9/rdap/ip/192.0.2.0/24"
    old = utcnow()
    session.execute(insert(RdapCache).values(key=url, data={"handle": "OLD"}, fetched_at=old, expires_at=old))
    later = utcnow()
    svc._store_rdap(session, None, url, {"handle": "NEW"}, later, later)  # it did not see the row
    row = session.get(RdapCache, url)
    assert row is not None and row.data == {"handle": "NEW"}


def test_cli_evaluate_prints_the_result_and_commits(
    factory: sessionmaker[Session],
    conf: Settings,
    keys: dict[str, DkimKey],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from click.testing import CliRunner

    from tmsi.cli.authority import authority
    from tmsi.db import unit_of_work

    raw = delivered(
        sign(request_body("noc@lsp.example", from_name="abuse@isp.example"), keys["lsp"]),
        client_ip="198.51.100.66",
        helo="attacker.test",
        mailfrom="noc@lsp.example",
    )
    with unit_of_work(factory) as session:
        case = make_case(
            session, "noc@lsp.example", "192.0.2.7", ptr={"192.0.2.7": ["static-customer-7.isp.example"]}
        )
        session.add(
            Message(
                case_id=case.id,
                direction=Direction.IN,
                dedupe_key="cli-1",
                content_hash="1" * 64,
                raw=raw,
                raw_size=len(raw),
                to_addrs=[],
                references=[],
                headers=[],
                attachments=[],
                explain={},
            )
        )
        reference, case_id = case.reference, case.id
    for name, value in {
        "DATABASE_URL": conf.database_url,
        "RESOLVERS": conf.resolvers[0],
        "RDAP_BASE_URLS": conf.rdap_base_urls[0],
        "AUTHSERV_IDS": "mx.example.test",
        "MAILBOX_ADDRESS": "dul@example.test",
    }.items():
        monkeypatch.setenv(f"TMSI_{name}", value)
    out = CliRunner().invoke(authority, ["evaluate", reference])
    assert out.exit_code == 0, out.output
    assert f"{reference}: authority fail" in out.output
    assert "flag lookalike_domain" in out.output and "reply: wrong_sender" in out.output
    with factory() as session:
        stored = session.get(Case, case_id)
        assert stored is not None and stored.authority_result == CheckResult.FAIL
        assert len(outbox(session, stored)) == 1
    missing = CliRunner().invoke(authority, ["evaluate", "TMSI-1999-000001"])
    assert missing.exit_code != 0 and "no case" in missing.output
