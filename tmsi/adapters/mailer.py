"""Outgoing mail behind one small Protocol: SMTP (smtplib) and an in-memory mailer for tests."""

from __future__ import annotations

import contextlib
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tmsi.config import Settings


class MailerError(RuntimeError):
    """Sending failed. ``permanent`` (an SMTP 5xx) means retrying the same bytes cannot succeed."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Mailer(Protocol):
    def send(self, mail_from: str, rcpt_to: Sequence[str], raw: bytes) -> None:
        """Hand ``raw`` to the next hop; return only when it accepted the message, else raise MailerError."""
        ...

    def close(self) -> None: ...


class SmtpMailer:
    """SMTP submission with smtplib; one connection reused across the sends of one outbox pass."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        tls: str = "none",
        user: str = "",
        password: str = "",
        timeout: float = 30.0,
        verify_tls: bool = True,
        ca_file: str = "",
        local_hostname: str | None = None,
    ) -> None:
        if tls not in ("implicit", "starttls", "none"):
            raise ValueError(f"smtp tls must be implicit, starttls or none, not {tls!r}")
        self.host, self.port, self.tls = host, port, tls
        self.user, self.password, self.timeout = user, password, timeout
        self.verify_tls, self.ca_file, self.local_hostname = verify_tls, ca_file, local_hostname
        self._conn: smtplib.SMTP | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpMailer:
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            tls=settings.smtp_tls,
            user=settings.smtp_user,
            password=settings.smtp_password,
            timeout=settings.smtp_timeout,
            verify_tls=settings.smtp_verify_tls,
            ca_file=settings.smtp_ca_file,
        )

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file or None)
        if not self.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _connect(self) -> smtplib.SMTP:
        conn: smtplib.SMTP
        if self.tls == "implicit":
            conn = smtplib.SMTP_SSL(
                self.host,
                self.port,
                timeout=self.timeout,
                context=self._context(),
                local_hostname=self.local_hostname,
            )
        else:
            conn = smtplib.SMTP(
                self.host, self.port, timeout=self.timeout, local_hostname=self.local_hostname
            )
            if self.tls == "starttls":
                conn.starttls(context=self._context())
        if self.user:
            conn.login(self.user, self.password)
        return conn

    def send(self, mail_from: str, rcpt_to: Sequence[str], raw: bytes) -> None:
        try:
            if self._conn is None:
                self._conn = self._connect()
            refused = self._conn.sendmail(mail_from, list(rcpt_to), raw)
        except smtplib.SMTPRecipientsRefused as exc:
            self.close()
            codes = [code for code, _ in exc.recipients.values()]
            raise MailerError(
                f"all recipients refused: {exc.recipients}", permanent=all(c >= 500 for c in codes)
            ) from exc
        except smtplib.SMTPResponseException as exc:
            self.close()
            raise MailerError(
                f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", permanent=exc.smtp_code >= 500
            ) from exc
        except (TimeoutError, smtplib.SMTPException, OSError, ssl.SSLError) as exc:
            self.close()
            raise MailerError(f"SMTP {self.host}:{self.port}: {type(exc).__name__}: {exc}") from exc
        if refused:
            # Accepted for some recipients: it was sent, and must not be sent again to the others' cost.
            return

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                conn.quit()


@dataclass
class SentMail:
    mail_from: str
    rcpt_to: list[str]
    raw: bytes


@dataclass
class MemoryMailer:
    """Keeps what it sends; ``fail_next`` makes the next N sends fail (``permanent`` as told)."""

    sent: list[SentMail] = field(default_factory=list)
    fail_next: int = 0
    permanent: bool = False

    def send(self, mail_from: str, rcpt_to: Sequence[str], raw: bytes) -> None:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise MailerError("simulated failure", permanent=self.permanent)
        self.sent.append(SentMail(mail_from, list(rcpt_to), raw))

    def close(self) -> None:
        return None
