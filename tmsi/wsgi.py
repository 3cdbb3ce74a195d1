"""WSGI entry point: ``gunicorn -c python:tmsi.gunicorn_conf tmsi.wsgi:app``."""

from __future__ import annotations

from tmsi import create_app

app = create_app()
