"""gunicorn settings for tmsi (``-c python:tmsi.gunicorn_conf``); command-line flags override them.

The master validates the configuration before forking, so a bad ``TMSI_*`` variable is reported once,
by name, and gunicorn exits with status 2 instead of every worker failing to boot with a traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Any

bind = os.environ.get("TMSI_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("TMSI_WEB_THREADS", "4"))
timeout = 60
graceful_timeout = 10
keepalive = 5
# The app writes the access log itself (tmsi.access, with the request id and case id); gunicorn's own
# would be written after the request's context is gone.
accesslog = None
errorlog = "-"


def on_starting(server: Any) -> None:
    from tmsi.config import ConfigError, load_settings
    from tmsi.logging import configure_logging

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"tmsi: {exc}", file=sys.stderr)
        os._exit(2)
    configure_logging(settings.log_level, settings.log_json)
    if threads > settings.db_pool_size:
        server.log.warning(
            "TMSI_WEB_THREADS=%d is more than TMSI_DB_POOL_SIZE=%d: requests beyond %d at once will open "
            "and close a database connection each; raise TMSI_DB_POOL_SIZE",
            threads,
            settings.db_pool_size,
            settings.db_pool_size,
        )
