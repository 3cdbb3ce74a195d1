"""The case and queue pages' template filters."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tmsi.web.ui import _ts


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 11, 30, 7, 5, 9, 123456, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 999999),
    ],
)
def test_ts_is_the_second_in_utc(value):
    assert _ts(value) == value.strftime("%Y-%m-%d %H:%M:%S UTC")


def test_ts_of_nothing_is_empty():
    assert _ts(None) == ""
