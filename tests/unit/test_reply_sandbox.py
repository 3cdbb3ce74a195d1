"""The reply templates' sandbox: a template that fails, in any way, is a TemplateRenderError that names the
failure (never an exception of another kind, a 500 in the live preview or a failed send), and no single
template can build a reply beyond MAX_REPLY_CHARS or run an unbounded power."""

from __future__ import annotations

import pytest

from tmsi.services import replies
from tmsi.services.replies import MAX_REPLY_CHARS, TemplateRenderError, render_text

CONTEXT = {"targets": [{"network": "192.0.2.0/30"}], "count": 0}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ("{{ 1 / count }}", "ZeroDivisionError"),
        ("{{ 'a' + 1 }}", "TypeError"),
        ("{{ targets[5] }}", "no element 5"),
        ("{{ range(10**9) | list | length }}", "OverflowError"),
        ("{{ 'x' * 10**9 }}", "repetition"),
        ("{{ [1] * 10**9 }}", "repetition"),
        ("{{ 10**9 * 'x' }}", "repetition"),
        ("{{ 2 ** 100000 }}", "power"),
        ("{{ 10 ** (10 ** 9) }}", "power"),
        ("{{ ''.__class__.__mro__ }}", "unsafe"),
        ("{% for i in range(1000) %}{{ 'y' * 1000 }}{% endfor %}", "over 200000 characters"),
        ("{{ '%d' | format('x') }}", "TypeError"),
    ],
)
def test_a_failing_template_is_a_render_error_naming_why(body: str, named: str) -> None:
    with pytest.raises(TemplateRenderError, match="template error") as raised:
        render_text("subject", body, CONTEXT)
    assert named in str(raised.value)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("{{ 2 ** 10 }}", "1024"),
        ("{{ '-' * 20 }}", "-" * 20),
        ("{{ 3 * 4 }}", "12"),
        ("{{ targets | length }} target(s)", "1 target(s)"),
        ("{% for t in targets %}{{ t.network }}{% endfor %}", "192.0.2.0/30"),
    ],
)
def test_ordinary_arithmetic_and_loops_still_render(body: str, expected: str) -> None:
    assert render_text("s", body, CONTEXT).body == expected


def test_a_reply_just_under_the_limit_renders() -> None:
    body = "{{ 'z' * " + str(MAX_REPLY_CHARS) + " }}"
    assert len(render_text("s", body, CONTEXT).body) == MAX_REPLY_CHARS
    assert replies.MAX_REPLY_CHARS == 200_000
