"""Logging set-up: plain text for people, JSON lines for machines (``TMSI_LOG_JSON``).

Every record carries the current ``request_id``, ``case_id`` and ``job`` (context variables bound by
the web layer and the job runner), so one request or one case can be followed across processes.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

request_id_var: ContextVar[str] = ContextVar("tmsi_request_id", default="")
case_id_var: ContextVar[str] = ContextVar("tmsi_case_id", default="")
job_var: ContextVar[str] = ContextVar("tmsi_job", default="")

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s%(context)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"


class ContextFilter(logging.Filter):
    """Adds request_id / case_id / job to each record (and a compact ``context`` for text logs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for attr, var in (("request_id", request_id_var), ("case_id", case_id_var), ("job", job_var)):
            if not getattr(record, attr, ""):
                setattr(record, attr, var.get())
        parts = [f"{k}={getattr(record, k)}" for k in ("request_id", "case_id", "job") if getattr(record, k)]
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return True


def make_formatter(json_logs: bool) -> logging.Formatter:
    if json_logs:
        from pythonjsonlogger.json import JsonFormatter

        return JsonFormatter(
            JSON_FIELDS,
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"service": "tmsi"},
            reserved_attrs=[*_RESERVED, "context"],
            timestamp=False,
        )
    return logging.Formatter(TEXT_FORMAT)


_RESERVED = [
    "args",
    "created",
    "exc_info",
    "exc_text",
    "filename",
    "funcName",
    "levelno",
    "lineno",
    "module",
    "msecs",
    "msg",
    "pathname",
    "processName",
    "relativeCreated",
    "stack_info",
    "thread",
    "threadName",
    "taskName",
]


def configure_logging(level: str = "INFO", json_logs: bool = False, stream: Any = None) -> None:
    """Install one handler on the root logger (idempotent: replaces the handler it installed before)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_tmsi", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._tmsi = True  # type: ignore[attr-defined]
    handler.addFilter(ContextFilter())
    handler.setFormatter(make_formatter(json_logs))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # gunicorn and huey log through their own loggers; let them reach our handler in the same format.
    for name in ("gunicorn.error", "gunicorn.access", "huey", "huey.consumer"):
        lg = logging.getLogger(name)
        lg.handlers = []
        lg.propagate = True


@contextlib.contextmanager
def bound(
    *, request_id: str | None = None, case_id: str | int | None = None, job: str | None = None
) -> Iterator[None]:
    """Bind context values for the duration of a block (a request, a job run, work on one case)."""
    tokens = []
    if request_id is not None:
        tokens.append((request_id_var, request_id_var.set(request_id)))
    if case_id is not None:
        tokens.append((case_id_var, case_id_var.set(str(case_id))))
    if job is not None:
        tokens.append((job_var, job_var.set(job)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)
