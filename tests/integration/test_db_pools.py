"""Pool sizes follow TMSI_DB_POOL_SIZE (both of the app's pools), and gunicorn warns at start when a
worker has more threads than its pools keep connections."""

from __future__ import annotations

from typing import Any

import pytest

from tmsi import gunicorn_conf
from tmsi.app import Database

pytestmark = pytest.mark.integration


def test_both_pools_keep_the_configured_number_of_connections(settings: Any) -> None:
    database = Database(settings.model_copy(update={"db_pool_size": 7}))
    try:
        assert database.engine.pool.size() == 7  # type: ignore[attr-defined]
        assert database.read_engine.pool.size() == 7  # type: ignore[attr-defined]
    finally:
        database.dispose()


class _Log:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, message: str, *args: Any) -> None:
        self.warnings.append(message % args)


class _Config:
    address: list[object] = []


class _Server:
    def __init__(self) -> None:
        self.log = _Log()
        self.cfg = _Config()


@pytest.mark.parametrize(("threads", "pool", "warned"), [(8, 5, True), (4, 5, False), (6, 6, False)])
def test_gunicorn_warns_when_threads_outnumber_the_pool(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, threads: int, pool: int, warned: bool
) -> None:
    monkeypatch.setenv("TMSI_DB_POOL_SIZE", str(pool))
    monkeypatch.setenv("TMSI_INSTANCE_PATH", str(tmp_path))
    monkeypatch.setattr(gunicorn_conf, "threads", threads)
    server = _Server()
    gunicorn_conf.on_starting(server)
    assert bool(server.log.warnings) is warned
    if warned:
        assert "TMSI_DB_POOL_SIZE=5" in server.log.warnings[0]
