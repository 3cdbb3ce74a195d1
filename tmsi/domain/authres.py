"""Parse ``Authentication-Results`` header values (RFC 8601) and pick the ones our own MTA wrote.

Pure and forgiving: comments, quoted strings, folded whitespace and spaces around ``=`` are accepted;
a value that is not an Authentication-Results header at all yields no results rather than an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

TOKEN = re.compile(r'[^\s;=()"]+')


class AuthResult(NamedTuple):
    method: str  # "dmarc", "dkim", "spf", ... (lower case, version stripped)
    result: str  # "pass", "fail", "none", ... (lower case)
    props: dict[str, str]  # "reason", "header.from", "smtp.mailfrom", ... -> value as written


def _strip_comments(value: str) -> str:
    """Remove (nested) RFC 5322 comments outside quoted strings; keep quoted strings intact."""
    out: list[str] = []
    depth = 0
    in_quote = False
    escaped = False
    for ch in value:
        if escaped:
            if depth == 0:
                out.append(ch)
            escaped = False
            continue
        if ch == "\\":
            escaped = True
            if depth == 0:
                out.append(ch)
            continue
        if in_quote:
            out.append(ch)
            if ch == '"':
                in_quote = False
            continue
        if ch == "(":
            depth += 1
            out.append(" ")
            continue
        if ch == ")" and depth:
            depth -= 1
            continue
        if depth:
            continue
        if ch == '"':
            in_quote = True
        out.append(ch)
    return "".join(out)


def _split_outside_quotes(value: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    in_quote = False
    escaped = False
    for ch in value:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\" and in_quote:
            current.append(ch)
            escaped = True
        elif ch == '"':
            in_quote = not in_quote
            current.append(ch)
        elif ch == sep and not in_quote:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _pairs(segment: str) -> list[tuple[str, str]]:
    """``name=value`` pairs of one resinfo, tolerating whitespace around ``=`` and quoted values."""
    segment = re.sub(r"\s*=\s*", "=", segment.strip())
    pairs = []
    for item in re.finditer(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|[^\s]*)', segment):
        pairs.append((item.group(1), _unquote(item.group(2))))
    return pairs


def parse_authentication_results(value: str) -> tuple[str, list[AuthResult]]:
    """``(authserv_id, results)`` of one header value; authserv_id lower-cased, "" when absent."""
    text = _strip_comments(re.sub(r"\r?\n[ \t]*", " ", value or "")).strip()
    if not text:
        return "", []
    segments = _split_outside_quotes(text, ";")
    head = segments[0].split()
    authserv_id = _unquote(head[0]).lower() if head else ""
    results: list[AuthResult] = []
    for segment in segments[1:]:
        pairs = _pairs(segment)
        if not pairs:
            continue  # "none" (no authentication done) or garbage
        method, result = pairs[0]
        method = method.split("/", 1)[0].lower()
        props = {name.lower(): val for name, val in pairs[1:]}
        results.append(AuthResult(method=method, result=result.lower(), props=props))
    return authserv_id, results


# Trace fields our own delivery chain adds above or between its Authentication-Results.
TRACE_FIELDS = frozenset(
    {
        "return-path",
        "delivered-to",
        "x-original-to",
        "envelope-to",
        "x-envelope-from",
        "x-envelope-to",
        "received-spf",
        "x-spam-status",
        "x-spam-flag",
        "x-spam-score",
        "x-virus-scanned",
    }
)
RECEIVED_BY = re.compile(r"\bby\s+([^\s;()]+)", re.IGNORECASE)
RECEIVED_FROM = re.compile(r"^\s*from\s+([^\s;()]+)(.*?)(?=\bby\b|;|$)", re.IGNORECASE | re.DOTALL)


def _received_hop(value: str) -> tuple[str, str, bool]:
    """(from host, by host, from side is loopback) of a Received field."""
    unfolded = " ".join(value.split())
    by = RECEIVED_BY.search(unfolded)
    frm = RECEIVED_FROM.search(unfolded)
    from_part = frm.group(0) if frm else ""
    loopback = bool(re.search(r"\[(?:127\.\d+\.\d+\.\d+|IPv6:::1|::1)\]|\blocalhost\b", from_part))
    return (
        frm.group(1).lower().rstrip(".") if frm else "",
        by.group(1).lower().rstrip(".") if by else "",
        loopback,
    )


def trusted_results(
    headers: Sequence[tuple[str, str]], authserv_ids: Iterable[str]
) -> list[tuple[str, list[AuthResult]]]:
    """The Authentication-Results our own MTA added, topmost first.

    A receiving MTA prepends its fields, so what our infrastructure wrote is the block at the very top:
    trace fields, our Authentication-Results, and Received fields written by our hosts (an authserv-id
    is our MTA's host name). The block ends after the Received field of the hop from the outside world,
    at the first field the sender could have written (From, DKIM-Signature, a Received by a foreign host,
    ...), and at the first Authentication-Results of another authserv-id. An Authentication-Results with
    our id further down was written before our MTA saw the message, so it is the sender's and ignored
    (RFC 8601 section 5 asks MTAs to delete those; not all do).
    """
    ours = {a.strip().lower() for a in authserv_ids if a.strip()}
    found: list[tuple[str, list[AuthResult]]] = []
    if not ours:
        return found
    for name, value in headers:
        lower = name.strip().lower()
        if lower == "authentication-results":
            authserv_id, results = parse_authentication_results(value)
            if authserv_id not in ours:
                break
            found.append((authserv_id, results))
            continue
        if lower in TRACE_FIELDS or lower.startswith(("arc-", "x-spam-", "x-rspamd-", "x-amavis")):
            continue
        if lower == "received":
            from_host, by_host, loopback = _received_hop(value)
            if by_host in ours and (loopback or from_host in ours):
                continue  # an internal hop between our own hosts
            break  # the hop from outside (or a Received by a foreign host): nothing below is ours
        break
    return found


def dmarc_verdict(headers: Sequence[tuple[str, str]], authserv_ids: Iterable[str]) -> tuple[bool | None, str]:
    """(True on dmarc=pass, False on dmarc=fail, else None; and a reason) from our own MTA's results."""
    trusted = trusted_results(headers, authserv_ids)
    if not trusted:
        return None, "no Authentication-Results from our MTA"
    for authserv_id, results in trusted:
        for res in results:
            if res.method != "dmarc":
                continue
            domain = res.props.get("header.from", "")
            where = f" for {domain}" if domain else ""
            if res.result == "pass":
                return True, f"dmarc=pass{where} by {authserv_id}"
            if res.result == "fail":
                return False, f"dmarc=fail{where} by {authserv_id}"
            return None, f"dmarc={res.result}{where} by {authserv_id}"
    return None, "no DMARC result from our MTA"
