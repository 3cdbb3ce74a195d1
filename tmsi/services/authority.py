"""Authority of a delisting request: is the mail authentic, and may its sender speak for each network?

Authenticity: our own MTA's Authentication-Results (trust rule in :mod:`tmsi.domain.authority_headers`);
where it gives no result, DKIM (dkimpy), SPF for the envelope sender and HELO (pyspf) and the DMARC policy
are checked here, with every DNS question going to the configured resolvers through an
:class:`~tmsi.adapters.authority_dns.AuthorityDns`.  Entitlement, per target: the registered domain of
the PTR names (as verification stored them, or looked up), or the network's RDAP contacts (cached in the
``rdap_cache`` table).  The service writes the results on the case and its targets, flags what an analyst
should look at, and queues the "wrong_sender" or "freemail" reply.  It never commits.
"""

from __future__ import annotations

import binascii
import contextvars
import hashlib
import ipaddress
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import getaddresses
from functools import lru_cache
from importlib import resources
from typing import Any

import dkim
import spf
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tmsi.adapters.authority_dns import AuthorityDns, CachingDns, DnsAnswer, DnspythonDns
from tmsi.adapters.rdap import HttpRdap, RdapClient, RdapError
from tmsi.config import Settings
from tmsi.db import unit_of_work, utcnow
from tmsi.domain.authority import (
    AuthCheck,
    Authenticity,
    DmarcPolicy,
    Entitlement,
    RdapContact,
    checks_from_mta,
    decide_authenticity,
    decide_entitlement,
    display_name_spoof,
    domain_of,
    lookalike_flags,
    normalize_domain,
    overall_result,
    parse_dmarc_record,
    rdap_contacts,
    registered_domain,
)
from tmsi.domain.authority_headers import TrustedResults, evaluate_trust
from tmsi.domain.mail import decode_header_value
from tmsi.models import (
    Case,
    CaseStatus,
    CaseTarget,
    CheckResult,
    Direction,
    DnsCheck,
    Message,
    RdapCache,
    TargetStatus,
)

log = logging.getLogger(__name__)
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")

PTR_SAMPLE = 4  # addresses looked up when verification has stored no PTR names for a target
STORED_PTR_ROWS = 2048  # newest verification checks read per target
REPLY_FOR_RESULT = {CheckResult.FAIL: "wrong_sender", CheckResult.PARTIAL: "wrong_sender"}


# --- reference data -----------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def freemail_domains() -> frozenset[str]:
    text = resources.files("tmsi.data").joinpath("freemail.txt").read_text("utf-8")
    return frozenset(
        line.split("#", 1)[0].strip().lower() for line in text.splitlines() if line.split("#", 1)[0].strip()
    )


# --- DNS plumbing: a recording proxy, dkimpy's and pyspf's hooks -----------------------------------------
class RecordingDns:
    """Passes questions on and keeps every answer, so the evidence shows what was asked and answered."""

    def __init__(self, inner: AuthorityDns) -> None:
        self.inner = inner
        self.answers: list[DnsAnswer] = []

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        answer = self.inner.query(name, rdtype)
        self.answers.append(answer)
        return answer


_SPF_DNS: contextvars.ContextVar[AuthorityDns | None] = contextvars.ContextVar("tmsi_spf_dns", default=None)
_PYSPF_LOOKUP = spf.DNSLookup


def _pyspf_lookup(
    name: str, qtype: str, strict: Any = True, timeout: Any = 30
) -> list[tuple[tuple[str, str], Any]]:
    """pyspf's ``DNSLookup`` hook: inside :func:`_spf_dns` the questions go to our resolver."""
    resolver = _SPF_DNS.get()
    if resolver is None:
        return list(_PYSPF_LOOKUP(name, qtype, strict, timeout))
    answer = resolver.query(name, qtype)
    if answer.status == "error":
        raise spf.TempError(f"DNS {answer.error or 'error'} for {name}/{qtype}")
    out: list[tuple[tuple[str, str], Any]] = []
    for record in answer.records:
        if qtype in {"TXT", "SPF"}:
            out.append(((name, qtype), (record.encode("utf-8"),)))
        elif qtype == "MX":
            pref, _, exchange = record.partition(" ")
            out.append(((name, qtype), (int(pref), exchange)))
        else:
            out.append(((name, qtype), record))
    return out


spf.DNSLookup = _pyspf_lookup  # pyspf resolves through this module global; outside _spf_dns it is unchanged


@contextmanager
def _spf_dns(resolver: AuthorityDns) -> Iterator[None]:
    token = _SPF_DNS.set(resolver)
    try:
        yield
    finally:
        _SPF_DNS.reset(token)


def as_authority_dns(resolver: Any) -> AuthorityDns:
    """Accept our AuthorityDns or the verification engine's ``Resolver`` (``resolve_many``)."""
    if hasattr(resolver, "query"):
        return resolver
    if hasattr(resolver, "resolve_many"):
        return EngineDns(resolver)
    raise TypeError(f"not a DNS resolver: {resolver!r}")


class EngineDns:
    """Adapts :class:`tmsi.adapters.resolver.Resolver` (batched, presentation form) to AuthorityDns."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        import dns.rdata

        rdtype = rdtype.upper()
        qname = name.strip().rstrip(".").lower()
        ans = self.engine.resolve_many([(qname + ".", rdtype)])[0]
        server = getattr(ans, "resolver", "")
        if not ans.ok:
            return DnsAnswer(qname, rdtype, "error", error=str(ans.error), server=server)
        if ans.rcode == "NXDOMAIN":
            return DnsAnswer(qname, rdtype, "nxdomain", server=server)
        _owner, records, _chain = ans.chase(rdtype)
        if not records:
            return DnsAnswer(qname, rdtype, "nodata", server=server)
        values = []
        for r in records:
            if rdtype in {"TXT", "SPF"}:
                rd = dns.rdata.from_text("IN", rdtype, r.value)
                values.append(b"".join(rd.strings).decode("utf-8", errors="replace"))  # type: ignore[attr-defined]
            else:
                values.append(r.value.rstrip("."))
        return DnsAnswer(qname, rdtype, "ok", tuple(values), min(r.ttl for r in records), server=server)


_SHARED_DNS: dict[tuple[str, ...], CachingDns] = {}


def shared_dns(settings: Settings) -> CachingDns:
    """One caching resolver per resolver list, shared by the jobs of a worker process."""
    key = (*settings.resolvers, str(settings.dns_timeout), str(settings.authority_dns_cache_seconds))
    if key not in _SHARED_DNS:
        _SHARED_DNS[key] = CachingDns(
            DnspythonDns.from_settings(settings), max_ttl=settings.authority_dns_cache_seconds
        )
    return _SHARED_DNS[key]


# --- message headers ------------------------------------------------------------------------------------
def header_fields(raw: bytes) -> list[tuple[str, str]]:
    """The header fields of a raw message, top-down, values unfolded (not decoded; 8-bit read as UTF-8)."""
    blank = _BLANK_LINE.search(raw)
    head = raw[: blank.start()] if blank else raw
    fields: list[tuple[str, str]] = []
    for line in head.split(b"\n"):
        text = line.decode("utf-8", "replace").rstrip("\r")
        if text[:1] in (" ", "\t"):
            if fields:
                fields[-1] = (fields[-1][0], f"{fields[-1][1]} {text.strip()}".strip())
            continue
        field_name, sep, value = text.partition(":")
        if not sep or not field_name.strip() or " " in field_name.strip():
            continue  # an mbox "From " line or garbage: not a field
        fields.append((field_name.strip(), " ".join(value.split())))
    return fields


@dataclass(frozen=True)
class Sender:
    address: str
    name: str
    authors: int  # addresses in From: DMARC needs exactly one


_SINGLE_AUTHOR = re.compile(r'^\s*(?P<name>(?:"(?:[^"\\]|\\.)*"|[^<"])*)<(?P<addr>[^<>@\s]+@[^<>\s]+)>\s*$')


def sender_of(headers: Sequence[tuple[str, str]]) -> Sender:
    """The From author. ``Name <addr>`` is read as one author even when the name is an unquoted address
    (``abuse@isp.example <x@attacker.test>``, a classic display-name spoof that getaddresses splits)."""
    values = [v for n, v in headers if n.lower() == "from"]
    if len(values) == 1:
        single = _SINGLE_AUTHOR.match(values[0])
        if single:
            name = decode_header_value(single.group("name").strip())
            if len(name) >= 2 and name[0] == name[-1] == '"':
                name = name[1:-1].replace('\\"', '"')
            return Sender(single.group("addr").strip().lower(), name.strip(), 1)
    pairs = [(decode_header_value(n), a.strip().lower()) for n, a in getaddresses(values) if a.strip()]
    if not pairs:
        return Sender("", "", 0)
    return Sender(pairs[0][1], pairs[0][0], len(pairs))


def envelope_sender(headers: Sequence[tuple[str, str]], trust: TrustedResults) -> str | None:
    """``Return-Path`` from the trusted zone: None when unknown, ``""`` for the null sender."""
    for name, value in headers[: trust.zone_end]:
        if name.lower() == "return-path":
            addresses = getaddresses([value])
            return addresses[0][1].strip().lower() if addresses else ""
    return None


# --- direct checks ------------------------------------------------------------------------------------
_EVIDENCE_TAGS = frozenset({"d", "s", "a", "h", "i"})


def _tags(value: str) -> dict[str, str]:
    """The DKIM-Signature tags the evidence shows (not b=/bh=, which are long and say nothing to a reader)."""
    out: dict[str, str] = {}
    for part in value.split(";"):
        key, sep, val = part.partition("=")
        key = key.strip().lower()
        if sep and key in _EVIDENCE_TAGS:
            out[key] = "".join(val.split())
    return out


# dkimpy errors that say the signature or key cannot be evaluated at all (RFC 6376 PERMFAIL), not "fails"
_DKIM_PERMERRORS = (
    "KeyFormatError",
    "MessageFormatError",
    "ParameterError",
    "NaClNotFoundError",
    "UnknownKeyTypeError",
    "unknown signature algorithm",
)


@lru_cache(maxsize=1024)
def _public_key(name: bytes, record: bytes) -> tuple[Any, ...]:
    """dkimpy's parse of a key record; the same record is parsed once (pure-Python ASN.1 is slow)."""
    return tuple(dkim.evaluate_pk(name, record))


class _Verifier(dkim.DKIM):
    """dkimpy's verifier with the key parse cached; otherwise DomainSigner.verify_sig unchanged."""

    def verify_sig(self, sig: Any, include_headers: Any, sig_header: Any, dnsfunc: Any) -> Any:
        name = sig[b"s"] + b"._domainkey." + sig[b"d"] + b"."
        try:
            record = dnsfunc(name, timeout=self.timeout)
            if not record:
                raise dkim.KeyFormatError(f"missing public key: {name!r}")
            self.pk, self.keysize, self.ktag, self.seqtlsrpt = _public_key(name, record)
        except (dkim.KeyFormatError, binascii.Error, dkim.DnsTimeoutError) as exc:
            self.logger.info("DKIM key %r: %s", name, exc)
            return False
        return self.verify_sig_process(sig, include_headers, sig_header, dnsfunc)


def verify_dkim(
    raw: bytes, headers: Sequence[tuple[str, str]], dns: AuthorityDns, *, minkey: int = 1024
) -> list[AuthCheck]:
    """Verify every DKIM-Signature of the message; the key look-ups go to ``dns``."""
    signatures = [v for n, v in headers if n.lower() == "dkim-signature"]
    if not signatures:
        return []
    outcome: dict[str, Any] = {}

    def get_txt(name: bytes | str, timeout: int = 5) -> bytes | None:
        qname = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        answer = dns.query(qname, "TXT")
        outcome["answer"] = answer
        if answer.status == "error":
            raise dkim.DnsTimeoutError(answer.error or "DNS error")
        if not answer.ok:
            return None
        keys = [r for r in answer.records if "p=" in r] or list(answer.records)
        return keys[0].encode("utf-8")

    checks: list[AuthCheck] = []
    verifier = _Verifier(raw, minkey=minkey, logger=logging.getLogger("tmsi.dkim"))
    for idx, value in enumerate(signatures):
        tags = _tags(value)
        domain, selector = normalize_domain(tags.get("d", "")), tags.get("s", "")
        detail: dict[str, Any] = {
            "selector": selector,
            "algorithm": tags.get("a", ""),
            "signed_headers": tags.get("h", ""),
        }
        outcome.clear()
        try:
            ok = verifier.verify(idx=idx, dnsfunc=get_txt)
            error = ""
        except dkim.DKIMException as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # dkimpy raises plain errors on some malformed or unsupported signatures
            ok, error = (
                False,
                f"ParameterError: unsupported or malformed signature ({type(exc).__name__}: {exc})",
            )
        answer: DnsAnswer | None = outcome.get("answer")
        if answer is not None:
            detail["key_lookup"] = answer.as_dict()
        if ok:
            result = "pass"
        elif answer is not None and answer.status == "error":
            result, error = "temperror", f"key look-up failed: {answer.error}"
        elif answer is not None and not answer.ok:
            result, error = "permerror", f"no key at {selector}._domainkey.{domain} ({answer.status})"
        elif any(kind in error for kind in _DKIM_PERMERRORS):
            result = "permerror"
        else:
            result, error = "fail", error or "the signature does not verify"
        if error:
            detail["error"] = error
        checks.append(AuthCheck("dkim", result, domain, selector, "direct", detail=detail))
    return checks


def check_spf(
    client_ip: str, mailfrom: str | None, helo: str, dns: AuthorityDns, *, timeout: float = 20.0
) -> list[AuthCheck]:
    """SPF (RFC 7208) of the envelope sender and of the HELO name, for the client address our MTA recorded."""
    checks: list[AuthCheck] = []
    helo_is_name = bool(helo) and not helo.startswith("[") and "." in helo and not _is_ip(helo)
    with _spf_dns(dns):
        if mailfrom:
            domain = domain_of(mailfrom)
            res, _code, expl = spf.query(
                i=client_ip, s=mailfrom, h=helo or domain, timeout=timeout, querytime=timeout
            ).check()
            checks.append(
                AuthCheck(
                    "spf",
                    res,
                    domain,
                    "mailfrom",
                    "direct",
                    detail={"client_ip": client_ip, "mailfrom": mailfrom, "helo": helo, "explanation": expl},
                )
            )
        if helo_is_name:
            res, _code, expl = spf.query(
                i=client_ip, s=f"postmaster@{helo}", h=helo, timeout=timeout, querytime=timeout
            ).check()
            checks.append(
                AuthCheck(
                    "spf",
                    res,
                    normalize_domain(helo),
                    "helo",
                    "direct",
                    detail={
                        "client_ip": client_ip,
                        "helo": helo,
                        "explanation": expl,
                        "null_mailfrom": mailfrom == "",
                    },
                )
            )
    return checks


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]").removeprefix("IPv6:"))
    except ValueError:
        return False
    return True


def fetch_dmarc_policy(from_domain: str, dns: AuthorityDns) -> tuple[DmarcPolicy | None, str]:
    """The DMARC record of the From domain, else of its organizational domain (RFC 7489 section 6.6.3)."""
    candidates = [from_domain]
    org = registered_domain(from_domain)
    if org and org != from_domain:
        candidates.append(org)
    for domain in candidates:
        answer = dns.query(f"_dmarc.{domain}", "TXT")
        if answer.status == "error":
            return None, "unverifiable"
        records = [p for p in (parse_dmarc_record(r, domain) for r in answer.records) if p is not None]
        if len(records) == 1:
            return records[0], "ok"
    return None, "none"


def evaluate_authenticity(
    raw: bytes | None,
    headers: Sequence[tuple[str, str]],
    settings: Settings,
    dns: AuthorityDns | None,
) -> tuple[Authenticity, Sender]:
    """Our MTA's results first; DKIM, SPF and the DMARC policy checked here where it gave none.

    ``dns=None`` is the offline mode (``tmsi mail explain``): only the trusted header results are used.
    """
    trust = evaluate_trust(
        headers, settings.authserv_ids, settings.authority_own_hosts, settings.own_networks
    )
    sender = sender_of(headers)
    from_domain = domain_of(sender.address)
    recorder = RecordingDns(dns) if dns is not None else None
    checks = checks_from_mta(trust.results(), from_domain)
    methods = {c.method for c in checks}
    mta_dmarc = next((c.result for c in checks if c.method == "dmarc"), "")
    evidence: dict[str, Any] = {
        "authentication_results": trust.as_dict(),
        "sender": sender.address,
        "sender_name": sender.name,
    }
    mailfrom = envelope_sender(headers, trust)
    evidence["envelope_sender"] = mailfrom
    not_checked: list[str] = []
    policy: DmarcPolicy | None = None
    policy_status = "mta" if mta_dmarc in {"pass", "fail"} else "none"
    if mta_dmarc not in {"pass", "fail"}:
        if "dkim" not in methods:
            if recorder is not None and raw is not None:
                checks += verify_dkim(raw, headers, recorder, minkey=settings.dkim_min_key_bits)
            elif any(n.lower() == "dkim-signature" for n, _ in headers):
                not_checked.append("DKIM (the message is signed; verifying it needs DNS)")
        if "spf" not in methods:
            boundary = trust.boundary
            if boundary is None or not boundary.from_ips:
                not_checked.append("SPF (no client address recorded by our MTA)")
            elif recorder is None:
                not_checked.append("SPF (needs DNS)")
            else:
                checks += check_spf(
                    boundary.from_ips[0],
                    mailfrom,
                    boundary.from_host,
                    recorder,
                    timeout=max(1.0, settings.dns_timeout * (settings.dns_retries + 1)),
                )
        if recorder is not None and from_domain:
            policy, policy_status = fetch_dmarc_policy(from_domain, recorder)
    if sender.authors > 1:
        result = Authenticity(
            CheckResult.FAIL,
            [f"the From field names {sender.authors} authors; DMARC needs one"],
            checks,
            from_domain,
        )
    else:
        result = decide_authenticity(checks, from_domain, policy=policy, policy_status=policy_status)
    if not_checked:
        evidence["not_checked"] = not_checked
        if result.result == CheckResult.NONE and dns is None:
            result.reasons = ["our mail server recorded no result; direct checks need DNS (offline)"]
    if recorder is not None:
        evidence["dns"] = [a.as_dict() for a in recorder.answers]
    result.evidence = evidence
    return result, sender


# --- entitlement: PTR names and RDAP ---------------------------------------------------------------------
@dataclass
class PtrFacts:
    names: list[str]
    status: str  # ok | none | unverifiable | not_checked
    source: str  # verification | summary | lookup | none
    evidence: list[dict[str, Any]] = field(default_factory=list)


def _sample_addresses(network: str, limit: int = PTR_SAMPLE) -> list[str]:
    net = ipaddress.ip_network(network, strict=False)
    if net.num_addresses == 1:
        return [str(net.network_address)]
    if net.version == 6 and net.prefixlen < 120:
        return []  # cannot be enumerated: verification samples the requester's named addresses
    hosts = net.hosts() if net.num_addresses > 2 else iter(net)
    out = []
    for addr in hosts:
        out.append(str(addr))
        if len(out) >= limit:
            break
    return out


def lookup_ptr_names(network: str, resolver: AuthorityDns) -> PtrFacts:
    import dns.reversename

    names: list[str] = []
    evidence: list[dict[str, Any]] = []
    errors = 0
    addresses = _sample_addresses(network)
    for address in addresses:
        answer = resolver.query(dns.reversename.from_address(address).to_text(), "PTR")
        evidence.append(answer.as_dict())
        if answer.status == "error":
            errors += 1
        names.extend(r.rstrip(".").lower() for r in answer.records)
    if names:
        return PtrFacts(sorted(set(names)), "ok", "lookup", evidence)
    if not addresses:
        return PtrFacts([], "not_checked", "none", evidence)
    return PtrFacts([], "unverifiable" if errors else "none", "lookup", evidence)


def target_ptr_facts(session: Session, target: CaseTarget, dns: AuthorityDns | None) -> PtrFacts:
    """PTR names of a target as verification stored them (latest check per address, from the newest
    ``STORED_PTR_ROWS`` checks: a /16 has 65,536 of them per run), else looked up."""
    rows = session.scalars(
        select(DnsCheck)
        .where(DnsCheck.target_id == target.id)
        .order_by(DnsCheck.checked_at.desc(), DnsCheck.id.desc())
        .limit(STORED_PTR_ROWS)
    ).all()
    latest: dict[str, DnsCheck] = {}
    for row in rows:
        latest.setdefault(row.address, row)
    if latest:
        names = sorted({n.rstrip(".").lower() for row in latest.values() for n in (row.ptr_names or [])})
        unverifiable = any(row.result == CheckResult.UNVERIFIABLE for row in latest.values())
        status = "ok" if names else ("unverifiable" if unverifiable else "none")
        return PtrFacts(
            names,
            status,
            "verification",
            [
                {
                    "address": r.address,
                    "ptr_names": r.ptr_names,
                    "result": r.result.value,
                    "checked_at": r.checked_at.isoformat(),
                }
                for r in latest.values()
            ][:16],
        )
    summary_names = (target.summary or {}).get("ptr_names")
    if isinstance(summary_names, list) and summary_names:
        return PtrFacts(sorted({str(n).rstrip(".").lower() for n in summary_names}), "ok", "summary")
    if dns is not None:
        return lookup_ptr_names(target.network, dns)
    return PtrFacts([], "not_checked", "none")


@dataclass
class RdapFacts:
    status: str  # ok | not_found | unverifiable | not_checked
    contacts: list[RdapContact]
    evidence: dict[str, Any]


RdapLookup = Callable[[str], RdapFacts]


def rdap_facts(
    session: Session | None, rdap: RdapClient, network: str, settings: Settings, now: datetime | None = None
) -> RdapFacts:
    """RDAP contacts of ``network``: from the ``rdap_cache`` table while fresh, else fetched (and cached)."""
    now = now or utcnow()
    urls = rdap.urls_for(network)
    if not urls:
        return RdapFacts("not_found", [], {"error": "no RDAP service in the bootstrap covers the network"})
    errors: list[dict[str, str]] = []
    for url in urls:
        cached = session.get(RdapCache, url) if session is not None else None
        if cached is not None and cached.expires_at is not None and cached.expires_at > now:
            return _facts_from(cached.data, url, cached=True, fetched_at=cached.fetched_at)
        try:
            response = rdap.fetch(url)
        except RdapError as exc:
            errors.append({"url": url, "kind": exc.kind, "error": str(exc)})
            continue
        data = response.data if response.status == "ok" else {"_status": "not_found"}
        if session is not None:
            _store_rdap(session, cached, url, data, now, now + timedelta(seconds=settings.rdap_cache_seconds))
        return _facts_from(data, url, cached=False, fetched_at=now)
    return RdapFacts("unverifiable", [], {"errors": errors})


def _store_rdap(
    session: Session,
    cached: RdapCache | None,
    url: str,
    data: dict[str, Any],
    now: datetime,
    expires: datetime,
) -> None:
    if cached is None:
        try:
            with session.begin_nested():  # another worker may cache the same URL at the same time
                session.add(RdapCache(key=url, data=data, fetched_at=now, expires_at=expires))
            return
        except IntegrityError:
            cached = session.get(RdapCache, url, populate_existing=True)
            if cached is None:
                return
    cached.data, cached.fetched_at, cached.expires_at = data, now, expires
    session.flush()


def _facts_from(data: dict[str, Any], url: str, *, cached: bool, fetched_at: datetime) -> RdapFacts:
    base = {"url": url, "cached": cached, "fetched_at": fetched_at.isoformat()}
    if data.get("_status") == "not_found":
        return RdapFacts("not_found", [], base)
    contacts = rdap_contacts(data)
    return RdapFacts(
        "ok",
        contacts,
        {
            **base,
            "handle": data.get("handle", ""),
            "name": data.get("name", ""),
            "range": [data.get("startAddress", ""), data.get("endAddress", "")],
        },
    )


# --- orchestration ----------------------------------------------------------------------------------------
@dataclass
class TargetAuthority:
    network: str
    result: CheckResult
    entitlement: Entitlement
    evidence: dict[str, Any]


@dataclass
class AuthorityResult:
    result: CheckResult
    reasons: list[str]
    authenticity: Authenticity
    targets: list[TargetAuthority]
    flags: list[dict[str, str]]
    sender: Sender
    reply: str | None = None  # template key queued (or that should be queued)
    checks: list[str] = field(default_factory=list)  # what was checked, in words, for the reply

    def evidence(self) -> dict[str, Any]:
        return {
            "result": self.result.value,
            "reasons": list(self.reasons),
            "sender": self.sender.address,
            "authenticity": self.authenticity.as_dict(),
            "targets": [
                {
                    "network": t.network,
                    "result": t.result.value,
                    "reasons": t.entitlement.reasons,
                    "via": t.entitlement.via,
                }
                for t in self.targets
            ],
            "flags": list(self.flags),
            "checks": list(self.checks),
            "reply": self.reply,
            "evaluated_at": utcnow().isoformat(),
        }


def sender_flags(sender: Sender, references: Sequence[str]) -> list[dict[str, str]]:
    return [dict(f) for f in _sender_flags(sender.name, sender.address, tuple(sorted(set(references))))]


@lru_cache(maxsize=4096)
def _sender_flags(name: str, address: str, references: tuple[str, ...]) -> tuple[dict[str, str], ...]:
    sender = Sender(address, name, 1)
    flags: list[dict[str, str]] = []
    spoof = display_name_spoof(sender.name, sender.address)
    if spoof:
        flags.append({"kind": "display_name_spoof", "detail": spoof})
    for detail in lookalike_flags(domain_of(sender.address), references):
        flags.append({"kind": "lookalike_domain", "detail": detail})
    if registered_domain(domain_of(sender.address)) in freemail_domains():
        flags.append({"kind": "freemail", "detail": f"{sender.address} is a freemail address"})
    return tuple(flags)


def evaluate_authority(
    raw: bytes,
    targets: Sequence[tuple[str, PtrFacts]],
    settings: Settings,
    dns: AuthorityDns,
    rdap_lookup: RdapLookup,
    *,
    headers: Sequence[tuple[str, str]] | None = None,
) -> AuthorityResult:
    """The whole evaluation without a session: authenticity, then each network's entitlement."""
    headers = list(headers) if headers is not None else header_fields(raw)
    authenticity, sender = evaluate_authenticity(raw, headers, settings, dns)
    freemail = freemail_domains()
    sender_reg = registered_domain(domain_of(sender.address))
    per_target: list[TargetAuthority] = []
    references: list[str] = [settings.mail_domain]
    for network, ptr in targets:
        ptr_match = bool(ptr.names) and {registered_domain(n) for n in ptr.names} == {sender_reg}
        rdap = RdapFacts("not_checked", [], {})
        if authenticity.result != CheckResult.PASS:
            # the sender is not proven, so its entitlement cannot help: spare the registries the query
            rdap.evidence["note"] = "not asked: the message is not authenticated"
        elif not ptr_match and sender_reg and sender_reg not in freemail:
            rdap = rdap_lookup(network)
        ent = decide_entitlement(
            sender.address,
            ptr_names=ptr.names,
            ptr_status=ptr.status,
            rdap_status=rdap.status,
            contacts=rdap.contacts,
            freemail=freemail,
        )
        references += ptr.names + [domain_of(c.email) for c in rdap.contacts]
        result = ent.result if authenticity.result == CheckResult.PASS else authenticity.result
        per_target.append(
            TargetAuthority(
                network,
                result,
                ent,
                {
                    "result": result.value,
                    "entitlement": ent.result.value,
                    "via": ent.via,
                    "reasons": ent.reasons,
                    "authenticity": authenticity.result.value,
                    "ptr": {
                        "source": ptr.source,
                        "status": ptr.status,
                        "names": ptr.names,
                        "evidence": ptr.evidence,
                    },
                    "rdap": {"status": rdap.status, **rdap.evidence},
                    **ent.evidence,
                },
            )
        )
    overall = overall_result(authenticity.result, [t.entitlement.result for t in per_target])
    reasons = list(authenticity.reasons)
    if authenticity.result == CheckResult.PASS:
        reasons += [
            f"{t.network}: {t.entitlement.result.value}: {'; '.join(t.entitlement.reasons)}"
            for t in per_target
        ]
    if not per_target and authenticity.result == CheckResult.PASS:
        reasons.append("the request names no networks to check the sender against")
    flags = sender_flags(sender, references)
    checks = describe_checks(authenticity, per_target)
    reply: str | None = None
    if any(f["kind"] == "freemail" for f in flags):
        reply = "freemail"
    elif overall in REPLY_FOR_RESULT:
        reply = REPLY_FOR_RESULT[overall]
    return AuthorityResult(overall, reasons, authenticity, per_target, flags, sender, reply, checks)


def describe_checks(authenticity: Authenticity, targets: Sequence[TargetAuthority]) -> list[str]:
    """What was checked, one line each, in words a requester understands (the reply's ``extra.checks``)."""
    lines = [c.describe() for c in authenticity.checks]
    if authenticity.policy is not None:
        lines.append(f"DMARC record of {authenticity.policy.domain}: p={authenticity.policy.policy}")
    lines.append(f"authenticity of the message: {authenticity.result.value}")
    if authenticity.result != CheckResult.PASS:
        lines.append(
            "the sender could not be matched to the networks because the message is not authenticated"
        )
        return lines
    for t in targets:
        lines.append(f"{t.network}: {'; '.join(t.entitlement.reasons)}")
    return lines


def _latest_raw(session: Session, case: Case) -> bytes | None:
    return session.scalar(
        select(Message.raw)
        .where(Message.case_id == case.id, Message.direction == Direction.IN, Message.raw.is_not(None))
        .order_by(Message.received_at.desc(), Message.id.desc())
        .limit(1)
    )


def evaluate_case_authority(
    session: Session,
    case: Case,
    message_raw: bytes | None,
    settings: Settings,
    resolver: Any,
    rdap: RdapClient,
    *,
    queue_replies: bool = True,
) -> AuthorityResult:
    """Evaluate the authority of ``message_raw`` (default: the case's latest inbound mail) for every target;
    store the results on the case and targets, flag the case, queue the reply. Never commits."""
    from tmsi.services import audit

    raw = message_raw if message_raw is not None else _latest_raw(session, case)
    if raw is None:
        raise ValueError(f"{case.reference}: no inbound message to evaluate")
    dns = as_authority_dns(resolver)
    targets = [t for t in case.targets if t.status != TargetStatus.EXCLUDED]
    facts = [(t.network, target_ptr_facts(session, t, dns)) for t in targets]
    now = utcnow()
    result = evaluate_authority(
        raw, facts, settings, dns, lambda net: rdap_facts(session, rdap, net, settings, now)
    )

    before = case.authority_result.value if case.authority_result else None
    for target, outcome in zip(targets, result.targets, strict=True):
        target.authority_result = outcome.result
        target.authority_evidence = outcome.evidence
    evidence = result.evidence()
    digest = hashlib.sha256(raw).hexdigest()[:32]
    evidence["message_sha256"] = digest
    flags = dict(case.flags or {})
    flags["authority_flags"] = [f for f in result.flags if f["kind"] != "freemail"]
    if any(f["kind"] == "freemail" for f in result.flags):
        flags["freemail_sender"] = True
    else:
        flags.pop("freemail_sender", None)
    previous_reply = flags.get("authority_reply") or {}
    if (
        queue_replies
        and result.reply
        and previous_reply.get("message") != digest
        and _queue(session, case, result, settings)
    ):
        flags["authority_reply"] = {"key": result.reply, "message": digest, "at": now.isoformat()}
    case.flags = flags
    case.authority_result = result.result
    case.authority_evidence = evidence
    case.updated_at = now
    audit.record(
        session,
        action="authority.evaluated",
        case=case,
        before={"authority_result": before},
        after={"authority_result": result.result.value},
        detail={
            "flags": result.flags,
            "reply": result.reply,
            "targets": {t.network: t.result.value for t in result.targets},
        },
    )
    session.flush()
    return result


def _queue(session: Session, case: Case, result: AuthorityResult, settings: Settings) -> bool:
    from tmsi.services import cases, replies

    assert result.reply is not None
    extra = {
        "checks": result.checks,
        "result": result.result.value,
        "failing": [t.network for t in result.targets if t.result != CheckResult.PASS],
    }
    row = replies.queue_reply(session, case, result.reply, settings, extra=extra)
    if row is None:
        return False
    if case.status in {CaseStatus.NEW, CaseStatus.VERIFYING, CaseStatus.READY_FOR_DECISION}:
        try:
            cases.transition(
                session,
                case,
                CaseStatus.AWAITING_REQUESTER,
                reason=f"authority {result.result.value}: asked the requester ({result.reply})",
            )
        except cases.InvalidTransition:
            log.info("case %s stays %s after the authority reply", case.reference, case.status.value)
    return True


def is_auto_delist_eligible(case: Case, settings: Settings | None = None) -> bool:
    """Authority and verification both pass, nothing flagged, every remaining target passed both;
    and the deployment allows automatic delisting (``Settings.auto_delist``) when settings are given."""
    if settings is not None and not settings.auto_delist:
        return False
    if case.authority_result != CheckResult.PASS or case.verification_result != CheckResult.PASS:
        return False
    flags = case.flags or {}
    if flags.get("authority_flags") or flags.get("freemail_sender"):
        return False
    targets = [t for t in case.targets if t.status != TargetStatus.EXCLUDED]
    return bool(targets) and all(
        t.authority_result == CheckResult.PASS and t.status == TargetStatus.PASS for t in targets
    )


def authority_summary(parsed: Any, settings: Settings) -> dict[str, Any]:
    """Offline authority view of a parsed message for ``tmsi mail explain``: our MTA's trusted results, the
    sender flags; no network (DKIM/SPF/RDAP need the job)."""
    headers = list(getattr(parsed, "headers", []) or [])
    authenticity, sender = evaluate_authenticity(None, headers, settings, None)
    flags = sender_flags(sender, [settings.mail_domain])
    return {
        "result": authenticity.result.value,
        "reasons": authenticity.reasons,
        "sender": sender.address,
        "checks": [c.as_dict() for c in authenticity.checks],
        "authentication_results": authenticity.evidence.get("authentication_results", {}),
        "not_checked": authenticity.evidence.get("not_checked", []),
        "flags": flags,
        "offline": True,
    }


def job_evaluate_authority(settings: Settings, factory: sessionmaker[Session], case_id: int) -> str:
    """Scheduled/queued work: evaluate the authority of a case's latest inbound mail and commit.

    A case without any stored inbound mail (purged, or never had one) gets ``none`` rather than staying
    pending, so the scheduler does not pick it up again and again. A case no longer pending was evaluated
    meanwhile (the sweep queues a case again when its first task still waits in a busy queue): skipped."""
    with unit_of_work(factory) as session:
        case = session.get(Case, case_id)
        if case is None:
            return "missing"
        if case.authority_result != CheckResult.PENDING:
            return "already evaluated"
        if _latest_raw(session, case) is None:
            case.authority_result = CheckResult.NONE
            case.authority_evidence = {"result": "none", "reasons": ["no stored inbound message to evaluate"]}
            return CheckResult.NONE.value
        result = evaluate_case_authority(
            session, case, None, settings, shared_dns(settings), HttpRdap.from_settings(settings)
        )
        return result.result.value
