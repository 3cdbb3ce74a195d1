"""gunicorn settings for tmsi (``-c python:tmsi.gunicorn_conf``); command-line flags override them.

The master validates the configuration before forking, so a bad ``TMSI_*`` variable is reported once,
by name, and gunicorn exits with status 2 instead of every worker failing to boot with a traceback.
"""

from __future__ import annotations

import os
import socket
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
# Each worker listens on its own socket (SO_REUSEPORT) and the kernel spreads new connections over them.
# On one shared socket the worker that happens to be awake accepts, and can end up holding every
# keep-alive connection while the others idle (below). on_starting refuses an address in use, which
# SO_REUSEPORT alone would share with whatever (of the same user) already listens there, and turns this
# off when gunicorn listens on a unix socket (behind a proxy on the same machine).
reuse_port = True
# A keep-alive connection stays with the worker that accepted it. A client holding a few connections open
# (a reverse proxy's upstream pool, a load generator) can find all of them on one worker while the other
# idles: half the capacity (seen on one shared socket, with two workers and 20 keep-alive clients: ~350
# case pages/s instead of ~650). As nginx's keepalive_requests and Apache's MaxKeepAliveRequests do, a
# connection is closed after this many requests (0: never) and the client reconnects, so an unlucky
# spread does not last. One reconnect per 100 requests.
KEEPALIVE_REQUESTS = int(os.environ.get("TMSI_KEEPALIVE_REQUESTS", "100"))


def on_starting(server: Any) -> None:
    from tmsi.config import ConfigError, load_settings
    from tmsi.logging import configure_logging

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"tmsi: {exc}", file=sys.stderr)
        os._exit(2)
    configure_logging(settings.log_level, settings.log_json)
    _listen_settings(server)
    if threads > settings.db_pool_size:
        server.log.warning(
            "TMSI_WEB_THREADS=%d is more than TMSI_DB_POOL_SIZE=%d: requests beyond %d at once will open "
            "and close a database connection each; raise TMSI_DB_POOL_SIZE",
            threads,
            settings.db_pool_size,
            settings.db_pool_size,
        )


def _listen_settings(server: Any) -> None:
    """Per-worker sockets only where they work; refuse a TCP address something already listens on."""
    if _inherits_sockets():
        # systemd socket activation (or a new master after USR2, where the old one held sockets): they
        # are given, not bound here (the address is rightly in use), and workers must accept on them.
        server.cfg.set("reuse_port", False)
        return
    if any(not isinstance(address, tuple) for address in server.cfg.address):
        # A unix socket is a file: each worker binding its own would replace the one before, and every
        # worker but the last would listen on a socket no one can reach any more.
        server.cfg.set("reuse_port", False)
    for address in server.cfg.address:
        taken = _address_in_use(address)
        if taken:
            print(f"tmsi: cannot listen on {taken}", file=sys.stderr)
            os._exit(2)


def _inherits_sockets() -> bool:
    systemd = os.environ.get("LISTEN_FDS") and os.environ.get("LISTEN_PID") == str(os.getpid())
    return bool(systemd) or "GUNICORN_FD" in os.environ


def _address_in_use(address: Any) -> str | None:
    """Why ``address`` (host, port) cannot be listened on, or None; unix sockets are gunicorn's to check.

    The probe binds without SO_REUSEPORT, so it fails where any socket already listens."""
    if not isinstance(address, tuple):
        return None
    host, port = address[0], address[1]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as exc:
        shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        return f"{shown}: {os.strerror(exc.errno) if exc.errno else exc}"
    return None


def pre_request(worker: Any, req: Any) -> None:
    """Answer the connection's ``KEEPALIVE_REQUESTS``-th request with ``Connection: close``."""
    if KEEPALIVE_REQUESTS and getattr(req, "req_number", 1) >= KEEPALIVE_REQUESTS:
        req.must_close = True
