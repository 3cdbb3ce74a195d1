"""Case operations, references, audit and templated replies on the real test database."""

from __future__ import annotations

import email
from email import policy

import pytest
from sqlalchemy import select

from tmsi.models import AuditEvent, CaseStatus, OutboxMessage, OutboxStatus
from tmsi.models.user import AuditLogIsAppendOnly
from tmsi.services import cases, replies
from tmsi.services.outbox import HeaderInjection


def test_references_are_sequential_per_year(session):
    a = cases.open_case(session, subject="delist", requester_email="NOC@isp.example")
    b = cases.open_case(session, subject="delist", requester_email="noc@isp.example")
    na, nb = int(a.reference.rsplit("-", 1)[1]), int(b.reference.rsplit("-", 1)[1])
    assert a.reference.startswith("TMSI-20") and nb == na + 1
    assert a.requester_email == "noc@isp.example" and a.requester_domain == "isp.example"


def test_transition_is_checked_and_audited(session):
    case = cases.open_case(session, subject="x", requester_email="noc@isp.example")
    cases.transition(session, case, CaseStatus.VERIFYING, actor="a@example.test", reason="checking")
    cases.transition(session, case, CaseStatus.CLOSED)
    with pytest.raises(cases.InvalidTransition):
        cases.transition(session, case, CaseStatus.DELISTED)
    assert cases.reopen_on_message(session, case) is True
    assert case.status == CaseStatus.VERIFYING and case.closed_at is None
    events = session.scalars(
        select(AuditEvent).where(AuditEvent.case_id == case.id).order_by(AuditEvent.id)
    ).all()
    assert [e.action for e in events] == ["case.opened", "case.status", "case.status", "case.status"]
    assert events[1].before == {"status": "new", "resolution": None}
    assert events[1].actor == "a@example.test" and events[1].detail == {"reason": "checking"}
    events[0].action = "tampered"
    with pytest.raises(AuditLogIsAppendOnly):
        session.flush()


def test_queue_reply_threads_and_renders(session, settings):
    case = cases.open_case(session, subject="Please delist 203.0.113.7", requester_email="noc@isp.example")
    row = replies.queue_reply(session, case, "acknowledgement", settings)
    assert row is not None and row.status == OutboxStatus.PENDING
    msg = email.message_from_bytes(row.raw, policy=policy.default)
    assert msg["Subject"] == f"Re: Please delist 203.0.113.7 [{case.reference}]"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Message-ID"].endswith("@example.test>")
    assert case.reference in msg.get_content()
    assert case.first_response_at is not None


def test_automatic_replies_are_rate_limited_and_never_to_auto_generated(session, settings):
    settings.autoreply_per_sender_per_hour = 2
    case = cases.open_case(session, subject="x", requester_email="noc@isp.example")
    sent = [replies.queue_reply(session, case, "acknowledgement", settings) for _ in range(3)]
    assert [s is not None for s in sent] == [True, True, False]
    other = cases.open_case(session, subject="y", requester_email="robot@isp.example")
    other.flags = {"auto_generated": True}
    assert replies.queue_reply(session, other, "acknowledgement", settings) is None
    # An analyst's reply is not automatic and goes out regardless.
    assert (
        replies.queue_reply(
            session,
            other,
            "ask_information",
            settings,
            actor="a@example.test",
            extra={"question": "Which range?"},
        )
        is not None
    )
    reasons = session.scalars(select(AuditEvent.detail).where(AuditEvent.action == "reply.suppressed")).all()
    assert len(reasons) == 2


def test_header_injection_is_refused(session, settings):
    case = cases.open_case(session, subject="x", requester_email="noc@isp.example")
    with pytest.raises(HeaderInjection):
        replies.queue_reply(
            session,
            case,
            "rejected",
            settings,
            actor="a@example.test",
            subject="hi\r\nBcc: x@example.test",
            extra={"reason": "no"},
        )
    with pytest.raises(HeaderInjection):
        replies.queue_reply(
            session,
            case,
            "rejected",
            settings,
            actor="a@example.test",
            to="a@example.test\nb",
            extra={"reason": "no"},
        )
    assert session.scalars(select(OutboxMessage)).all() == []


def test_templates_are_sandboxed(session, settings):
    case = cases.open_case(session, subject="x", requester_email="noc@isp.example")
    with pytest.raises(replies.TemplateRenderError):
        replies.render_text("{{ case.__class__.__mro__ }}", "", replies.case_context(case, settings))
    with pytest.raises(replies.TemplateRenderError):
        replies.render_text("x", "{{ ''.__class__.__subclasses__() }}", replies.case_context(case, settings))
