"""Who may ask for a delisting: the pure rules of authenticity (DMARC alignment), entitlement (registered
domain of the PTR names, RDAP contacts), the flags shown to analysts, and how the results combine.

Values in, values out: DNS answers, RDAP JSON and header results come from the service layer.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from publicsuffixlist import PublicSuffixList

from tmsi.enums import CheckResult

# RFC 2606 / RFC 6761 names: not in the Public Suffix List, but real enough for tests and documentation.
RESERVED_TLDS = frozenset({"example", "test", "invalid", "localhost"})
# RDAP roles (RFC 9083 section 10.2.4) that speak for a network.
ENTITLED_ROLES = frozenset({"abuse", "administrative", "technical", "noc"})

_PSL = PublicSuffixList()


# --- names ------------------------------------------------------------------------------------------
def normalize_domain(name: str) -> str:
    """Lower case, no trailing dot, IDNA (punycode) form when the name has non-ASCII labels."""
    name = name.strip().rstrip(".").lower()
    if name and not name.isascii():
        with contextlib.suppress(UnicodeError):
            name = name.encode("idna").decode("ascii")
    return name


@lru_cache(maxsize=65536)
def registered_domain(name: str) -> str:
    """The registrable domain (public suffix + one label): ``noc.isp.example`` → ``isp.example``.

    A bare public suffix (``example``, ``co.uk``) has none and returns ``""``.
    """
    norm = normalize_domain(name)
    if not norm:
        return ""
    return _PSL.privatesuffix(norm) or ""


def domain_of(address: str) -> str:
    return normalize_domain(address.rpartition("@")[2]) if "@" in address else ""


def aligned(auth_domain: str, from_domain: str, mode: str = "r") -> bool:
    """DMARC identifier alignment (RFC 7489 section 3.1): strict = same name, relaxed = same registered
    domain."""
    a, f = normalize_domain(auth_domain), normalize_domain(from_domain)
    if not a or not f:
        return False
    if mode == "s":
        return a == f
    reg = registered_domain(f)
    return bool(reg) and registered_domain(a) == reg


# --- DMARC record ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DmarcPolicy:
    domain: str  # where the record was found
    policy: str  # none | quarantine | reject
    subdomain_policy: str
    adkim: str  # r | s
    aspf: str
    pct: int
    record: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "p": self.policy,
            "sp": self.subdomain_policy,
            "adkim": self.adkim,
            "aspf": self.aspf,
            "pct": self.pct,
            "record": self.record,
        }


def parse_dmarc_record(text: str, domain: str) -> DmarcPolicy | None:
    """A ``v=DMARC1`` TXT record, or None when the text is not one (RFC 7489 section 6.3)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            tags[key.strip().lower()] = value.strip()
    if tags.get("v", "").upper() != "DMARC1" or not text.strip().lower().startswith("v"):
        return None
    policy = tags.get("p", "none").lower()
    if policy not in {"none", "quarantine", "reject"}:
        policy = "none"
    sub = tags.get("sp", policy).lower()
    try:
        pct = max(0, min(100, int(tags.get("pct", "100"))))
    except ValueError:
        pct = 100
    adkim = "s" if tags.get("adkim", "r").lower() == "s" else "r"
    aspf = "s" if tags.get("aspf", "r").lower() == "s" else "r"
    return DmarcPolicy(
        domain, policy, sub if sub in {"none", "quarantine", "reject"} else policy, adkim, aspf, pct, text
    )


# --- authenticity ------------------------------------------------------------------------------------
PASS_RESULTS = frozenset({"pass"})
TEMP_RESULTS = frozenset({"temperror"})


@dataclass
class AuthCheck:
    """One DKIM signature, SPF identity or DMARC verdict, whoever produced it, with its evidence."""

    method: str  # dkim | spf | dmarc
    result: str  # pass | fail | softfail | neutral | none | temperror | permerror | policy
    domain: str = ""  # DKIM d=, SPF mail-from/HELO domain, DMARC header.from
    identity: str = ""  # "mailfrom" / "helo" for SPF, selector for DKIM
    source: str = "direct"  # "mta" (our Authentication-Results) or "direct" (verified here)
    aligned: bool = False
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "result": self.result,
            "domain": self.domain,
            "identity": self.identity,
            "source": self.source,
            "aligned": self.aligned,
            "detail": self.detail,
        }

    def describe(self) -> str:
        who = f" {self.identity}" if self.identity else ""
        where = f" for {self.domain}" if self.domain else ""
        how = "reported by our mail server" if self.source == "mta" else "checked directly"
        align = " (aligned with the From domain)" if self.aligned and self.result == "pass" else ""
        if self.method == "dmarc":
            align = ""
        return f"{self.method.upper()}{who}{where}: {self.result}{align}, {how}"


@dataclass
class Authenticity:
    result: CheckResult
    reasons: list[str]
    checks: list[AuthCheck]
    from_domain: str
    policy: DmarcPolicy | None = None
    policy_status: str = ""  # ok | none | unverifiable | mta
    evidence: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "result": self.result.value,
            "reasons": list(self.reasons),
            "from_domain": self.from_domain,
            "dmarc_policy": self.policy.as_dict() if self.policy else None,
            "dmarc_policy_status": self.policy_status,
            "checks": [c.as_dict() for c in self.checks],
            **self.evidence,
        }


def mark_alignment(checks: Iterable[AuthCheck], from_domain: str, adkim: str = "r", aspf: str = "r") -> None:
    for check in checks:
        if check.method == "dkim":
            check.aligned = aligned(check.domain, from_domain, adkim)
        elif check.method == "spf" and check.identity == "mailfrom":
            check.aligned = aligned(check.domain, from_domain, aspf)
        elif check.method == "spf":
            # RFC 7489 uses the HELO identity only when MAIL FROM is null; the service passes it then.
            check.aligned = check.detail.get("null_mailfrom", False) and aligned(
                check.domain, from_domain, aspf
            )
        elif check.method == "dmarc":
            check.aligned = normalize_domain(check.domain or from_domain) == normalize_domain(from_domain)


def decide_authenticity(
    checks: Sequence[AuthCheck],
    from_domain: str,
    *,
    policy: DmarcPolicy | None = None,
    policy_status: str = "none",
) -> Authenticity:
    """pass: DMARC pass from our MTA, or a DMARC-aligned DKIM or SPF pass; unverifiable: DNS trouble kept a
    check that could have passed from finishing; none: nothing to check; fail: everything else."""
    if not from_domain:
        return Authenticity(
            CheckResult.FAIL,
            ["the message has no usable From address"],
            list(checks),
            "",
            policy,
            policy_status,
        )
    adkim = policy.adkim if policy else "r"
    aspf = policy.aspf if policy else "r"
    mark_alignment(checks, from_domain, adkim, aspf)
    reasons: list[str] = []
    dmarc = [c for c in checks if c.method == "dmarc" and c.aligned]
    passes = [c for c in checks if c.method in {"dkim", "spf"} and c.result in PASS_RESULTS and c.aligned]
    if any(c.result == "pass" for c in dmarc):
        reasons.append(f"our mail server reports DMARC pass for {from_domain}")
        return Authenticity(CheckResult.PASS, reasons, list(checks), from_domain, policy, policy_status)
    if passes and not any(c.result == "fail" for c in dmarc):
        # Relaxed alignment that is not also strict depends on the policy we could not read.
        exact = [c for c in passes if normalize_domain(c.domain) == normalize_domain(from_domain)]
        if policy_status == "unverifiable" and not exact:
            reasons.append(
                f"{passes[0].describe()}, but the DMARC record of {from_domain} could not be read to confirm "
                "relaxed alignment"
            )
            return Authenticity(
                CheckResult.UNVERIFIABLE, reasons, list(checks), from_domain, policy, policy_status
            )
        reasons.extend(c.describe() for c in passes)
        return Authenticity(CheckResult.PASS, reasons, list(checks), from_domain, policy, policy_status)
    if any(c.result == "fail" for c in dmarc):
        reasons.append(f"our mail server reports DMARC fail for {from_domain}")
        return Authenticity(CheckResult.FAIL, reasons, list(checks), from_domain, policy, policy_status)
    temp = [
        c
        for c in checks
        if c.method in {"dkim", "spf"}
        and c.result in TEMP_RESULTS
        and (c.aligned or (c.method == "dkim" and aligned(c.domain, from_domain, "r")))
    ]
    temp += [c for c in checks if c.method == "dmarc" and c.result == "temperror"]
    if temp:
        reasons.extend(f"{c.describe()} (DNS trouble: could not check)" for c in temp)
        return Authenticity(
            CheckResult.UNVERIFIABLE, reasons, list(checks), from_domain, policy, policy_status
        )
    real = [c for c in checks if c.method in {"dkim", "spf"} and c.result not in {"none", ""}]
    if not real and not dmarc:
        reasons.append("the message carries no DKIM signature and no SPF result could be obtained")
        return Authenticity(CheckResult.NONE, reasons, list(checks), from_domain, policy, policy_status)
    reasons.append(f"no DKIM signature or SPF pass aligned with the From domain {from_domain}")
    reasons.extend(c.describe() for c in checks if c.method in {"dkim", "spf"})
    return Authenticity(CheckResult.FAIL, reasons, list(checks), from_domain, policy, policy_status)


def checks_from_mta(results: Iterable[Any], from_domain: str) -> list[AuthCheck]:
    """AuthChecks from our MTA's trusted results (``authres.AuthResult``: dkim, spf, dmarc)."""
    checks: list[AuthCheck] = []
    for r in results:
        props: Mapping[str, str] = r.props
        detail = {"reported": f"{r.method}={r.result}", "props": dict(props)}
        if r.method == "dkim":
            domain = props.get("header.d") or domain_of(props.get("header.i", ""))
            checks.append(
                AuthCheck(
                    "dkim",
                    r.result,
                    normalize_domain(domain),
                    props.get("header.s", ""),
                    "mta",
                    detail=detail,
                )
            )
        elif r.method == "spf":
            mailfrom = props.get("smtp.mailfrom", "")
            helo = props.get("smtp.helo", "")
            if mailfrom:
                dom = domain_of(mailfrom) if "@" in mailfrom else normalize_domain(mailfrom)
                checks.append(AuthCheck("spf", r.result, dom, "mailfrom", "mta", detail=detail))
            elif helo:
                checks.append(
                    AuthCheck("spf", r.result, normalize_domain(helo), "helo", "mta", detail=detail)
                )
        elif r.method == "dmarc":
            checks.append(
                AuthCheck(
                    "dmarc",
                    r.result,
                    normalize_domain(props.get("header.from") or from_domain),
                    "",
                    "mta",
                    detail=detail,
                )
            )
    return checks


# --- RDAP contacts -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RdapContact:
    email: str
    roles: tuple[str, ...]
    handle: str = ""
    name: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"email": self.email, "roles": list(self.roles), "handle": self.handle, "name": self.name}


def _vcard_values(vcard: Any, prop: str) -> list[str]:
    out: list[str] = []
    if isinstance(vcard, list) and len(vcard) == 2 and vcard[0] == "vcard" and isinstance(vcard[1], list):
        for entry in vcard[1]:
            if isinstance(entry, list) and len(entry) >= 4 and str(entry[0]).lower() == prop:
                values = entry[3:]
                out.extend(str(v) for v in values if isinstance(v, str) and v)
    return out


def rdap_contacts(data: Mapping[str, Any], *, max_depth: int = 6) -> list[RdapContact]:
    """Every entity with an e-mail address in an RDAP object, walking nested entities (RFC 9083)."""
    found: list[RdapContact] = []

    def walk(entities: Any, depth: int) -> None:
        if depth > max_depth or not isinstance(entities, list):
            return
        for entity in entities:
            if not isinstance(entity, dict):
                continue
            roles = tuple(str(r).lower() for r in entity.get("roles", []) if isinstance(r, str))
            vcard = entity.get("vcardArray")
            names = _vcard_values(vcard, "fn")
            for email in _vcard_values(vcard, "email"):
                email = email.strip().lower().removeprefix("mailto:")
                if "@" in email:
                    found.append(
                        RdapContact(email, roles, str(entity.get("handle", "")), names[0] if names else "")
                    )
            walk(entity.get("entities"), depth + 1)

    walk(data.get("entities"), 0)
    return found


# --- entitlement -------------------------------------------------------------------------------------
@dataclass
class Entitlement:
    result: CheckResult
    reasons: list[str]
    via: str = ""  # ptr_domain | rdap_contact | rdap_contact_domain
    evidence: dict[str, Any] = field(default_factory=dict)


def decide_entitlement(
    sender: str,
    *,
    ptr_names: Sequence[str],
    ptr_status: str,
    rdap_status: str,
    contacts: Sequence[RdapContact] = (),
    freemail: frozenset[str] = frozenset(),
) -> Entitlement:
    """Is ``sender`` entitled to speak for one network?

    ``ptr_status``: ok | none | unverifiable | not_checked.  ``rdap_status``: ok | not_found | unverifiable |
    not_checked.  PTR match: every PTR name found has the sender's registered domain.  RDAP match: the sender
    is a contact with an entitled role, or (outside freemail) shares the contact's registered domain.
    """
    sender = sender.strip().lower()
    sender_reg = registered_domain(domain_of(sender))
    ptr_regs = sorted({registered_domain(n) for n in ptr_names if registered_domain(n)})
    evidence: dict[str, Any] = {
        "sender": sender,
        "sender_registered_domain": sender_reg,
        "ptr_names": list(ptr_names),
        "ptr_registered_domains": ptr_regs,
        "ptr_status": ptr_status,
        "rdap_status": rdap_status,
        "rdap_contacts": [c.as_dict() for c in contacts],
    }
    reasons: list[str] = []
    if not sender_reg:
        return Entitlement(
            CheckResult.FAIL, ["the sender address has no registrable domain"], evidence=evidence
        )
    if sender_reg in freemail:
        return Entitlement(
            CheckResult.FAIL,
            [f"{sender_reg} is a freemail provider, not the network's owner"],
            evidence=evidence,
        )
    if ptr_regs == [sender_reg]:
        reasons.append(
            f"the PTR names ({', '.join(ptr_names[:3])}) are under the sender's domain {sender_reg}"
        )
        return Entitlement(CheckResult.PASS, reasons, "ptr_domain", evidence)
    if ptr_regs:
        reasons.append(
            f"the PTR names are under {', '.join(ptr_regs)}, not under the sender's domain {sender_reg}"
        )
    elif ptr_status == "unverifiable":
        reasons.append("the PTR names could not be looked up (DNS trouble)")
    else:
        reasons.append("the addresses have no PTR names to compare with the sender's domain")
    entitled = [c for c in contacts if set(c.roles) & ENTITLED_ROLES]
    exact = [c for c in entitled if c.email == sender]
    if exact:
        reasons.append(
            f"the sender is the registered {'/'.join(exact[0].roles)} contact of the network in RDAP"
        )
        return Entitlement(CheckResult.PASS, reasons, "rdap_contact", evidence)
    same_domain = [c for c in entitled if registered_domain(domain_of(c.email)) == sender_reg]
    if same_domain:
        reasons.append(
            f"the network's RDAP {'/'.join(same_domain[0].roles)} contact {same_domain[0].email} is under "
            f"the sender's domain {sender_reg}"
        )
        return Entitlement(CheckResult.PASS, reasons, "rdap_contact_domain", evidence)
    if rdap_status == "ok":
        listed = ", ".join(sorted({c.email for c in entitled})) or "no contact with an e-mail address"
        reasons.append(f"RDAP lists {listed} for the network; the sender is not among them")
    elif rdap_status == "not_found":
        reasons.append("RDAP has no record of the network")
    elif rdap_status == "unverifiable":
        reasons.append("RDAP could not be queried (timeout or server error)")
    if rdap_status == "unverifiable" or (ptr_status == "unverifiable" and rdap_status != "ok"):
        return Entitlement(CheckResult.UNVERIFIABLE, reasons, evidence=evidence)
    return Entitlement(CheckResult.FAIL, reasons, evidence=evidence)


def combine_targets(results: Sequence[CheckResult]) -> CheckResult:
    if not results:
        return CheckResult.NONE
    if all(r == CheckResult.PASS for r in results):
        return CheckResult.PASS
    if any(r == CheckResult.FAIL for r in results):
        return CheckResult.PARTIAL if any(r == CheckResult.PASS for r in results) else CheckResult.FAIL
    return CheckResult.UNVERIFIABLE


def overall_result(authenticity: CheckResult, targets: Sequence[CheckResult]) -> CheckResult:
    """Authority of the whole request: authenticity first, then every target's entitlement."""
    if authenticity != CheckResult.PASS:
        return authenticity
    return combine_targets(targets)


# --- flags for the analyst ---------------------------------------------------------------------------
_EMAIL_IN_TEXT = re.compile(r"[A-Za-z0-9._%+\-]+@([A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+)")
_DOMAIN_IN_TEXT = re.compile(
    r"(?<![@\w.\-])((?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,63})(?![\w\-])"
)


def _known_suffix(domain: str) -> bool:
    tld = domain.rsplit(".", 1)[-1]
    return tld in RESERVED_TLDS or _PSL.publicsuffix(domain, accept_unknown=False) is not None


def display_name_spoof(from_name: str, from_addr: str) -> str:
    """A reason when the display name shows an address or domain other than the sender's own, else ``""``."""
    if not from_name:
        return ""
    sender_reg = registered_domain(domain_of(from_addr))
    name = unicodedata.normalize("NFKC", from_name)
    for dom in _EMAIL_IN_TEXT.findall(name):
        if registered_domain(dom) != sender_reg:
            shown = dom.lower()
            return f"display name {from_name!r} shows an address at {shown}, but the mail is from {from_addr}"
    for dom in _DOMAIN_IN_TEXT.findall(_EMAIL_IN_TEXT.sub(" ", name)):
        low = dom.lower()
        if _known_suffix(low) and registered_domain(low) and registered_domain(low) != sender_reg:
            return f"display name {from_name!r} names the domain {low}, but the mail is from {from_addr}"
    return ""


# Characters that read alike in a From line; confusable_homoglyphs covers the scripts, this the ASCII tricks.
_ASCII_SKELETON = (("rn", "m"), ("vv", "w"), ("0", "o"), ("1", "l"), ("i", "l"), ("5", "s"), ("_", "-"))


def skeleton(domain: str) -> str:
    """A lookalike-insensitive form: Unicode confusables mapped to Latin, then ASCII tricks folded."""
    from confusable_homoglyphs import confusables

    text = unicodedata.normalize("NFKC", domain.lower())
    if not text.isascii():
        out = []
        for ch in text:
            if ch.isascii():
                out.append(ch)
                continue
            found = confusables.is_confusable(ch, preferred_aliases=["latin"], greedy=False)
            glyph = ""
            if found:
                for h in found[0].get("homoglyphs", []):
                    if h["c"].isascii():
                        glyph = h["c"]
                        break
            out.append(glyph or ch)
        text = "".join(out)
    for a, b in _ASCII_SKELETON:
        text = text.replace(a, b)
    return text


def _distance_at_most_one(a: str, b: str) -> bool:
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diffs = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diffs) == 1 or (
            len(diffs) == 2
            and diffs[1] == diffs[0] + 1
            and a[diffs[0]] == b[diffs[1]]
            and a[diffs[1]] == b[diffs[0]]
        )
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1 :] == short for i in range(len(long_)))


def lookalike_flags(sender_domain: str, references: Iterable[str]) -> list[str]:
    """Reasons the sender's domain looks crafted: punycode/mixed-script labels, or a near copy of a domain
    it should be (the PTR and RDAP domains of the targets, our own domain)."""
    from confusable_homoglyphs import confusables

    flags: list[str] = []
    domain = sender_domain.strip().rstrip(".").lower()
    if not domain:
        return flags
    unicode_form = domain
    if "xn--" in domain:
        try:
            unicode_form = domain.encode("ascii").decode("idna")
        except UnicodeError:
            flags.append(f"sender domain {domain} has an invalid punycode label")
        if unicode_form != domain:
            flags.append(f"sender domain {domain} is punycode for {unicode_form!r}")
    if not unicode_form.isascii():
        if confusables.is_dangerous(unicode_form) or confusables.is_mixed_script(
            unicode_form.replace(".", "")
        ):
            flags.append(f"sender domain {unicode_form!r} mixes scripts or uses confusable characters")
        elif "xn--" not in domain:
            flags.append(f"sender domain {unicode_form!r} has non-ASCII characters")
    sender_reg = registered_domain(domain)
    sender_skel = skeleton(registered_domain(unicode_form) or unicode_form)
    for ref in sorted({registered_domain(r) for r in references if r and registered_domain(r)}):
        if ref == sender_reg:
            continue
        ref_skel = skeleton(ref)
        if sender_skel == ref_skel:
            flags.append(f"sender domain {sender_reg} looks like {ref}")
        elif len(ref) >= 6 and _distance_at_most_one(sender_skel, ref_skel):
            flags.append(f"sender domain {sender_reg} is one character away from {ref}")
    return flags
