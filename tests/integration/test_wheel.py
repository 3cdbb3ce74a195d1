"""The built wheel runs without the source tree: migrations and templates travel inside the package.

Builds the wheel from a copy of the source (offline: the dev extras carry setuptools), installs it into a
bare directory and, from another directory, migrates a fresh SQLite database with ``tmsi db upgrade``
and serves the sign-in page and the public lookup from the installed templates.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import json, sys
import tmsi
from tmsi import create_app, source_or_package_dir
from tmsi.cli import main

try:
    main(["db", "upgrade"], standalone_mode=False)
except SystemExit as exit:
    assert not exit.code, exit.code
app = create_app()
client = app.test_client()
login = client.get("/login")
lookup = client.get("/lookup?ip=192.0.2.1")
print(json.dumps({
    "package": tmsi.__file__,
    "templates": str(source_or_package_dir("templates")),
    "migrations": str(source_or_package_dir("migrations")),
    "login": [login.status_code, login.get_data(as_text=True)],
    "lookup": [lookup.status_code, lookup.get_data(as_text=True)],
}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("tmsi", "migrations", "templates"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(source)],
        check=True,
        timeout=300,
    )
    (wheel,) = (work / "dist").glob("tmsi-*.whl")
    target = work / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, timeout=300
    )
    return target


def test_the_wheel_carries_migrations_and_templates(installed: Path) -> None:
    package = installed / "tmsi"
    versions = sorted(path.name for path in (package / "migrations" / "versions").glob("*.py"))
    assert versions == sorted(path.name for path in (ROOT / "migrations" / "versions").glob("*.py"))
    assert (package / "migrations" / "env.py").is_file()
    templates = sorted(
        str(path.relative_to(ROOT / "templates")) for path in (ROOT / "templates").rglob("*.html")
    )
    assert templates and all((package / "templates" / name).is_file() for name in templates)
    assert (package / "data" / "reply_templates.toml").is_file()


def test_the_installed_wheel_migrates_and_serves_pages_away_from_the_source(
    installed: Path, tmp_path: Path
) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TMSI_", "PYTHON"))} | {
        "PYTHONPATH": str(installed),
        "TMSI_DATABASE_URL": f"sqlite:///{tmp_path / 'wheel.db'}",
        "TMSI_SECRET_KEY": "wheel-test-secret",
        "TMSI_INSTANCE_PATH": str(tmp_path / "instance"),
        "TMSI_ZONE_DIR": str(tmp_path / "zone"),
        "TMSI_HUEY_STORAGE": "memory",
    }
    done = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    package = installed / "tmsi"
    assert Path(result["package"]).parent == package
    assert Path(result["templates"]) == package / "templates"
    assert Path(result["migrations"]) == package / "migrations"
    status, page = result["login"]
    assert status == 200 and 'name="password"' in page
    status, page = result["lookup"]
    assert status == 200 and "192.0.2.1" in page
