"""Row ids and page numbers typed by people or sent by clients.

An id is plain ASCII digits that fit the databases' 64-bit integer columns. ``str.isdigit`` alone also
accepts digits ``int`` cannot read ("²") and numbers no column holds; either reached the database or
``int`` as an error, a 500, instead of "no such row".
"""

from __future__ import annotations

MAX_ID = 2**63 - 1
# Beyond any real page: 1,000,000 pages of 200 rows. Larger page numbers are read as this one, so the
# row offset stays far inside a 64-bit integer.
MAX_PAGE = 1_000_000


def parse_id(text: str) -> int | None:
    """The id written in ``text`` (surrounding spaces allowed), or None when it is not one."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def parse_page(text: str | None) -> int:
    """A page number from a query string: 1 when empty, held to 1..MAX_PAGE; ValueError when not a number."""
    if not text:
        return 1
    return min(MAX_PAGE, max(1, int(text)))
