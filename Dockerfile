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
COPY pyproject.toml setup.py README.md ./
RUN mkdir tmsi migrations templates && touch tmsi/__init__.py \
    && pip install . && pip uninstall -y tmsi && rm -rf tmsi migrations templates build
# Then tmsi itself, as a wheel would install it: migrations/ and templates/ go inside the package
# (setup.py), and the source is removed, so the image runs what `pip install tmsi` installs.
COPY migrations ./migrations
COPY templates ./templates
COPY tmsi ./tmsi
RUN pip install --no-deps . && rm -rf tmsi migrations templates build setup.py pyproject.toml README.md

USER tmsi
EXPOSE 8000
CMD ["gunicorn", "-c", "python:tmsi.gunicorn_conf", "--bind", "0.0.0.0:8000", "tmsi.wsgi:app"]
