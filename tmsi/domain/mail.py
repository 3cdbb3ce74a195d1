"""Parse raw RFC 822 bytes into a :class:`ParsedMessage`: decoded headers, text for extraction, attachments.

Pure: bytes in, values out. Tolerant of what real mailboxes hold (wrong or missing charsets, raw 8-bit
headers, broken MIME); only mail that has no usable structure at all raises :class:`MailParseError`.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email.utils
import functools
import hashlib
import quopri
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.message import Message
from email.parser import BytesParser, HeaderParser
from email.utils import getaddresses, parsedate_to_datetime
from html.parser import HTMLParser
from typing import Any

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
# Text attachments are scanned for addresses up to this size; beyond it only the head is read.
MAX_SCANNED_TEXT_BYTES = 2 * 1024 * 1024
# Inline text and HTML parts are read up to this size (a 20 MB log pasted inline stays bounded).
MAX_INLINE_TEXT_BYTES = 8 * 1024 * 1024
TEXT_ATTACHMENT_SUFFIXES = (".txt", ".csv", ".tsv", ".log", ".text", ".lst")
TEXT_ATTACHMENT_TYPES = frozenset({"text/plain", "text/csv", "text/tab-separated-values", "text/x-csv"})

# Sender-written headers that identify a message's content; relays add Received, Delivered-To,
# Return-Path, X-Original-To, Authentication-Results ... on each delivery, so those stay out of the hash.
STABLE_HEADERS = ("from", "sender", "to", "cc", "subject", "date", "message-id", "in-reply-to", "references")

# Declared charsets mapped to the superset that real mailers actually mean by them.
CHARSET_SUPERSETS = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "euc-cn": "gb18030",
    "cp936": "gb18030",
    "big5": "big5hkscs",
    "x-big5": "big5hkscs",
    "iso-2022-jp": "iso2022_jp_2",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "euc-kr": "cp949",
    "ks_c_5601-1987": "cp949",
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "us-ascii": "cp1252",
    "ascii": "cp1252",
    "iso-8859-9": "cp1254",
    "tis-620": "cp874",
    "utf8": "utf-8",
    "unicode-1-1-utf-7": "utf-7",
}
# Single-byte charsets accept every byte, so a wrong declaration never fails to decode: valid UTF-8
# with non-ASCII bytes is then the better reading (accidental valid UTF-8 in these is very rare).
SINGLE_BYTE_PREFIXES = ("iso-8859", "iso8859", "windows-125", "cp125", "koi8", "latin", "us-ascii", "ascii")
LAST_RESORT_CHARSETS = ("utf-8", "gb18030", "big5hkscs", "cp1252")


class MailParseError(ValueError):
    """Mail with no usable structure; ``reason`` is stored with the quarantined raw message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Attachment:
    filename: str
    content_type: str
    size: int
    sha256: str
    scanned: bool


@dataclass
class ParsedMessage:
    """A received message as values. Message-IDs keep their angle brackets (``<id@host>``)."""

    message_id: str
    subject: str
    from_addr: str
    from_name: str
    to_addrs: list[str]
    reply_to: str
    date: datetime | None
    in_reply_to: str
    references: list[str]
    headers: list[tuple[str, str]]
    text: str
    html: str
    attachments: list[Attachment]
    content_hash: str
    defects: list[str]
    auto_submitted: str
    cc_addrs: list[str] = field(default_factory=list)
    return_path: str | None = None  # None: no Return-Path header; "": null sender (<>)
    content_type: str = "text/plain"
    report_type: str = ""  # multipart/report; report-type=...
    # per-recipient DSN fields (lower-case names)
    delivery_status: list[dict[str, str]] = field(default_factory=list)
    returned_headers: list[tuple[str, str]] = field(default_factory=list)  # headers of a bounced message
    stable_hash: str = ""  # sha256 of the content without per-delivery trace headers
    raw_size: int = 0

    def header(self, name: str) -> str:
        """First value of header ``name`` (case-insensitive), decoded; "" when absent."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), "")

    def header_all(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    @property
    def extraction_text(self) -> str:
        """Subject and body: what extraction reads (requests often name the IP only in the subject)."""
        return f"{self.subject}\n{self.text}"


# --------------------------------------------------------------------------------------------------
# charsets


def _lookup_codec(name: str) -> str | None:
    try:
        return codecs.lookup(name).name
    except (LookupError, ValueError):
        return None


def _is_ascii(data: bytes) -> bool:
    return data.isascii()


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _detect(data: bytes) -> str | None:
    """charset-normalizer's best guess over the first 64 KiB, or None."""
    try:
        from charset_normalizer import from_bytes
    except ImportError:  # pragma: no cover - it is a declared dependency
        return None
    best = from_bytes(data[: 64 * 1024]).best()
    return best.encoding if best is not None else None


# Detector answers that short or mixed mail text produces but real mail almost never uses.
IMPLAUSIBLE_DETECTIONS = (
    "mac_",
    "cp037",
    "cp500",
    "cp1026",
    "cp273",
    "cp424",
    "cp875",
    "hp_roman",
    "ptcp154",
)
LATIN_PUNCTUATION = frozenset(
    "\u201c\u201d\u201e\u2018\u2019\u201a\u2013\u2014\u20ac\u2026\u00ab\u00bb\u00b0\u00a7\u00a0\u00b7"
)


def _latin_plausible(data: bytes) -> bool:
    """Windows-1252 text: every non-ASCII character a Latin letter or common punctuation, in short runs.

    CJK double-byte text read as 1252 yields long runs and symbols; Western text has at most a few
    accented letters in a row.
    """
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        return False
    run = 0
    for ch in text:
        if ch.isascii():
            run = 0
            continue
        run += 1
        if run > 3:
            return False
        if ch in LATIN_PUNCTUATION:
            continue
        if not (ch.isalpha() and "LATIN" in unicodedata.name(ch, "")):
            return False
    return True


def decode_bytes(data: bytes, declared: str | None = None) -> tuple[str, str]:
    """Decode ``data`` as text: the declared charset (or its superset), else detection, else fallbacks.

    Returns ``(text, charset_used)``; never raises (the last resort replaces undecodable bytes).
    """
    if not data:
        return "", (declared or "us-ascii").lower()
    label = (declared or "").strip().strip("\"'").lower()
    if _is_ascii(data) and not label.startswith(("utf-16", "utf-32", "utf-7", "iso-2022", "hz")):
        return data.decode("ascii"), "us-ascii"
    if label:
        codec = _lookup_codec(CHARSET_SUPERSETS.get(label, label))
        if codec is not None:
            single_byte = label.startswith(SINGLE_BYTE_PREFIXES)
            if single_byte and _valid_utf8(data):
                return data.decode("utf-8"), "utf-8"
            try:
                return data.decode(codec), codec
            except (UnicodeDecodeError, LookupError):
                # The superset may still fail where the literal declaration succeeds.
                original = _lookup_codec(label)
                if original and original != codec:
                    try:
                        return data.decode(original), original
                    except UnicodeDecodeError:
                        pass
    if _valid_utf8(data):
        return data.decode("utf-8"), "utf-8"
    if _latin_plausible(data):
        return data.decode("cp1252"), "cp1252"
    guessed = _detect(data)
    if guessed and not guessed.lower().startswith(IMPLAUSIBLE_DETECTIONS):
        codec = _lookup_codec(CHARSET_SUPERSETS.get(guessed.lower(), guessed))
        if codec:
            try:
                return data.decode(codec), codec
            except UnicodeDecodeError:
                pass
    for fallback in LAST_RESORT_CHARSETS[:-1]:
        try:
            return data.decode(fallback), fallback
        except UnicodeDecodeError:
            continue
    return data.decode("cp1252", errors="replace"), "cp1252"


# --------------------------------------------------------------------------------------------------
# headers

ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
FOLDING = re.compile(r"\r?\n[ \t]*")


def _decode_encoded_word(encoding: str, payload: str) -> bytes:
    if encoding in "bB":
        cleaned = re.sub(r"[^A-Za-z0-9+/]", "", payload)
        cleaned += "=" * (-len(cleaned) % 4)
        try:
            return base64.b64decode(cleaned)
        except (binascii.Error, ValueError):
            return payload.encode("ascii", "replace")
    return quopri.decodestring(payload.replace("_", " ").encode("ascii", "replace"), header=False)


def decode_header_value(value: str, fallback_charset: str | None = None) -> str:
    """Unfold and decode one raw header value: RFC 2047 words (adjacent words of one charset are joined
    before decoding, since CJK mailers split characters across them) and raw 8-bit bytes."""
    value = FOLDING.sub(" ", value).strip()
    if any("\udc80" <= ch <= "\udcff" for ch in value):
        raw = value.encode("utf-8", "surrogateescape")
        # Raw 8-bit headers are UTF-8 by RFC 6532 and in practice; the body charset is only a hint.
        value = raw.decode("utf-8") if _valid_utf8(raw) else decode_bytes(raw, fallback_charset)[0]
    if "=?" not in value:
        return value
    out: list[str] = []
    pos = 0
    pending: list[bytes] = []
    pending_charset = ""

    def flush() -> None:
        nonlocal pending, pending_charset
        if pending:
            out.append(decode_bytes(b"".join(pending), pending_charset)[0])
        pending = []
        pending_charset = ""

    for match in ENCODED_WORD.finditer(value):
        between = value[pos : match.start()]
        charset = match.group(1).split("*", 1)[0]  # RFC 2231 language suffix
        if between and not (pending and between.isspace()):
            flush()
            out.append(between)
        elif pending and charset.lower() != pending_charset.lower():
            flush()
        pending.append(_decode_encoded_word(match.group(2), match.group(3)))
        pending_charset = charset
        pos = match.end()
    flush()
    out.append(value[pos:])
    return "".join(out)


def _header_charset(message: Message) -> str | None:
    """A charset hint for raw 8-bit headers: the first declared body charset."""
    for part in message.walk():
        charset = _charset_param(part)
        if charset:
            return charset
    return None


def _raw_headers(message: Message) -> list[tuple[str, str]]:
    # raw_items() gives the values as received, before the policy builds header objects (which can
    # raise on some malformed address headers and mis-decode undeclared 8-bit bytes).
    return [(str(name), str(value)) for name, value in message.raw_items()]


MSGID = re.compile(r"<([^<>\s]+)>")


def normalize_message_id(value: str) -> str:
    """``<id@host>`` from a header value (first id only); a bare id gets its angle brackets back."""
    match = MSGID.search(value)
    if match:
        return f"<{match.group(1)}>"
    bare = value.strip().split()
    return f"<{bare[0].strip('<>')}>" if bare and bare[0].strip("<>") else ""


def message_ids(value: str) -> list[str]:
    """Every Message-ID in a References/In-Reply-To value, in order, without duplicates."""
    found = [f"<{m}>" for m in MSGID.findall(value)]
    if not found and value.strip():
        found = [f"<{token.strip('<>,')}>" for token in value.split() if token.strip("<>,")]
    return list(dict.fromkeys(found))


def _addresses(values: list[str], charset: str | None) -> list[tuple[str, str]]:
    """(decoded display name, lower-case address) pairs from raw address header values."""
    result = []
    try:
        pairs = getaddresses([FOLDING.sub(" ", v) for v in values])
    except (ValueError, IndexError, TypeError):
        pairs = []
    for name, addr in pairs:
        addr = addr.strip().strip("<>").strip()
        if any("\udc80" <= ch <= "\udcff" for ch in addr):
            addr = decode_bytes(addr.encode("utf-8", "surrogateescape"), charset)[0]
        if not addr and not name:
            continue
        result.append((decode_header_value(name, charset).strip().strip('"').strip(), addr.lower()))
    return result


# --------------------------------------------------------------------------------------------------
# HTML


class _TextExtractor(HTMLParser):
    """HTML to plain text for address extraction: text content only, blocks on their own lines.

    html2text would emit Markdown and escape ``*`` and ``-`` (breaking ``203.0.113.*`` and ranges).
    """

    BLOCK = frozenset(
        {"address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "footer", "form"}
        | {"h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre"}
        | {"section", "table", "tbody", "thead", "tfoot", "tr", "ul"}
    )
    CELL = frozenset({"td", "th"})
    SKIP = frozenset({"script", "style", "head", "title", "template", "noscript"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skip_depth += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")
        elif tag in self.CELL:
            self.parts.append("\t")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _TextExtractor()
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError):  # pragma: no cover - html.parser is very lenient
        return re.sub(r"<[^>]*>", " ", html)
    text = "".join(parser.parts).replace("\xa0", " ")
    lines = [re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


# --------------------------------------------------------------------------------------------------
# body walk


class _CachingPolicy(policy.EmailPolicy):
    """``policy.default`` that builds each distinct MIME header object once: the parser and our walk ask
    for a part's Content-Type several times, and ``policy.default`` parses the raw value again every time
    (the costliest step of parsing a message). The few distinct short Content-* values repeat across
    messages; other headers are asked once per message and not kept. Header objects are immutable, so
    sharing them is safe."""

    def header_fetch_parse(self, name: str, value: Any) -> Any:
        if hasattr(value, "name"):
            return value
        if len(value) > 256 or not name.lower().startswith("content-"):
            return super().header_fetch_parse(name, value)
        return _header_object(self, name, value)


@functools.lru_cache(maxsize=512)
def _header_object(parse_policy: _CachingPolicy, name: str, value: str) -> Any:
    return policy.EmailPolicy.header_fetch_parse(parse_policy, name, value)


PARSE_POLICY = _CachingPolicy()

# MIME headers are read from the raw values: the policy would build (and re-parse) a header object on
# every access, which cost more than the parse itself.
PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;]*)')
MIME_TYPE = re.compile(r"^[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+$")


def _raw_value(part: Message, name: str) -> str | None:
    for key, value in part.raw_items():
        if key.lower() == name:
            return str(value)
    return None


def _params(value: str) -> tuple[str, dict[str, str]]:
    """(first token lower-cased, parameters) of a Content-Type/Content-Disposition value; RFC 2231
    continuations and charsets decoded."""
    value = FOLDING.sub(" ", value)
    head, _, rest = value.partition(";")
    pairs = [(key.lower(), raw.strip()) for key, raw in PARAM.findall(";" + rest)]
    params: dict[str, str] = {}
    try:
        for key, decoded in email.utils.decode_params([(head, ""), *pairs])[1:]:
            if isinstance(decoded, tuple):  # (charset, language, '"text"') from RFC 2231
                decoded = (decoded[0], decoded[1], email.utils.unquote(decoded[2]))
            params.setdefault(key, str(email.utils.collapse_rfc2231_value(decoded)))
    except (ValueError, LookupError, TypeError, UnicodeError):
        params = {key: raw.strip('"') for key, raw in pairs}
    return head.strip().lower(), params


def _content_type(part: Message) -> tuple[str, dict[str, str]]:
    raw = _raw_value(part, "content-type")
    if raw is None:
        return part.get_default_type(), {}
    ctype, params = _params(raw)
    if not MIME_TYPE.match(ctype):
        return "text/plain", params  # RFC 2045 5.2: an invalid Content-Type means text/plain
    return ctype, params


def _safe_content_type(part: Message) -> str:
    return _content_type(part)[0]


def _charset_param(part: Message) -> str | None:
    charset = _content_type(part)[1].get("charset", "").strip()
    return charset or None


def _disposition(part: Message) -> tuple[str | None, dict[str, str]]:
    raw = _raw_value(part, "content-disposition")
    if raw is None:
        return None, {}
    disposition, params = _params(raw)
    return disposition or None, params


def _safe_filename(part: Message, charset: str | None) -> str:
    name = _disposition(part)[1].get("filename") or _content_type(part)[1].get("name") or ""
    return decode_header_value(name, charset).strip() if name else ""


# Large messages: long runs of base64 lines are cut out of the bytes handed to the MIME parser (which
# would otherwise hold several copies of them as str and line lists) and replaced by a marker line.
# The parts that contain a marker are hashed by streaming over the original bytes, never decoded whole.
ELIDE_ABOVE_BYTES = 1024 * 1024
BASE64_RUN = re.compile(rb"^(?:[A-Za-z0-9+/]{4,100}={0,2}\r?\n){1000,}", re.MULTILINE)
ELIDED_MARK = "=_tmsi_elided_{}_="
ELIDED_SPLIT = re.compile(r"=_tmsi_elided_(\d+)_=\r?\n?")


def _elide_base64_runs(raw: bytes) -> tuple[bytes, list[tuple[int, int]]]:
    if len(raw) <= ELIDE_ABOVE_BYTES:
        return raw, []
    spans: list[tuple[int, int]] = []
    out: list[bytes] = []
    pos = 0
    for match in BASE64_RUN.finditer(raw):
        out.append(raw[pos : match.start()])
        out.append(ELIDED_MARK.format(len(spans)).encode("ascii") + b"\r\n")
        spans.append((match.start(), match.end()))
        pos = match.end()
    if not spans:
        return raw, []
    out.append(raw[pos:])
    return b"".join(out), spans


class _Base64Stream:
    """Incremental base64 decoding over chunks (whitespace and padding ignored, re-added at the end)."""

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, chunk: bytes) -> bytes:
        # Runs hold only alphabet characters and line ends; a2b_base64 skips any other stray byte.
        data = self.pending + chunk.translate(None, b"\r\n\t =")
        usable = len(data) - len(data) % 4
        self.pending = data[usable:]
        return binascii.a2b_base64(data[:usable]) if usable else b""

    def close(self) -> bytes:
        data = self.pending
        self.pending = b""
        if not data:
            return b""
        try:
            return binascii.a2b_base64(data + b"=" * (-len(data) % 4))
        except binascii.Error:
            return b""


def _elided_chunks(payload: str, source: bytes, spans: list[tuple[int, int]]) -> list[bytes | memoryview]:
    """The encoded payload of a part as chunks, markers replaced by views of the original bytes."""
    chunks: list[bytes | memoryview] = []
    view = memoryview(source)
    for index, piece in enumerate(ELIDED_SPLIT.split(payload)):
        if index % 2:
            start, end = spans[int(piece)]
            for offset in range(start, end, 1 << 20):
                chunks.append(view[offset : min(end, offset + (1 << 20))])
        elif piece:
            chunks.append(piece.encode("utf-8", "surrogateescape"))
    return chunks


def _payload_digest(part: Message, state: _Walk, limit: int | None) -> tuple[int, str, bytes]:
    """(decoded size, sha256, the first ``limit`` decoded bytes, or all when None) of a leaf part."""
    payload = part.get_payload()
    if isinstance(payload, str) and state.spans and ELIDED_SPLIT.search(payload):
        chunks = _elided_chunks(payload, state.source, state.spans)
        cte = str(part.get("content-transfer-encoding", "")).strip().lower()
        if cte != "base64":  # a long run of plain lines (hex dumps, hash lists) in a 7bit/QP part
            data = b"".join(bytes(chunk) for chunk in chunks)
            if cte == "quoted-printable":
                data = quopri.decodestring(data)
            return len(data), hashlib.sha256(data).hexdigest(), data if limit is None else data[:limit]
        stream = _Base64Stream()
        digest = hashlib.sha256()
        size = 0
        head: list[bytes] = []
        kept = 0
        for chunk in [*chunks, None]:
            data = stream.feed(bytes(chunk)) if chunk is not None else stream.close()
            digest.update(data)
            size += len(data)
            if limit is None or kept < limit:
                head.append(data if limit is None else data[: limit - kept])
                kept += len(head[-1])
        return size, digest.hexdigest(), b"".join(head)
    data = _payload_bytes(part)
    return len(data), hashlib.sha256(data).hexdigest(), data if limit is None else data[:limit]


def _payload_bytes(part: Message) -> bytes:
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if isinstance(payload, bytes):
        return payload
    raw = part.get_payload()
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogateescape")
    return b""


def _is_attachment(part: Message, filename: str) -> bool:
    disposition = _disposition(part)[0]
    return disposition == "attachment" or (bool(filename) and disposition != "inline")


def _header_block_fields(block: Message) -> dict[str, str]:
    return {str(k).lower(): decode_header_value(str(v)) for k, v in block.raw_items()}


@dataclass
class _Walk:
    text_parts: list[str] = field(default_factory=list)
    html: str = ""
    attachments: list[Attachment] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    delivery_status: list[dict[str, str]] = field(default_factory=list)
    returned_headers: list[tuple[str, str]] = field(default_factory=list)
    skip_html_text: bool = False
    source: bytes = b""  # the message bytes the elided spans point into
    spans: list[tuple[int, int]] = field(default_factory=list)


BOUNDARY_LINE = re.compile(r"^--([^\s]{1,70}?)(?:--)?[ \t]*\r?$", re.MULTILINE)


def _walk_broken_multipart(
    message: Message, state: _Walk, charset_hint: str | None, in_report: bool, depth: int
) -> None:
    """A multipart whose declared boundary never appears: use the boundary the body actually has, or
    read the body as plain text."""
    payload = message.get_payload()
    body = payload if isinstance(payload, str) else ""
    match = BOUNDARY_LINE.search(body)
    if match:
        state.defects.append(f"declared MIME boundary not found; used {match.group(1)!r} from the body")
        head = f'Content-Type: multipart/mixed; boundary="{match.group(1)}"\r\n\r\n'
        repaired = BytesParser(policy=PARSE_POLICY).parsebytes(
            head.encode("ascii") + body.encode("utf-8", "surrogateescape")
        )
        if repaired.is_multipart():
            for sub in repaired.get_payload():
                if isinstance(sub, Message):
                    _walk(sub, state, charset_hint, in_report, depth + 1)
            return
    state.defects.append("multipart without any boundary: body read as text")
    state.text_parts.append(decode_bytes(body.encode("utf-8", "surrogateescape"), charset_hint)[0])


def _record_forwarded_message(part: Message, payload: list[Any], filename: str, state: _Walk) -> None:
    """A mail forwarded as an attachment is listed like one (its bytes re-serialized by the parser,
    so size and hash describe the content, not necessarily the exact bytes); its text is read too."""
    nested = next((m for m in payload if isinstance(m, Message)), None)
    try:
        data = nested.as_bytes(policy=policy.compat32) if nested is not None else b""
    except Exception:  # a nested message too broken to serialize is still read below
        data = b""
    state.attachments.append(
        Attachment(
            filename=filename or "forwarded.eml",
            content_type="message/rfc822",
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            scanned=True,
        )
    )


def _walk(message: Message, state: _Walk, charset_hint: str | None, in_report: bool, depth: int) -> None:
    if depth > 30:
        state.defects.append("MIME nesting deeper than 30 levels; rest not read")
        return
    state.defects.extend(type(d).__name__ for d in getattr(message, "defects", []))
    ctype = _safe_content_type(message)
    if message.is_multipart():
        sub_report = in_report or ctype == "multipart/report"
        payload = message.get_payload()
        if ctype == "message/rfc822" and isinstance(payload, list):
            filename = _safe_filename(message, charset_hint)
            if not in_report and _is_attachment(message, filename):
                _record_forwarded_message(message, payload, filename, state)
            for nested in payload:
                if not isinstance(nested, Message):
                    continue
                if in_report and not state.returned_headers:
                    state.returned_headers = _raw_headers(nested)
                nested_charset = _header_charset(nested) or charset_hint
                subject = _raw_value(nested, "subject")
                if subject is not None:
                    state.text_parts.append("Subject: " + decode_header_value(subject, nested_charset))
                _walk(nested, state, nested_charset, False, depth + 1)
            return
        if ctype == "message/delivery-status" and isinstance(payload, list):
            blocks = [block for block in payload if isinstance(block, Message)]
            for block in blocks[1:]:  # the first block describes the message, the rest each recipient
                state.delivery_status.append(_header_block_fields(block))
            if blocks:
                envid = _header_block_fields(blocks[0]).get("original-envelope-id")
                if envid:
                    for entry in state.delivery_status or [{}]:
                        entry.setdefault("original-envelope-id", envid)
                    if not state.delivery_status:
                        state.delivery_status.append({"original-envelope-id": envid})
            return
        if isinstance(payload, list):
            alternative = ctype == "multipart/alternative"
            start = len(state.text_parts)
            for sub in payload:
                if not isinstance(sub, Message):
                    continue
                # The HTML twin of a plain part already read: kept for display, not read twice as text
                # (a stub plain part such as "view this mail in HTML" does not count).
                twin = alternative and _safe_content_type(sub) == "text/html"
                state.skip_html_text = twin and len("".join(state.text_parts[start:]).strip()) >= 40
                _walk(sub, state, charset_hint, sub_report, depth + 1)
                state.skip_html_text = False
        return

    if ctype.startswith("multipart/"):
        _walk_broken_multipart(message, state, charset_hint, in_report, depth)
        return
    filename = _safe_filename(message, charset_hint)
    attachment = _is_attachment(message, filename)
    declared = _charset_param(message)
    is_text_attachment = ctype in TEXT_ATTACHMENT_TYPES or filename.lower().endswith(TEXT_ATTACHMENT_SUFFIXES)
    report_part = ctype in ("text/rfc822-headers", "message/delivery-status", "message/rfc822")
    if not report_part and (attachment or not ctype.startswith("text/")):
        # Attachments, and inline binary parts: recorded and hashed; only text attachments are read.
        scanned = is_text_attachment
        size, sha256, head = _payload_digest(message, state, MAX_SCANNED_TEXT_BYTES if scanned else 0)
        state.attachments.append(
            Attachment(filename=filename, content_type=ctype, size=size, sha256=sha256, scanned=scanned)
        )
        if scanned:
            if size > MAX_SCANNED_TEXT_BYTES:
                state.defects.append(f"attachment {filename!r} scanned only in its first 2 MiB")
            state.text_parts.append(decode_bytes(head, declared)[0])
        return

    size, _sha, data = _payload_digest(message, state, MAX_INLINE_TEXT_BYTES)
    if size > MAX_INLINE_TEXT_BYTES:
        state.defects.append(f"{ctype} part of {size} bytes read only in its first 8 MiB")
    if ctype == "text/rfc822-headers" or (in_report and ctype == "message/rfc822"):
        headers = HeaderParser(policy=policy.compat32).parsestr(decode_bytes(data, declared)[0])
        if not state.returned_headers:
            state.returned_headers = [(k, decode_header_value(str(v))) for k, v in headers.items()]
        return
    if ctype == "message/delivery-status":
        # Unparsed (e.g. base64-encoded) delivery-status: read its blocks ourselves.
        texts = re.split(r"\r?\n\s*\r?\n", decode_bytes(data, declared)[0])
        parsed = [HeaderParser(policy=policy.compat32).parsestr(t) for t in texts if t.strip()]
        if parsed:
            first = _header_block_fields(parsed[0])
            for block in parsed[1:] or parsed:
                entry = _header_block_fields(block)
                if "original-envelope-id" in first:
                    entry.setdefault("original-envelope-id", first["original-envelope-id"])
                state.delivery_status.append(entry)
        return
    if ctype == "text/html":
        if declared is None:
            meta = META_CHARSET.search(data[:4096])
            declared = meta.group(1).decode("ascii") if meta else None
        html = decode_bytes(data, declared)[0]
        if not state.html:
            state.html = html
        if not state.skip_html_text:
            state.text_parts.append(html_to_text(html))
        return
    state.text_parts.append(decode_bytes(data, declared)[0])


# --------------------------------------------------------------------------------------------------
# entry points

HEADER_LINE = re.compile(rb"^[!-9;-~]+[ \t]*:")


def _split_raw(raw: bytes) -> tuple[bytes, bytes]:
    match = re.search(rb"\r?\n\r?\n", raw)
    if match is None:
        return raw, b""
    return raw[: match.start()], raw[match.end() :]


GLIMPSE_BYTES = 64 * 1024


def glimpse(raw: bytes) -> tuple[str, str, str]:
    """Sender name, sender address and subject of a message the parser refused, read leniently so that
    the quarantine list can show what it is: the first ``From`` and ``Subject`` fields of the header
    block (within the first 64 KiB), unfolded, encoded words decoded; ``""`` where absent."""
    head, _ = _split_raw(raw[:GLIMPSE_BYTES])
    fields: dict[str, str] = {}
    current = ""
    for line in head.splitlines():
        text = line.decode("utf-8", "surrogateescape")
        if text[:1] in (" ", "\t"):
            if current:
                fields[current] += " " + text.strip()
            continue
        name, sep, value = text.partition(":")
        name = name.strip().lower()
        current = name if sep and name in ("from", "subject") and name not in fields else ""
        if current:
            fields[current] = value.strip()
    sender_name, sender_addr = email.utils.parseaddr(decode_header_value(fields.get("from", "")))
    return sender_name, sender_addr, decode_header_value(fields.get("subject", ""))


def _stable_hash(raw: bytes) -> str:
    """sha256 over the sender-written headers and the body, line endings normalized."""
    head, body = _split_raw(raw)
    head = re.sub(rb"\r?\n[ \t]+", b" ", head)
    kept = []
    for line in head.splitlines():
        name, _, value = line.partition(b":")
        if name.strip().lower().decode("ascii", "replace") in STABLE_HEADERS:
            kept.append(name.strip().lower() + b":" + b" ".join(value.split()))
    body = body.replace(b"\r\n", b"\n").rstrip()  # copies, never a list of lines (20 MB bodies)
    digest = hashlib.sha256()
    digest.update(b"\n".join(sorted(kept)))
    digest.update(b"\n\n")
    digest.update(body)
    return digest.hexdigest()


def parse_message(raw: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> ParsedMessage:
    """Parse one message; raise :class:`MailParseError` when it has no usable structure."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise MailParseError(f"expected bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    if len(raw) > max_bytes:
        raise MailParseError(f"message is {len(raw)} bytes, larger than the {max_bytes}-byte limit")
    if not raw.strip():
        raise MailParseError("empty message")
    stripped = raw.lstrip()
    if stripped.startswith(b"From ") and b"\n" in stripped:  # mbox "From " line before the headers
        stripped = stripped.split(b"\n", 1)[1]
    if not HEADER_LINE.match(stripped):
        raise MailParseError("no header block: the message does not start with a header field")
    if b"\x00" in raw[:8192] and raw[:8192].count(b"\x00") > 16:
        raise MailParseError("binary data, not a mail message (NUL bytes in the header block)")

    reduced, spans = _elide_base64_runs(stripped)
    try:
        message = BytesParser(policy=PARSE_POLICY).parsebytes(reduced)
    except Exception as exc:  # the parser is lenient; anything raised here is a parser bug on garbage
        raise MailParseError(f"MIME parser failed: {type(exc).__name__}: {exc}") from None

    raw_headers = _raw_headers(message)
    if not raw_headers:
        raise MailParseError("no header fields found")
    charset_hint = _header_charset(message)
    headers = [(name, decode_header_value(value, charset_hint)) for name, value in raw_headers]

    def raw_all(name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in raw_headers if key.lower() == wanted]

    def first(name: str) -> str:
        wanted = name.lower()
        return next((value for key, value in headers if key.lower() == wanted), "")

    from_pairs = _addresses(raw_all("from"), charset_hint)
    from_name, from_addr = from_pairs[0] if from_pairs else ("", "")
    reply_to_pairs = _addresses(raw_all("reply-to"), charset_hint)
    return_path_values = raw_all("return-path")
    return_path: str | None = None
    if return_path_values:
        return_path = return_path_values[0].strip().strip("<>").strip().lower()

    date: datetime | None = None
    if first("date"):
        try:
            date = parsedate_to_datetime(first("date"))
        except (TypeError, ValueError, IndexError):
            date = None

    state = _Walk(source=stripped, spans=spans)
    try:
        _walk(message, state, charset_hint, False, 0)
    except RecursionError:
        state.defects.append("MIME structure too deep")

    content_type, top_params = _content_type(message)
    report_type = top_params.get("report-type", "").lower() if content_type == "multipart/report" else ""

    references = message_ids(" ".join(first_value for first_value in [first("references")] if first_value))
    auto_submitted = first("auto-submitted").split(";")[0].strip().lower()
    return ParsedMessage(
        message_id=normalize_message_id(first("message-id")),
        subject=first("subject"),
        from_addr=from_addr,
        from_name=from_name,
        to_addrs=[addr for _, addr in _addresses(raw_all("to"), charset_hint) if addr],
        cc_addrs=[addr for _, addr in _addresses(raw_all("cc"), charset_hint) if addr],
        reply_to=reply_to_pairs[0][1] if reply_to_pairs else "",
        date=date,
        in_reply_to=normalize_message_id(first("in-reply-to")),
        references=references,
        headers=headers,
        text="\n\n".join(part.strip("\n") for part in state.text_parts if part.strip()),
        html=state.html,
        attachments=state.attachments,
        content_hash=hashlib.sha256(raw).hexdigest(),
        defects=list(dict.fromkeys(state.defects)),
        auto_submitted=auto_submitted,
        return_path=return_path,
        content_type=content_type,
        report_type=report_type,
        delivery_status=state.delivery_status,
        returned_headers=state.returned_headers,
        stable_hash=_stable_hash(stripped),
        raw_size=len(raw),
    )


def dedupe_key(parsed: ParsedMessage) -> str:
    """Message-ID plus the redelivery-stable content hash (at most 255 characters).

    Without a Message-ID the raw hash is the key: nothing else identifies such a message.
    """
    if not parsed.message_id:
        return f"raw:{parsed.content_hash}"
    mid = parsed.message_id
    if len(mid) > 180:
        mid = "sha256:" + hashlib.sha256(mid.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{mid}|{parsed.stable_hash}"
