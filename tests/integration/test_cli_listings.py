"""``tmsi listings`` end to end through the CLI, on the test database."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tmsi.cli import main


@pytest.fixture
def run(database_url, factory, monkeypatch):
    monkeypatch.setenv("TMSI_DATABASE_URL", database_url)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke


def test_import_twice_changes_nothing(run, tmp_path):
    path = tmp_path / "dul.csv"
    path.write_text(
        "network,reason,listed_at\n203.0.113.0/24,generic,2026-01-01T00:00:00Z\n2001:db8:1::/48,pool,\n"
    )
    first = run("listings", "import", str(path))
    assert first.exit_code == 0, first.output
    assert json.loads(first.output.strip().splitlines()[-1])["added"] == 2
    second = run("listings", "import", str(path))
    assert json.loads(second.output.strip().splitlines()[-1]) == {
        "added": 0,
        "unchanged": 2,
        "covered": 0,
        "superseded": 0,
        "errors": 0,
    }


def test_bad_lines_are_reported_and_valid_lines_imported(run, tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text("203.0.113.0/24,ok\n203.0.113.7/24,host bits\n198.51.100.0/24,ok\n")
    result = run("listings", "import", str(path))
    assert result.exit_code == 1
    assert ":2: 203.0.113.7/24 has host bits set" in result.output
    assert json.loads(result.output.strip().splitlines()[-1])["added"] == 2


def test_strict_imports_nothing_when_a_line_is_bad(run, tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text("203.0.113.0/24,ok\nbogus,bad\n")
    result = run("listings", "import", "--strict", str(path))
    assert result.exit_code == 1 and "nothing imported" in result.output
    lookup = run("listings", "lookup", "203.0.113.1")
    assert json.loads(lookup.output)["listed"] is False


def test_rbldnsd_import_and_lookup(run, tmp_path):
    path = tmp_path / "dul.ip4set"
    path.write_text(":127.0.0.2:Dynamic IP $\n203.0.113.0/25\n203.0.113.200\n")
    assert run("listings", "import", str(path)).exit_code == 0
    out = json.loads(run("listings", "lookup", "203.0.113.0/24").output)
    assert out["coverage"] == "partly_listed"
    assert [x["network"] for x in out["listings"]] == ["203.0.113.0/25", "203.0.113.200/32"]
    assert out["listings"][0]["reason"] == "Dynamic IP $"


def test_lookup_rejects_bad_input(run):
    result = CliRunner().invoke(main, ["listings", "lookup", "203.0.113.7/24"])
    assert result.exit_code == 2 and "host bits set" in result.output


def test_export_to_a_new_directory_and_to_a_file(run, tmp_path):
    path = tmp_path / "dul.csv"
    path.write_text("203.0.113.0/24,generic\n2001:db8:1::/48,pool\n")
    assert run("listings", "import", str(path)).exit_code == 0
    outdir = tmp_path / "zone"
    result = run("listings", "export", "--format", "rbldnsd", f"{outdir}/")
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in outdir.iterdir())
    assert len(files) == 2 and files[0].endswith(".ip4set") and files[1].endswith(".ip6trie")
    assert "203.0.113.0/24" in (outdir / files[0]).read_text()
    assert "2001:db8:1::/48" in (outdir / files[1]).read_text()
    single = tmp_path / "dul.zone"
    assert run("listings", "export", str(single)).exit_code == 0
    text = single.read_text()
    assert "203.0.113.0/24" in text and "2001:db8:1::/48" in text
    assert not list(tmp_path.glob("*.tmp*"))  # written through a temp file and renamed
