"""An in-process SMTP sink (aiosmtpd Controller) on a free loopback port that keeps every envelope."""

from __future__ import annotations

import email
import email.policy
import threading
import time
from email.message import EmailMessage
from typing import Any

from tests.services.ports import free_port


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.sink.changed:
            self.sink.messages.append(envelope)
            self.sink.changed.notify_all()
        return "250 OK"


class SmtpSink:
    """``messages``: aiosmtpd envelopes (``mail_from``, ``rcpt_tos``, ``content`` bytes)."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.messages: list[Any] = []
        self.changed = threading.Condition()
        self._controller: Any = None

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        self.port = free_port()
        # always pass hostname: the default may be ::1 only
        self._controller = Controller(_Handler(self), hostname=self.host, port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def clear(self) -> None:
        with self.changed:
            self.messages.clear()

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[Any]:
        """Block until at least ``count`` messages arrived; raise AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"SMTP sink got {len(self.messages)} message(s), expected {count}")
                self.changed.wait(remaining)
            return list(self.messages)

    def parsed(self, index: int = -1) -> EmailMessage:
        """Message ``index`` parsed with the modern email policy."""
        raw = self.messages[index].content
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return message
