"""Parse ``Authentication-Results`` header values (RFC 8601) and pick the ones our own MTA wrote.

Pure and forgiving: comments, quoted strings, folded whitespace and spaces around ``=`` are accepted;
a value that is not an Authentication-Results header at all yields no results rather than an error.
"""

from __future__ import annotations

import re
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
