"""Headless Debian Chromium driven by Playwright's sync API (never `playwright install`)."""

from __future__ import annotations

import importlib.util
import os

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing() -> str:
    """Why the browser cannot run here, or '' when it can."""
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is not installed"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright Python package is not installed"
    return ""
