"""Find the addresses a request names, in every notation people write, and only those.

Pure: text in, :class:`ExtractedTargets` out. Each candidate is either a target (a normalized CIDR with the
text it came from) or ignored with a reason an analyst can read; masked addresses only set a flag.

Passes run from the most specific notation to the least, each consuming the text it used: DNSBL query
names under our zone and in-addr/ip6.arpa names (reversed back), rDNS names with a dashed address,
dash ranges (one line only; the minimal CIDR cover), CIDRs and IPv6, wildcards, dates, last-octet lists
(``203.0.113.7, .8 and .9``), single addresses.

Decisions a reader could not guess:

* ``*``/``x`` in trailing octets after at least two real ones is a wildcard (``203.0.113.*`` is a /24,
  ``198.51.*.*`` a /16); a hidden octet before a visible one, a partly hidden octet, or ``xxx.xxx`` over
  two octets (``203.0.xxx.xxx``, how people hide one address) is *masked*: no target, ``masked`` set.
* An address glued to a host-name label (``203.0.113.7.example.net``, ``mail.203.0.113.7``,
  ``7.113.0.203.dyn.example.net``) describes a name, it does not request the address.
* A keyword (``version``, ``build``, ``firmware`` ...) or a ``Product/`` token right before a dotted quad
  makes it a version string; dotted runs longer than four numbers (OIDs) never match.
* Networks nested in another named network are dropped; adjacent ones are not merged.
* Our own networks and reserved space are cut out of a larger target (with a note), never listed.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tmsi.domain.networks import IPAddress, IPNetwork, NetworkError, exclude, range_to_cidrs

# Ranges that are never delisting targets, with the reason reported to the analyst.
# The documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32, 3fff::/20)
# are deliberately absent: every fixture and test uses them as stand-ins for public addresses, and
# ``ipaddress``'s is_private/is_reserved flags them differently across Python versions, so those
# flags are not used at all.
NON_TARGET_V4: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "reserved"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
)
NON_TARGET_V6: tuple[tuple[str, str], ...] = (
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b::/96", "reserved"),
    ("100::/64", "reserved"),
    ("2001::/23", "reserved"),
    ("fc00::/7", "private"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "reserved"),
    ("ff00::/8", "multicast"),
)
_NON_TARGETS: list[tuple[IPNetwork, str]] = [
    (ipaddress.ip_network(cidr), reason) for cidr, reason in NON_TARGET_V4 + NON_TARGET_V6
]
GLOBAL_V6 = ipaddress.IPv6Network("2000::/3")

MAX_TEXT_CHARS = 2_000_000

# Every reason an ``ignored`` entry can carry.
IGNORE_REASONS = (
    "private",
    "shared",
    "loopback",
    "link-local",
    "multicast",
    "reserved",
    "unspecified",
    "own network",
    "inside host name",
    "version string",
    "date/time",
    "invalid range",
    "not an address",
)


@dataclass
class ExtractedTargets:
    networks: list[IPNetwork] = field(default_factory=list)
    # cidr -> text as written (dashes, full-width forms and defanged dots folded to ASCII)
    sources: dict[str, str] = field(default_factory=dict)
    oversized: list[str] = field(default_factory=list)  # cidrs larger than the configured limit
    masked: bool = False
    masked_samples: list[str] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (text, reason)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (text, note), e.g. host bits set

    @property
    def cidrs(self) -> list[str]:
        return [str(n) for n in self.networks]


# --------------------------------------------------------------------------------------------------
# text normalization

DASHES = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"), "-")
ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
# Defanged notation from abuse desks: 203.0.113[.]7, 203[.]0[.]113[.]7, 203(.)0.113.7, 203[dot]0...
DEFANG = re.compile(r"\s?(?:\[\.\]|\(\.\)|\{\.\}|\[dot\]|\(dot\))\s?", re.IGNORECASE)


IDEOGRAPHIC_STOP_IN_NUMBER = re.compile("(?<=\\d)\u3002(?=\\d)")


def normalize_text(text: str) -> str:
    """Fold full-width digits and punctuation, dashes and defanged dots to ASCII; drop zero-width chars."""
    text = unicodedata.normalize("NFKC", text).translate(DASHES).translate(ZERO_WIDTH)
    text = IDEOGRAPHIC_STOP_IN_NUMBER.sub(".", text)  # 203。0。113。7; a sentence's final 。 stays
    return DEFANG.sub(".", text)


# --------------------------------------------------------------------------------------------------
# patterns

OCT = r"\d{1,3}"
V4 = rf"{OCT}(?:\.{OCT}){{3}}"
# IPv6 candidates: hex groups and colons (at least two colons), optional embedded IPv4 tail.
V6 = r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:" + V4 + r"|[0-9A-Fa-f]{1,4}|:)?"
# "to" in several languages; \u0434\u043e is Russian "do", \uff5e the full-width tilde.
# Separators stay on one line: "- 203.0.113.10\n- 203.0.113.20" is a bulleted list, not a range.
RANGE_SEP = (
    r"[ \t]*(?:-|~|\.\.|\bto\b|\bthrough\b|\bthru\b|\bbis\b|\ba\b"
    "|\\b\u00e0\\b|\\b\u0434\u043e\\b|\u81f3|\u5230|\uff5e)[ \\t]*"
)
# A wildcard or masked octet: *, x, **, xxx, 1**, *3, ?, #.
MOCT = r"(?:[*xX?#]{1,3}|\d{1,2}[*xX]{1,2}|[*xX]{1,2}\d{1,2})"
ANY_OCT = rf"(?:{OCT}|{MOCT})"

V4_START = r"(?<!\d)(?<!\d\.)"  # not inside a longer dotted number; "host.203..." is checked later
V4_END = r"(?!\.?\d)"

DNSBL_V4_TEMPLATE = r"(?<![\w.-])({oct}(?:\.{oct}){{3}})\.{zone}\.?(?![\w-])"
DNSBL_V6_TEMPLATE = r"(?<![\w.-])((?:[0-9A-Fa-f]\.){{32}}){zone}\.?(?![\w-])"
IN_ADDR = re.compile(
    r"(?<![\w.-])((?:\d{1,3}(?:[-/]\d{1,3})?\.){1,5})in-addr\.arpa\.?(?![\w-])", re.IGNORECASE
)
IP6_ARPA = re.compile(r"(?<![\w.-])((?:[0-9A-Fa-f]\.){1,32})ip6\.arpa\.?(?![\w-])", re.IGNORECASE)
V4_FULL_RANGE = re.compile(rf"{V4_START}({V4})(?:/(\d{{1,2}}))?{RANGE_SEP}({V4}){V4_END}", re.IGNORECASE)
SHORT_SEP = "[ \\t]*(-|~|\\bto\\b|\uff5e|\u81f3|\u5230)[ \\t]*"
V4_SHORT_RANGE = re.compile(rf"{V4_START}({V4}){SHORT_SEP}(\d{{1,3}}){V4_END}(?![\w*])", re.IGNORECASE)
V4_BRACKET_RANGE = re.compile(rf"{V4_START}({OCT}\.{OCT}\.{OCT})\.\[(\d{{1,3}})\s*-\s*(\d{{1,3}})\]")
# A prefix length or a dotted netmask (255.x.x.x): "203.0.113.7/203.0.113.8" is a list, not a mask.
V4_CIDR = re.compile(rf"{V4_START}({V4})\s?/\s?(\d{{1,2}}|255(?:\.{OCT}){{3}}){V4_END}(?![\w])")
# "203.0.113.7, .8 and .9": further last octets of the same /24.
LAST_OCTET_LIST = re.compile(
    rf"{V4_START}({V4})((?:[ \t]*(?:,|;|&|\band\b|\bund\b|\bet\b|\by\b|\bor\b)[ \t]*\.\d{{1,3}}(?!\.?\d))+)",
    re.IGNORECASE,
)
V4_WILDCARD = re.compile(rf"(?<![\w.*?#-])({ANY_OCT}(?:\.{ANY_OCT}){{3}}){V4_END}(?![\w*?#])")
V4_SINGLE = re.compile(rf"{V4_START}({V4}){V4_END}")
V6_END = r"(?![\w:]|\.\d)"
V6_RANGE = re.compile(rf"(?<![\w:.])({V6}){RANGE_SEP}({V6}){V6_END}", re.IGNORECASE)
V6_CIDR_OR_SINGLE = re.compile(rf"(?<![\w:.])({V6})(?:/(\d{{1,3}}))?{V6_END}")
DATE_LIKE = re.compile(
    r"(?<![\d.])(?:\d{4}[./-]\d{1,2}[./-]\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{4})(?![\d])"
    r"(?:[ T]\d{1,2}[:.]\d{2}(?:[:.]\d{2})?(?![\d.]))?"
)

# A version/section keyword (or a "Product/" token) directly before a number: where it ends, what
# follows is not an address. Found in one pass over the text; candidates look their start up.
VERSION_BEFORE = re.compile(
    r"(?:\b(?:ver|version|versión|versao|versione|build|rev|revision|firmware|fw|kernel|"
    r"firefox|chrome|thunderbird|outlook|safari|section|sect|chapter|oid|"
    r"版本|バージョン|версия)\.?[ \t]*[:=#]?[ \t]*|\bv|(?-i:\b[A-Z][A-Za-z]+/))(?=\d)",
    re.IGNORECASE,
)
HOST_AFTER = re.compile(r"[.-][A-Za-z0-9-]*[A-Za-z][A-Za-z0-9-]*(?:\.[A-Za-z0-9-]+)*\.?")
# rDNS names embedding a dashed address: static-203-0-113-7.example.net describes, it does not request.
DASHED_HOST = re.compile(
    r"(?<![\w.-])[A-Za-z0-9-]*?(?<![\d])\d{1,3}-\d{1,3}-\d{1,3}-\d{1,3}(?![\d])[A-Za-z0-9-]*(?:\.[A-Za-z0-9-]+)+"
)
HOST_BEFORE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*[.-]$")


# --------------------------------------------------------------------------------------------------
# helpers


def _v4(text: str) -> ipaddress.IPv4Address | None:
    """Dotted quad, tolerating zero padding (``203.000.113.007`` is decimal in requests, never octal)."""
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
        return None
    octets = [int(p) for p in parts]
    if any(o > 255 for o in octets):
        return None
    return ipaddress.IPv4Address((octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3])


def _v6(text: str) -> ipaddress.IPv6Address | None:
    try:
        return ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        return None


def _host(address: IPAddress) -> IPNetwork:
    """The /32 or /128 of an address (the tuple form skips re-parsing the text)."""
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv4Network((int(address), 32))
    return ipaddress.IPv6Network((int(address), 128))


def _bounds(network: IPNetwork) -> tuple[int, int, int]:
    """(version, first, last) as integers: comparisons without ipaddress's per-call overhead."""
    first = int(network.network_address)
    return network.version, first, first + (1 << (network.max_prefixlen - network.prefixlen)) - 1


_NON_TARGET_BOUNDS = [(*_bounds(network), network, reason) for network, reason in _NON_TARGETS]
_GLOBAL_V6_BOUNDS = _bounds(GLOBAL_V6)


# IPv4 non-target ranges by first octet, so a single address is checked against at most one or two.
_V4_BY_OCTET: list[list[tuple[int, int, int, IPNetwork, str]]] = [
    [b for b in _NON_TARGET_BOUNDS if b[0] == 4 and b[1] >> 24 <= octet <= b[2] >> 24] for octet in range(256)
]


def _non_target_candidates(network: IPNetwork) -> list[tuple[int, int, int, IPNetwork, str]]:
    if network.version == 4 and network.prefixlen >= 8:
        return _V4_BY_OCTET[int(network.network_address) >> 24]
    return _NON_TARGET_BOUNDS


def _non_target_reason(network: IPNetwork) -> str | None:
    """The reason ``network`` is wholly not a target, or None."""
    version, first, last = _bounds(network)
    candidates = _non_target_candidates(network)
    for r_version, r_first, r_last, _network, reason in candidates:
        if r_version == version and r_first <= first and last <= r_last:
            return reason
    if version == 6:
        _, g_first, g_last = _GLOBAL_V6_BOUNDS
        if last < g_first or first > g_last:
            return "reserved"
    return None


def _overlapping(network: IPNetwork, others: Sequence[IPNetwork]) -> list[IPNetwork]:
    version, first, last = _bounds(network)
    found = []
    for other in others:
        o_version, o_first, o_last = _bounds(other)
        if o_version == version and o_first <= last and first <= o_last:
            found.append(other)
    return found


def _mapped_v4(network: IPNetwork) -> IPNetwork:
    """``::ffff:203.0.113.7`` names the IPv4 address it maps."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    return network


class _Collector:
    def __init__(self, text: str, own: list[IPNetwork], max_v4: int, max_v6: int) -> None:
        self.text = text
        self.used = bytearray(len(text))
        self.version_ends = {m.end() for m in VERSION_BEFORE.finditer(text)}
        self.own = own
        self.max_v4 = max_v4
        self.max_v6 = max_v6
        self.found: list[tuple[IPNetwork, str]] = []
        self.result = ExtractedTargets()

    def free(self, start: int, end: int) -> bool:
        return not any(self.used[start:end])

    def take(self, start: int, end: int) -> None:
        self.used[start:end] = b"\x01" * (end - start)

    def ignore(self, written: str, reason: str) -> None:
        entry = (written, reason)
        if entry not in self.result.ignored:
            self.result.ignored.append(entry)

    def note(self, written: str, note: str) -> None:
        entry = (written, note)
        if entry not in self.result.notes:
            self.result.notes.append(entry)

    def context_reason(self, start: int, end: int) -> str | None:
        """'inside host name' or 'version string' when the text around [start, end) says so."""
        if start in self.version_ends:
            return "version string"
        if HOST_AFTER.match(self.text, end):
            # "203.0.113.7." then a sentence is not a host name: require no space after the dot.
            return "inside host name"
        if (
            start
            and self.text[start - 1] in ".-"
            and HOST_BEFORE.search(self.text, max(0, start - 64), start)
        ):
            return "inside host name"
        return None

    def add(self, network: IPNetwork, written: str) -> None:
        network = _mapped_v4(network)
        reason = _non_target_reason(network)
        if reason is not None:
            self.ignore(written, reason)
            return
        pieces: list[IPNetwork] = [network]
        for own in _overlapping(network, self.own):
            if _bounds(own)[1] <= _bounds(network)[1] and _bounds(network)[2] <= _bounds(own)[2]:
                self.ignore(written, "own network")
                return
            self.note(written, f"our own network {own} left out")
            pieces = [q for p in pieces for q in exclude(p, own)]
        version, first, last = _bounds(network)
        for r_version, r_first, r_last, reserved, reason in _non_target_candidates(network):
            # a large target partly over reserved space keeps the rest
            if r_version == version and r_first <= last and first <= r_last:
                self.note(written, f"{reason} range {reserved} left out")
                pieces = [q for p in pieces for q in exclude(p, reserved)]
        for piece in pieces:
            self.found.append((piece, written))

    def finish(self) -> ExtractedTargets:
        ordered = sorted(
            dict.fromkeys(n for n, _ in self.found),
            key=lambda n: (n.version, int(n.network_address), n.prefixlen),
        )
        kept: list[IPNetwork] = []
        for network in ordered:
            # Sorted by start, then larger first: CIDRs nest or are disjoint, so if any kept network
            # contains this one, the last kept network does.
            last = kept[-1] if kept else None
            if last is not None and last.version == network.version and network.subnet_of(last):  # type: ignore[arg-type]
                continue
            kept.append(network)
        result = self.result
        result.networks = kept
        kept_set = set(kept)
        for network, written in self.found:
            key = str(network)
            if network in kept_set and key not in result.sources:
                result.sources[key] = written.strip()
        for network in kept:
            limit = self.max_v4 if network.version == 4 else self.max_v6
            if network.prefixlen < limit:
                result.oversized.append(str(network))
        return result


# --------------------------------------------------------------------------------------------------
# passes, most specific notation first; each consumes the text it used


def _in_addr_network(labels: list[str]) -> IPNetwork | None:
    """The address or network an in-addr.arpa name encodes (labels before ``in-addr.arpa``).

    ``7.113.0.203`` → 203.0.113.7/32; ``113.0.203`` → the /24 reverse zone; RFC 2317 classless names
    ``7.0/26.113.0.203`` (an address) and ``0/26.113.0.203`` or ``64-127.113.0.203`` (the delegated block).
    """
    classless = [i for i, label in enumerate(labels) if "/" in label or "-" in label]
    try:
        if not classless:
            if len(labels) > 4 or not all(label.isdigit() and int(label) <= 255 for label in labels):
                return None
            octets = [str(int(o)) for o in labels[::-1]] + ["0"] * (4 - len(labels))
            return ipaddress.IPv4Network(f"{'.'.join(octets)}/{8 * len(labels)}")
        index = classless[0]
        parent = labels[index + 1 :][::-1]
        if len(classless) > 1 or len(parent) != 3 or index > 1:
            return None
        if index == 1:  # host label, then the delegation label
            address = _v4(".".join([*parent, labels[0]]))
            return _host(address) if address else None
        label = labels[0]
        if "/" in label:
            start, prefix = label.split("/", 1)
            return ipaddress.IPv4Network(f"{'.'.join(parent)}.{int(start)}/{int(prefix)}")
        low, high = label.split("-", 1)
        first, last = _v4(f"{'.'.join(parent)}.{low}"), _v4(f"{'.'.join(parent)}.{high}")
        if first is None or last is None:
            return None
        pieces = range_to_cidrs(first, last)
        return pieces[0] if len(pieces) == 1 else None
    except (ValueError, NetworkError):
        return None


def _dashed_hosts(c: _Collector) -> None:
    for m in DASHED_HOST.finditer(c.text):
        if c.free(m.start(), m.end()):
            c.take(m.start(), m.end())
            c.ignore(m.group(0), "inside host name")


def _reverse_names(c: _Collector, dnsbl_zone: str) -> None:
    lowered = c.text.lower()
    zone = dnsbl_zone.strip().strip(".").lower()
    if zone and zone in lowered:
        zone_re = re.escape(zone)
        dnsbl_v4 = re.compile(DNSBL_V4_TEMPLATE.format(oct=OCT, zone=zone_re), re.IGNORECASE)
        dnsbl_v6 = re.compile(DNSBL_V6_TEMPLATE.format(zone=zone_re), re.IGNORECASE)
        for m in dnsbl_v4.finditer(c.text):
            address = _v4(".".join(reversed(m.group(1).split("."))))
            c.take(m.start(), m.end())
            if address is None:
                c.ignore(m.group(0), "not an address")
            else:
                c.add(_host(address), m.group(0))
        for m in dnsbl_v6.finditer(c.text):
            nibbles = m.group(1).rstrip(".").split(".")[::-1]
            c.take(m.start(), m.end())
            hexstr = "".join(nibbles)
            address6 = ipaddress.IPv6Address(int(hexstr, 16))
            c.add(_host(address6), m.group(0))
    if "arpa" not in lowered:
        return
    for m in IN_ADDR.finditer(c.text):
        c.take(m.start(), m.end())
        network = _in_addr_network(m.group(1).rstrip(".").split("."))
        if network is None:
            c.ignore(m.group(0), "not an address")
        else:
            c.add(network, m.group(0))
    for m in IP6_ARPA.finditer(c.text):
        nibbles = m.group(1).rstrip(".").split(".")[::-1]
        c.take(m.start(), m.end())
        hexstr = "".join(nibbles).ljust(32, "0")
        network6 = ipaddress.IPv6Network((int(hexstr, 16), 4 * len(nibbles)))
        c.add(network6, m.group(0))


def _ranges(c: _Collector) -> None:
    for m in V4_FULL_RANGE.finditer(c.text):
        if not c.free(m.start(), m.end()):
            continue
        first, last = _v4(m.group(1)), _v4(m.group(3))
        if first is None or last is None:
            continue
        c.take(m.start(), m.end())
        reason = c.context_reason(m.start(), m.end())
        if reason:
            c.ignore(m.group(0), reason)
            continue
        if m.group(2):  # "203.0.113.0/24 - 203.0.113.255": the prefix adds nothing to the range
            c.note(m.group(0), "prefix on a range start ignored")
        _add_range(c, first, last, m.group(0))
    for m in V4_SHORT_RANGE.finditer(c.text):
        if not c.free(m.start(), m.end()):
            continue
        first = _v4(m.group(1))
        if first is None:
            continue
        separator, end_octet = m.group(2), int(m.group(3))
        if end_octet > 255 or end_octet <= int(first) & 0xFF:
            if separator == "-":  # "203.0.113.50-10": clearly meant as a range, and a wrong one
                c.take(m.start(), m.end())
                c.ignore(m.group(0), "invalid range")
            continue  # "203.0.113.7 to 5 days" is prose: the address is read by the singles pass
        c.take(m.start(), m.end())
        reason = c.context_reason(m.start(), m.end())
        if reason:
            c.ignore(m.group(0), reason)
            continue
        last = ipaddress.IPv4Address((int(first) & 0xFFFFFF00) | end_octet)
        _add_range(c, first, last, m.group(0))
    for m in V4_BRACKET_RANGE.finditer(c.text):
        if not c.free(m.start(), m.end()):
            continue
        c.take(m.start(), m.end())
        low, high = _v4(f"{m.group(1)}.{m.group(2)}"), _v4(f"{m.group(1)}.{m.group(3)}")
        if low is None or high is None:
            c.ignore(m.group(0), "invalid range")
            continue
        _add_range(c, low, high, m.group(0))
    for m in V6_RANGE.finditer(c.text):
        if not c.free(m.start(), m.end()):
            continue
        first6, last6 = _v6(m.group(1)), _v6(m.group(2))
        if first6 is None or last6 is None:
            continue
        c.take(m.start(), m.end())
        _add_range(c, first6, last6, m.group(0))


def _add_range(c: _Collector, first: IPAddress, last: IPAddress, written: str) -> None:
    try:
        pieces = range_to_cidrs(first, last)
    except NetworkError:
        c.ignore(written, "invalid range")
        return
    for piece in pieces:
        c.add(piece, written)


def _cidrs(c: _Collector) -> None:
    for m in V4_CIDR.finditer(c.text):
        if not c.free(m.start(), m.end()):
            continue
        address = _v4(m.group(1))
        if address is None:
            continue
        c.take(m.start(), m.end())
        reason = c.context_reason(m.start(), m.end())
        if reason:
            c.ignore(m.group(0), reason)
            continue
        prefix_text = m.group(2)
        try:
            network = ipaddress.IPv4Network(f"{address}/{prefix_text}", strict=False)
        except ValueError:
            c.ignore(m.group(0), "not an address")  # /33, or 255.0.255.0
            continue
        if network.network_address != address:
            c.note(m.group(0), f"host bits set; using the network {network}")
        c.add(network, m.group(0))
    for m in V6_CIDR_OR_SINGLE.finditer(c.text):
        if not c.free(m.start(), m.end()):
            continue
        address6 = _v6(m.group(1))
        if address6 is None or not re.search(r"[0-9A-Fa-f]", m.group(1)):
            continue  # "::" alone is punctuation ("Name :: value"), not the unspecified address
        c.take(m.start(), m.end())
        prefix = m.group(2)
        written = m.group(0)
        if prefix is None:
            c.add(_host(address6), written)
            continue
        if int(prefix) > 128:
            c.ignore(written, "not an address")
            continue
        network6 = ipaddress.IPv6Network(f"{address6}/{prefix}", strict=False)
        if network6.network_address != address6:
            c.note(written, f"host bits set; using the network {network6}")
        c.add(network6, written)


def _wildcards(c: _Collector) -> None:
    for m in V4_WILDCARD.finditer(c.text):
        written = m.group(1)
        if not c.free(m.start(), m.end()) or not re.search(r"[*xX?#]", written):
            continue
        parts = written.split(".")
        numeric = [p.isdigit() for p in parts]
        if len(parts) < 4:
            continue  # "1.x", "x.5" and "Python 3.11.*" are prose
        c.take(m.start(), m.end())
        reason = c.context_reason(m.start(), m.end())
        if reason:
            c.ignore(written, reason)
            continue
        leading = 0
        while leading < 4 and numeric[leading]:
            leading += 1
        wildcard_tail = all(re.fullmatch(r"[*xX]{1,3}", p) for p in parts[leading:])
        if leading == 2 and any(len(p) > 1 for p in parts[leading:]):
            # "198.51.*.*" is a glob; "203.0.xxx.xxx" hides a single address (nobody asks for a /16 so)
            wildcard_tail = False
        if leading >= 2 and wildcard_tail and all(int(p) <= 255 for p in parts[:leading]):
            network = ipaddress.IPv4Network(
                ".".join(parts[:leading] + ["0"] * (4 - leading)) + f"/{8 * leading}"
            )
            c.add(network, written)
            continue
        # A hidden octet before a visible one, or a partly hidden octet: the sender masked it.
        c.result.masked = True
        if written not in c.result.masked_samples:
            c.result.masked_samples.append(written)


def _last_octet_lists(c: _Collector) -> None:
    for m in LAST_OCTET_LIST.finditer(c.text):
        if not c.free(m.start(), m.end()):
            continue
        first = _v4(m.group(1))
        octets = [int(o) for o in re.findall(r"\.(\d{1,3})", m.group(2))]
        if first is None or any(o > 255 for o in octets):
            continue
        c.take(m.start(), m.end())
        reason = c.context_reason(m.start(), m.start() + len(m.group(1)))
        if reason:
            c.ignore(m.group(0), reason)
            continue
        base = int(first) & 0xFFFFFF00
        for address in [first, *(ipaddress.IPv4Address(base | o) for o in octets)]:
            c.add(_host(address), m.group(0))


def _singles(c: _Collector) -> None:
    for m in V4_SINGLE.finditer(c.text):
        if not c.free(m.start(), m.end()):
            continue
        c.take(m.start(), m.end())
        written = m.group(1)
        address = _v4(written)
        if address is None:
            c.ignore(written, "not an address")
            continue
        reason = c.context_reason(m.start(), m.end())
        if reason:
            c.ignore(written, reason)
            continue
        c.add(_host(address), written)


def _dates(c: _Collector) -> None:
    """Dates such as 2010.8.14 or 12.05.2026 are consumed so no later pass reads them as addresses."""
    for m in DATE_LIKE.finditer(c.text):
        if c.free(m.start(), m.end()):
            c.take(m.start(), m.end())
            c.ignore(m.group(0), "date/time")


def extract_targets(
    text: str,
    *,
    own_networks: Iterable[IPNetwork | str] = (),
    dnsbl_zone: str = "",
    max_prefix_v4: int = 16,
    max_prefix_v6: int = 48,
    max_chars: int = MAX_TEXT_CHARS,
) -> ExtractedTargets:
    """Every delisting target named in ``text``; see the module docstring for what is not a target.

    Only the first ``max_chars`` characters are read (a pasted mail log must not stall ingest); a note
    says so when the text was longer.
    """
    own = [n if not isinstance(n, str) else ipaddress.ip_network(n, strict=False) for n in own_networks]
    c = _Collector(normalize_text(text[:max_chars]), own, max_prefix_v4, max_prefix_v6)
    if len(text) > max_chars:
        c.note(f"{len(text)} characters", f"only the first {max_chars} characters were read")
    _reverse_names(c, dnsbl_zone)
    _dashed_hosts(c)
    _ranges(c)
    _cidrs(c)
    _wildcards(c)
    _dates(c)
    _last_octet_lists(c)
    _singles(c)
    return c.finish()
