# The tmsi application image: web (gunicorn), worker (Huey consumer) and migrations share it.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TMSI_INSTANCE_PATH=/var/lib/tmsi \
    TMSI_ZONE_DIR=/var/lib/tmsi/zone \
    TMSI_LOG_JSON=true

RUN useradd --system --uid 10001 --home-dir /var/lib/tmsi --create-home tmsi \
    && mkdir -p /var/lib/tmsi/zone && chown -R tmsi:tmsi /var/lib/tmsi

WORKDIR /app
# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir tmsi && touch tmsi/__init__.py && pip install . && pip uninstall -y tmsi && rm -rf tmsi build
# The source stays in /app (editable install): migrations/ and templates/ are found next to tmsi/.
COPY alembic.ini ./
COPY migrations ./migrations
COPY templates ./templates
COPY tmsi ./tmsi
RUN pip install --no-deps -e .

USER tmsi
EXPOSE 8000
CMD ["gunicorn", "-c", "python:tmsi.gunicorn_conf", "--bind", "0.0.0.0:8000", "tmsi.wsgi:app"]
