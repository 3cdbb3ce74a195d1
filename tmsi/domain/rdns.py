"""rDNS name classifier: (address, PTR name) -> static | custom | generic | dynamic, with readable reasons.

Pure: no DNS and no session; the rules are data (``tmsi/data/rdns_rules.toml`` plus a lead's extra file),
loaded once and precompiled. The live checker (``tmsi.services.verify``) calls :func:`classify_all`.

How a name is judged. A wrong "static" delists a spam source, so whenever the name is ambiguous it fails:

1. A name that is not a valid public host name (empty, bad characters, a label over 63 or a name over 253
   characters, a single label, an address literal, bad punycode, ``.lan``/``.localdomain``) is *generic*,
   with the reason.
2. A strong dynamic token (``dyn``, ``dhcp``, ``pool``, ``ppp``, ``dial`` ...), a consumer-pool naming
   scheme or an ISP pattern saying "dynamic" makes the name *dynamic*, even when it also says ``static``:
   ``static-dyn-203-0-113-7`` is ambiguous and fails.
3. A static token (``static``, ``fixed``, ``biz``, ``dedicated`` ...) or an ISP pattern saying "static":
   with the address embedded, the name is *static* when the token sits next to the address (same label or
   a neighbouring one) or outweighs the other dynamic tokens, else *dynamic*. Without the address: *static*.
   Static tokens in the registered domain (``staticnet.example``) say nothing about the host and are ignored.
4. Weaker dynamic tokens (``dsl``, ``cable``, ``cust``, ``res``, ``mobile`` ...) with the address embedded
   make it *dynamic*; without the address they must add up to ``no_address_dynamic_weight`` or come with a
   line id (``adsl123``; the digits of server names such as ``mx1`` do not count), else it is *custom*.
5. The address embedded (dotted, dashed, reversed, zero-padded, hex, decimal, IPv6 forms and prefixes,
   partial octets), another address, a placeholder (``unknown``, ``unassigned``) or an opaque generated id,
   with nothing that says static: *generic*.
6. Anything else is a hand-made name: *custom*.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, NamedTuple

from tmsi.domain.networks import IPAddress, NetworkError, parse_address
from tmsi.enums import NameVerdict

DEFAULT_RULES_PATH = Path(__file__).resolve().parent.parent / "data" / "rdns_rules.toml"

PASSING = frozenset({NameVerdict.STATIC, NameVerdict.CUSTOM})
# worst last: classify_all keeps the worst verdict of several PTR names
_SEVERITY = {
    NameVerdict.STATIC: 0,
    NameVerdict.CUSTOM: 1,
    NameVerdict.NONE: 2,
    NameVerdict.GENERIC: 3,
    NameVerdict.DYNAMIC: 4,
}

Kind = Literal["dynamic", "static", "server", "placeholder"]
_KINDS = ("dynamic", "static", "server", "placeholder")
_SCHEME_VERDICTS = {"dynamic": NameVerdict.DYNAMIC, "generic": NameVerdict.GENERIC}
_ISP_VERDICTS = {"static": NameVerdict.STATIC, "dynamic": NameVerdict.DYNAMIC, "generic": NameVerdict.GENERIC}


class RulesError(ValueError):
    """A rule file that cannot be used, with the file and the entry at fault."""


@dataclass(frozen=True)
class Classification:
    """The verdict on one or several PTR names of one address; ``passes`` follows from the verdict."""

    verdict: NameVerdict
    reasons: list[str]
    passes: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "passes", self.verdict in PASSING)

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "reasons": list(self.reasons), "passes": self.passes}


@dataclass(frozen=True)
class Token:
    word: str
    category: str
    kind: Kind
    weight: int


@dataclass(frozen=True)
class Scheme:
    name: str
    pattern: re.Pattern[str]
    verdict: NameVerdict


@dataclass(frozen=True)
class IspPattern:
    domain: str
    pattern: re.Pattern[str]
    verdict: NameVerdict
    reason: str


@dataclass(frozen=True)
class Rules:
    """Compiled rules; build with :func:`load_rules`."""

    tokens: Mapping[str, Token]
    compound_words: frozenset[str]
    fillers: frozenset[str]
    schemes: tuple[Scheme, ...]
    any_scheme: re.Pattern[str]  # all scheme patterns in one: most names match none, one search says so
    private_suffixes: tuple[str, ...]  # ".lan", ".localdomain": not public names
    isp: Mapping[str, tuple[IspPattern, ...]]
    strong_dynamic_weight: int = 10
    no_address_dynamic_weight: int = 8
    no_address_id_digits: int = 1
    partial_min_digits: int = 3
    sources: tuple[str, ...] = ()

    def __hash__(self) -> int:  # identity: rules are built once and used as a cache key
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


# --- loading ---------------------------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise RulesError(f"cannot read rDNS rules {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{path}: invalid TOML: {exc}") from None


def _compile(path: Path, where: str, pattern: Any) -> re.Pattern[str]:
    if not isinstance(pattern, str) or not pattern:
        raise RulesError(f"{path}: {where}: 'pattern' must be a non-empty string")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise RulesError(f"{path}: {where}: bad regex {pattern!r}: {exc}") from None


def _merge(data: dict[str, Any], path: Path, acc: dict[str, Any]) -> None:
    decision = data.get("decision", {})
    for key, value in decision.items():
        if key not in acc["decision"] or not isinstance(value, int) or value < 0:
            raise RulesError(
                f"{path}: [decision] {key} = {value!r} is not a known non-negative integer setting"
            )
        acc["decision"][key] = value
    names = data.get("names", {})
    acc["private"].update("." + str(s).lower().strip(".") for s in names.get("private_suffixes", []))
    compound = data.get("compound", {})
    acc["short"].update(str(w).lower() for w in compound.get("short", []))
    acc["fillers"].update(str(w).lower() for w in compound.get("fillers", []))
    for name, category in data.get("categories", {}).items():
        kind = category.get("kind")
        weight = category.get("weight")
        words = category.get("tokens", [])
        if kind not in _KINDS:
            raise RulesError(f"{path}: [categories.{name}] kind must be one of {', '.join(_KINDS)}")
        if not isinstance(weight, int) or weight <= 0:
            raise RulesError(f"{path}: [categories.{name}] weight must be a positive integer")
        for word in words:
            word = str(word).lower()
            if not re.fullmatch(r"[a-z0-9]+", word):
                raise RulesError(f"{path}: [categories.{name}] token {word!r}: letters and digits only")
            acc["tokens"][word] = Token(word, name, kind, weight)
    for index, scheme in enumerate(data.get("schemes", [])):
        where = f"[[schemes]] #{index + 1}"
        verdict = _SCHEME_VERDICTS.get(scheme.get("verdict", ""))
        if verdict is None:
            raise RulesError(f"{path}: {where}: verdict must be dynamic or generic")
        pattern = _compile(path, where, scheme.get("pattern"))
        acc["schemes"].append(Scheme(str(scheme.get("name", pattern.pattern)), pattern, verdict))
    for index, rule in enumerate(data.get("isp", [])):
        where = f"[[isp]] #{index + 1}"
        domain = str(rule.get("domain", "")).lower().rstrip(".")
        if not domain:
            raise RulesError(f"{path}: {where}: 'domain' (the registered domain) is required")
        verdict = _ISP_VERDICTS.get(rule.get("verdict", ""))
        if verdict is None:
            raise RulesError(f"{path}: {where}: verdict must be static, dynamic or generic")
        pattern = _compile(path, where, rule.get("pattern"))
        reason = str(rule.get("reason", f"ISP pattern {pattern.pattern!r}"))
        acc["isp"].setdefault(domain, []).append(IspPattern(domain, pattern, verdict, reason))


def load_rules(extra_path: str | None = None) -> Rules:
    """The packaged rules, plus a lead's extra per-ISP file (``Settings.rdns_rules_file``) if given."""
    acc: dict[str, Any] = {
        "decision": {
            "strong_dynamic_weight": 10,
            "no_address_dynamic_weight": 8,
            "no_address_id_digits": 1,
            "partial_min_digits": 3,
        },
        "short": set(),
        "private": set(),
        "fillers": set(),
        "tokens": {},
        "schemes": [],
        "isp": {},
    }
    paths = [DEFAULT_RULES_PATH] + ([Path(extra_path)] if extra_path else [])
    for path in paths:
        _merge(_read_toml(path), path, acc)
    tokens: dict[str, Token] = acc["tokens"]
    fillers = frozenset(acc["fillers"])
    # server words stay out of compounds: "poolserver" is a server's name, not a pool
    words = {w for w, t in tokens.items() if t.kind != "server"} | fillers
    compound_words = frozenset(w for w in words if len(w) >= 4 or w in acc["short"])
    return Rules(
        tokens=tokens,
        compound_words=compound_words,
        fillers=fillers,
        schemes=tuple(acc["schemes"]),
        private_suffixes=tuple(sorted(acc["private"])),
        any_scheme=re.compile(
            "|".join(f"(?:{scheme.pattern.pattern})" for scheme in acc["schemes"]) or "(?!)"
        ),
        isp={domain: tuple(rules) for domain, rules in acc["isp"].items()},
        sources=tuple(str(p) for p in paths),
        **acc["decision"],
    )


@lru_cache(maxsize=1)
def default_rules() -> Rules:
    return load_rules(None)


# --- name normalisation ------------------------------------------------------------------------------------

_VALID_NAME = re.compile(r"[a-z0-9_.-]+")
# two or more labels of 1-63 characters, each with a letter or digit
_LABEL = r"[_-]*[a-z0-9][a-z0-9_-]*"
_WELL_FORMED = re.compile(rf"(?=[^.]{{1,63}}(?:\.|$))(?:{_LABEL}\.(?=[^.]{{1,63}}(?:\.|$)))+{_LABEL}")
_ADDRESS_LITERAL = re.compile(r"[0-9.]+|[0-9a-f:.]*:[0-9a-f:.]*")
_CHUNK = re.compile(r"[^\s._-]+")
_ALPHA_OR_DIGITS = re.compile(r"[^\W\d_]+|\d+")
_DIGITS = re.compile(r"\d+")
_HEX_ID = re.compile(r"[0-9a-f]{8,}")


def _normalise(ptr_name: str) -> tuple[str, str | None]:
    """Lower-case ASCII name without the trailing dot, or an error saying why it is not a host name."""
    name = ptr_name.strip()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        return "", "empty name"
    # punycode is never shorter than the text it encodes, so a long name fails before the costly IDNA step
    if len(name) > 253:
        return name.lower(), f"name is {len(name)} characters long (the limit is 253)"
    if not name.isascii():
        try:
            name = ".".join(
                label.encode("idna").decode("ascii") if label else "" for label in name.split(".")
            )
        except UnicodeError:
            return name.lower(), "not a valid internationalised domain name"
    name = name.lower()
    if len(name) <= 253 and _WELL_FORMED.fullmatch(name):  # the common case: skip the diagnostics
        if "xn--" in name and not _punycode_ok(name):
            return name, "a label is not valid punycode (xn--)"
        if _ADDRESS_LITERAL.fullmatch(name):
            return name, "the name is an address literal, not a host name"
        if name.endswith((".in-addr.arpa", ".ip6.arpa")):
            return name, "the name is a reverse-zone name, not a host name"
        return name, None
    if len(name) > 253:
        return name, f"name is {len(name)} characters long (the limit is 253)"
    if not _VALID_NAME.fullmatch(name):
        bad = sorted({c for c in name if not (c.isalnum() and c.isascii()) and c not in "._-"})
        return name, "characters not allowed in a host name: " + " ".join(repr(c) for c in bad)
    labels = name.split(".")
    if any(not label for label in labels):
        return name, "empty label (two dots in a row, or a leading dot)"
    if any(len(label) > 63 for label in labels):
        return name, "a label is longer than 63 characters"
    if len(labels) < 2:
        return name, "a single label is not a fully qualified host name"
    return name, "a label has no letter or digit"


def _punycode_ok(name: str) -> bool:
    for label in name.split("."):
        if label.startswith("xn--"):
            try:
                label.encode("ascii").decode("idna")
            except UnicodeError:
                return False
    return True


@lru_cache(maxsize=1)
def _psl() -> Any:
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


@lru_cache(maxsize=8192)
def _registered_domain(tail: str) -> str:
    """Registered domain (public suffix + one label) of a name, given its last three labels."""
    found = _psl().privatesuffix(tail)
    return str(found) if found else ".".join(tail.split(".")[-2:])


# --- address embeddings ------------------------------------------------------------------------------------


class _Embedding(NamedTuple):
    start: int
    end: int
    form: str
    other: bool = False  # an address, but not this one


def _label_span(name: str, start: int, end: int) -> tuple[int, int]:
    """1-based numbers of the first and last label that [start, end) touches."""
    return name.count(".", 0, start) + 1, name.count(".", 0, max(start, end - 1)) + 1


def _labels_text(name: str, start: int, end: int) -> str:
    first, last = _label_span(name, start, end)
    return f"label {first}" if first == last else f"labels {first}-{last}"


_CHAIN = re.compile(r"\d+(?:[-._]\d+)+")
_LONG_NUMBER = re.compile(r"\d{7}")
_SEPARATOR = re.compile(r"[-._]")
_SEPARATOR_NAMES = {".": "dotted", "-": "dashed", "_": "underscored"}


def _window_form(name: str, offsets: list[int], parts: list[str], i: int, size: int) -> str:
    seps = {name[offsets[j] + len(parts[j])] for j in range(i, i + size - 1)}
    form = _SEPARATOR_NAMES[seps.pop()] if len(seps) == 1 else "mixed-separator"
    if any(len(p) > 1 and p[0] == "0" for p in parts[i : i + size]):
        form = f"zero-padded {form}"
    return form


def _find_number(name: str, text: str) -> int:
    """Where ``text`` occurs as a whole digit run (not inside a longer number), or -1."""
    start = name.find(text)
    while start >= 0:
        end = start + len(text)
        if (start == 0 or not name[start - 1].isdigit()) and (end == len(name) or not name[end].isdigit()):
            return start
        start = name.find(text, start + 1)
    return -1


def _v4_embeddings(name: str, packed: bytes, rules: Rules) -> list[_Embedding]:
    octets = list(packed)
    backwards = octets[::-1]
    # chains of numbers joined by single separators: 203-0-113-7, 7.113.0.203, 089.67-45-123
    chains = []
    for m in _CHAIN.finditer(name):
        parts = _SEPARATOR.split(m.group())
        offsets = []
        position = m.start()
        for part in parts:
            offsets.append(position)
            position += len(part) + 1
        chains.append((parts, offsets, [int(p) if len(p) <= 3 else 999 for p in parts]))
    ours: list[_Embedding] = []
    other: _Embedding | None = None
    for parts, offsets, values in chains:
        for i in range(len(values) - 3):
            window = values[i : i + 4]
            if window in (octets, backwards):
                form = _window_form(name, offsets, parts, i, 4)
                if window != octets:
                    form = f"reversed {form}"
                ours.append(_Embedding(offsets[i], offsets[i + 3] + len(parts[i + 3]), form))
            elif other is None and max(window) <= 255:
                shown = ".".join(str(v) for v in window)
                end = offsets[i + 3] + len(parts[i + 3])
                other = _Embedding(offsets[i], end, f"as another address ({shown})", other=True)
    if ours:
        return ours
    if _LONG_NUMBER.search(name):
        for text, form in (
            ("".join(f"{o:03d}" for o in octets), "zero-padded without separators"),
            ("".join(f"{o:03d}" for o in backwards), "reversed zero-padded without separators"),
            (str(int.from_bytes(packed, "big")), "decimal"),
        ):
            start = _find_number(name, text)
            if start >= 0:
                return [_Embedding(start, start + len(text), form)]
    for raw, reverse in ((packed, ""), (packed[::-1], "reversed ")):
        plain = raw.hex()
        if plain[:2] not in name:
            continue
        for hex_text, sep_name in ((plain, ""), (raw.hex("-"), " dashed"), (raw.hex("."), " dotted")):
            start = name.find(hex_text)
            if start >= 0:
                return [_Embedding(start, start + len(hex_text), f"{reverse}hex{sep_name}")]
    if other is not None:
        return [other]
    for size, wanted in (
        (3, ((octets[1:], "last 3 octets"), (backwards[:3], "last 3 octets reversed"))),
        (3, ((octets[:3], "first 3 octets"), (backwards[1:], "first 3 octets reversed"))),
        (2, ((octets[2:], "last 2 octets"), (backwards[:2], "last 2 octets reversed"))),
        (2, ((octets[:2], "first 2 octets"), (backwards[2:], "first 2 octets reversed"))),
    ):
        for parts, offsets, values in chains:
            for i in range(len(values) - size + 1):
                window = values[i : i + size]
                for target, which in wanted:
                    if window == target and sum(map(len, parts[i : i + size])) >= rules.partial_min_digits:
                        end = offsets[i + size - 1] + len(parts[i + size - 1])
                        return [_Embedding(offsets[i], end, f"partially ({which})")]
    return []


def _v6_candidates(address: ipaddress.IPv6Address) -> list[tuple[str, str]]:
    exploded = address.exploded
    groups = exploded.split(":")
    unpadded = [g.lstrip("0") or "0" for g in groups]
    nibbles = exploded.replace(":", "")
    candidates = [
        (nibbles, "hex (32 nibbles)"),
        (nibbles[::-1], "reversed hex (32 nibbles)"),
    ]
    for sep, sep_name in (("-", "dashed"), (".", "dotted"), ("_", "underscored")):
        candidates.append((sep.join(reversed(nibbles)), f"reversed nibble {sep_name}"))
        candidates.append((sep.join(nibbles), f"nibble {sep_name}"))
        candidates.append((sep.join(groups), f"exploded {sep_name}"))
        candidates.append((sep.join(unpadded), f"{sep_name}"))
        compressed = address.compressed
        if "::" in compressed:
            candidates.append((compressed.replace(":", sep), f"compressed {sep_name}"))
    seen: set[str] = set()
    unique = []
    for text, form in candidates:
        if text not in seen:
            seen.add(text)
            unique.append((text, form))
    return sorted(unique, key=lambda item: -len(item[0]))


_HEXCHARS = frozenset("0123456789abcdef")


def _v6_embeddings(name: str, address: ipaddress.IPv6Address, rules: Rules) -> list[_Embedding]:
    for text, form in _v6_candidates(address):
        start = name.find(text)
        while start >= 0:
            end = start + len(text)
            before = name[start - 1] if start else "."
            after = name[end] if end < len(name) else "."
            if before not in _HEXCHARS and after not in _HEXCHARS:
                return [_Embedding(start, end, f"IPv6 {form}")]
            start = name.find(text, start + 1)
    mapped = address.ipv4_mapped or address.sixtofour
    if mapped is not None:
        return _v4_embeddings(name, mapped.packed, rules)
    # the /64 or /48 prefix alone (2001-db8-1-0.isp.example) still says the name was generated
    groups = address.exploded.split(":")
    for size in (4, 3):
        head = groups[:size]
        unpadded = [g.lstrip("0") or "0" for g in head]
        for sep in "-._":
            for text in (sep.join(unpadded), sep.join(head)):
                start = name.find(text)
                while start >= 0:
                    end = start + len(text)
                    before = name[start - 1] if start else "."
                    after = name[end] if end < len(name) else "."
                    if before not in _HEXCHARS and after not in _HEXCHARS:
                        return [_Embedding(start, end, f"partially (IPv6 /{size * 16} prefix)")]
                    start = name.find(text, start + 1)
    return []


# --- tokens ------------------------------------------------------------------------------------------------


class _Hit(NamedTuple):
    token: Token
    label: int  # 1-based label number
    how: str  # "whole label", "label part", "part of 'dynamicip'"
    in_domain: bool


@lru_cache(maxsize=65536)
def _segment(part: str, rules: Rules) -> tuple[str, ...] | None:
    """Split a compound part into known words ('dynamicip' -> dynamic, ip), or None."""
    n = len(part)
    best: list[tuple[str, ...] | None] = [None] * (n + 1)
    best[0] = ()
    for end in range(1, n + 1):
        for start in range(max(0, end - 20), end):
            prefix = best[start]
            if prefix is not None and part[start:end] in rules.compound_words:
                best[end] = (*prefix, part[start:end])
                break
    words = best[n]
    if words is None or len(words) < 2 or not any(w in rules.tokens for w in words):
        return None
    return words


@lru_cache(maxsize=65536)
def _label_tokens(label: str, rules: Rules) -> tuple[tuple[Token, str], ...]:
    """Tokens of one (masked) label, with how each matched. Cached: labels repeat across a range."""
    hits: list[tuple[Token, str]] = []
    if label.startswith("xn--"):
        with contextlib.suppress(UnicodeError):  # not valid punycode: look at it as it is
            label = label.encode("ascii").decode("idna")
    chunks = _CHUNK.findall(label)
    whole = len(chunks) == 1 and chunks[0] == label
    for chunk in chunks:
        if _HEX_ID.fullmatch(chunk) and any(c.isdigit() for c in chunk):
            continue  # a generated id (hex of an address, a MAC): its letters are not words
        token = rules.tokens.get(chunk)
        if token is not None:  # words with digits (adsl2, 3g) before splitting letters from digits
            hits.append((token, "whole label" if whole else "label part"))
            continue
        parts = _ALPHA_OR_DIGITS.findall(chunk)
        for part in parts:
            if part.isdigit():
                continue
            token = rules.tokens.get(part)
            if token is not None:
                how = "whole label" if whole and len(parts) == 1 else "label part"
                hits.append((token, how))
                continue
            if len(part) >= 5:
                words = _segment(part, rules)
                if words:
                    for word in words:
                        if word in rules.tokens:
                            hits.append((rules.tokens[word], f"part of '{part}'"))
    return tuple(hits)


def _describe(hit: _Hit) -> str:
    where = "in the registered domain" if hit.in_domain else f"in label {hit.label}"
    return f"token '{hit.token.word}' ({hit.token.category}) as {hit.how} {where}"


# --- the verdict -------------------------------------------------------------------------------------------


def _invalid(reason: str) -> Classification:
    return Classification(NameVerdict.GENERIC, [f"invalid name: {reason}"])


def as_address(address: str | IPAddress) -> IPAddress:
    """An address object; strict dotted-quad text takes a fast path (batch classification parses millions)."""
    if not isinstance(address, str):
        return address
    try:
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, address))
    except OSError:
        return parse_address(address)


class _Words(NamedTuple):
    """What the words of a name say, apart from the address: computed once per name skeleton."""

    static: tuple[_Hit, ...]
    dynamic: tuple[_Hit, ...]  # in the host part
    domain_dynamic: tuple[_Hit, ...]  # in the registered domain: count only with the address embedded
    server: tuple[_Hit, ...]
    generated: tuple[tuple[int, int], ...]  # label spans of generated ids and placeholders
    dynamic_scheme: bool
    notes: tuple[str, ...]  # reasons about schemes, placeholders and ignored words
    id_digits: int  # longest digit run in the host part, outside server names (mx1, smtp02)
    described: dict[_Hit, str]  # the reason text of each hit


_NOT_DOT = re.compile(r"[^.]")


@lru_cache(maxsize=32768)
def _words(skeleton: str, domain: str, rules: Rules) -> _Words:
    """Tokens and schemes of a name whose embedded address is blanked out (its *skeleton*).

    Cached: the names of one ISP's range share a handful of skeletons (c-   -  -   -  .hsd1...).
    """
    host_len = len(skeleton) - len(domain) - 1
    host = skeleton[: max(host_len, 0)]
    domain_first_label = skeleton.count(".") + 1 - domain.count(".")
    notes: list[str] = []
    generated: list[tuple[int, int]] = []
    dynamic_scheme = False
    if host and rules.any_scheme.search(host):
        for scheme in rules.schemes:
            m = scheme.pattern.search(host)
            if m:
                notes.append(
                    f"{scheme.verdict.value} naming scheme: {scheme.name} ({m.group().strip(' .-')})"
                )
                if scheme.verdict is NameVerdict.DYNAMIC:
                    dynamic_scheme = True
                else:
                    generated.append(_label_span(skeleton, m.start(), m.end()))
    static: list[_Hit] = []
    dynamic: list[_Hit] = []
    domain_dynamic: list[_Hit] = []
    server: list[_Hit] = []
    for number, label in enumerate(skeleton.split("."), start=1):
        in_domain = number >= domain_first_label
        for token, how in _label_tokens(label, rules):
            hit = _Hit(token, number, how, in_domain)
            if in_domain:
                if token.kind == "dynamic":
                    domain_dynamic.append(hit)
                elif token.kind == "static":
                    notes.append(f"{_describe(hit)} ignored: a static claim must be in the host part")
            elif token.kind == "dynamic":
                dynamic.append(hit)
            elif token.kind == "static":
                static.append(hit)
            elif token.kind == "server":
                server.append(hit)
            else:
                notes.append(f"{_describe(hit)}: a placeholder, not a host name")
                generated.append((number, number))
    id_digits = max(
        (
            len(digits)
            for chunk in _CHUNK.findall(host)
            if not any(
                p in rules.tokens and rules.tokens[p].kind == "server"
                for p in _ALPHA_OR_DIGITS.findall(chunk)
            )
            for digits in _DIGITS.findall(chunk)
        ),
        default=0,
    )
    described = {hit: _describe(hit) for hit in static + dynamic + domain_dynamic + server}
    return _Words(
        tuple(static),
        tuple(dynamic),
        tuple(domain_dynamic),
        tuple(server),
        tuple(generated),
        dynamic_scheme,
        tuple(notes),
        id_digits,
        described,
    )


def classify(address: str | IPAddress, ptr_name: str, rules: Rules | None = None) -> Classification:
    """Judge one PTR name of ``address``. Raises NetworkError only for a bad *address*; never for the name."""
    addr = as_address(address)
    rules = rules or default_rules()
    if not isinstance(ptr_name, str):
        return _invalid(f"not text ({type(ptr_name).__name__})")
    name, problem = _normalise(ptr_name)
    if problem:
        return _invalid(problem)
    if name.endswith(rules.private_suffixes):
        return _invalid(f"{name.rsplit('.', 1)[-1]} is a private top-level name, not a public host name")
    domain = _registered_domain(".".join(name.rsplit(".", 3)[-3:]))

    # where the address sits in the name; the skeleton is the name with it blanked out (dots kept)
    if isinstance(addr, ipaddress.IPv4Address):
        embeddings = _v4_embeddings(name, addr.packed, rules)
    else:
        embeddings = _v6_embeddings(name, addr, rules)
    reasons = [
        f"address embedded {e.form}: {name[e.start : e.end]} in {_labels_text(name, e.start, e.end)}"
        for e in embeddings
    ]
    skeleton = name
    for e in embeddings:
        skeleton = skeleton[: e.start] + _NOT_DOT.sub(" ", skeleton[e.start : e.end]) + skeleton[e.end :]
    words = _words(skeleton, domain, rules)
    reasons += words.notes

    isp_static = isp_dynamic = isp_generic = False
    for rule in rules.isp.get(domain, ()):
        if rule.pattern.search(name):
            reasons.append(f"ISP pattern for {domain}: {rule.reason} ({rule.verdict.value})")
            isp_static |= rule.verdict is NameVerdict.STATIC
            isp_dynamic |= rule.verdict is NameVerdict.DYNAMIC
            isp_generic |= rule.verdict is NameVerdict.GENERIC

    embedded = bool(embeddings or words.generated or isp_generic)
    dynamic_hits = words.dynamic + words.domain_dynamic if embedded else words.dynamic
    reasons += [words.described[h] for h in words.static]
    reasons += [words.described[h] for h in dynamic_hits]
    strong = any(h.token.weight >= rules.strong_dynamic_weight for h in dynamic_hits)

    if strong or words.dynamic_scheme or isp_dynamic:
        if words.static or isp_static:
            reasons.append("static token overridden: the name also says dynamic (ambiguous, so it fails)")
        return Classification(NameVerdict.DYNAMIC, reasons)

    if words.static or isp_static:
        if isp_static or not embedded:
            return Classification(NameVerdict.STATIC, reasons)
        if all(e.other for e in embeddings) and not words.generated and not isp_generic:
            reasons.append("the static token describes a different address: it says nothing about this one")
            return Classification(NameVerdict.GENERIC, reasons)
        spans = [_label_span(name, e.start, e.end) for e in embeddings if not e.other] + list(words.generated)
        adjacent = any(first - 1 <= h.label <= last + 1 for h in words.static for first, last in spans)
        static_weight = max(h.token.weight for h in words.static)
        heaviest_dynamic = max((h.token.weight for h in dynamic_hits), default=0)
        if adjacent or static_weight > heaviest_dynamic:
            if not adjacent:
                reasons.append("static token is not next to the address but no dynamic token contradicts it")
            return Classification(NameVerdict.STATIC, reasons)
        reasons.append("static token is not next to the address and the name also has dynamic tokens")
        return Classification(NameVerdict.DYNAMIC, reasons)

    if dynamic_hits:
        if embedded:
            return Classification(NameVerdict.DYNAMIC, reasons)
        dynamic_weight = sum(h.token.weight for h in dynamic_hits)
        if dynamic_weight >= rules.no_address_dynamic_weight:
            reasons.append(f"dynamic tokens weigh {dynamic_weight} without the address in the name")
            return Classification(NameVerdict.DYNAMIC, reasons)
        if words.id_digits >= rules.no_address_id_digits:
            reasons.append("dynamic token with a numeric line id")
            return Classification(NameVerdict.DYNAMIC, reasons)
        reasons += [words.described[h] for h in words.server]
        reasons.append("a weak dynamic token without the address or a line id: treated as a hand-made name")
        return Classification(NameVerdict.CUSTOM, reasons)

    if embedded:
        reasons.append("nothing in the name says static")
        return Classification(NameVerdict.GENERIC, reasons)

    reasons.append("no address, pool token or generated id in the name: hand-made")
    return Classification(NameVerdict.CUSTOM, reasons)


def classify_all(
    address: str | IPAddress, names: Iterable[str], rules: Rules | None = None
) -> Classification:
    """Judge every PTR name of one address: all must pass; the worst verdict wins, reasons are merged."""
    addr = as_address(address)
    names = list(names)
    if not names:
        return Classification(NameVerdict.NONE, ["no PTR record"])
    results = [classify(addr, name, rules) for name in names]
    if len(results) == 1:
        return results[0]
    worst = max(results, key=lambda r: _SEVERITY[r.verdict]).verdict
    reasons = [
        f"{name}: {reason}" for name, result in zip(names, results, strict=True) for reason in result.reasons
    ]
    failing = [name for name, result in zip(names, results, strict=True) if not result.passes]
    if failing:
        reasons.append(f"{len(failing)} of {len(names)} PTR names fail: every name must pass")
    return Classification(worst, reasons)


__all__ = [
    "PASSING",
    "Classification",
    "NetworkError",
    "Rules",
    "RulesError",
    "classify",
    "classify_all",
    "default_rules",
    "load_rules",
]
