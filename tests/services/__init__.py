"""Real test services (Dovecot, Knot, rbldnsd, SMTP sink, Chromium) as a pytest plugin (see plugin.py)."""
