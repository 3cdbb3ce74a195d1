"""``tmsi rdns classify``: JSON lines out of ADDRESS<TAB>PTR lines, from a file or stdin, without an app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tmsi.cli.rdns import rdns


def _run(args: list[str], stdin: str | None = None, **env: str) -> tuple[int, list[dict[str, Any]], str]:
    result = CliRunner().invoke(rdns, args, input=stdin, env=env or None)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result.exit_code, lines, result.output


def test_classifies_stdin_into_one_json_object_per_line() -> None:
    code, lines, _ = _run(
        ["classify"],
        "203.0.113.7\tc-203-0-113-7.hsd1.ca.comcast.example\n198.51.100.1\tmail.example.net.\n",
    )
    assert code == 0
    assert lines == [
        {
            "ip": "203.0.113.7",
            "ptr": "c-203-0-113-7.hsd1.ca.comcast.example",
            "verdict": "dynamic",
            "reasons": [
                "address embedded dashed: 203-0-113-7 in label 1",
                "token 'hsd' (access) as label part in label 2",
            ],
        },
        {
            "ip": "198.51.100.1",
            "ptr": "mail.example.net.",
            "verdict": "custom",
            "reasons": ["no address, pool token or generated id in the name: hand-made"],
        },
    ]


def test_reads_a_file_argument(tmp_path: Path) -> None:
    path = tmp_path / "names.tsv"
    path.write_text("2001:db8::7\t2001-db8--7.static.isp.example\n", encoding="utf-8")
    code, lines, _ = _run(["classify", str(path)])
    assert code == 0
    assert [(line["ip"], line["verdict"]) for line in lines] == [("2001:db8::7", "static")]


def test_bad_lines_are_reported_with_their_number_and_the_run_goes_on() -> None:
    stdin = (
        "# a comment\n"
        "\n"
        "just-one-field\n"
        "203.0.113.999\tmail.example.net\n"
        "203.0.113.8\t\n"
        "203.0.113.9\tdyn-203-0-113-9.isp.example\n"
    )
    code, lines, _ = _run(["classify"], stdin)
    assert code == 0
    assert lines[0] == {"line": 3, "error": "expected ADDRESS<TAB>PTR_NAME"}
    assert lines[1]["line"] == 4
    assert "203.0.113.999" in lines[1]["error"]
    assert lines[2]["ip"] == "203.0.113.8"
    assert lines[2]["verdict"] == "generic"
    assert lines[2]["reasons"] == ["invalid name: empty name"]
    assert lines[3]["verdict"] == "dynamic"
    assert len(lines) == 4


def test_several_ptr_names_in_one_field_must_all_pass() -> None:
    code, lines, _ = _run(["classify"], "203.0.113.7\tmail.example.net dsl-203-0-113-7.isp.example\n")
    assert code == 0
    assert lines[0]["verdict"] == "dynamic"
    assert lines[0]["reasons"][-1] == "1 of 2 PTR names fail: every name must pass"


def test_space_separated_line_and_extra_columns_are_accepted() -> None:
    stdin = (
        "203.0.113.7 static-203-0-113-7.isp.example\n"
        "198.51.100.2\tpool-198-51-100-2.isp.example\tdynamic\tnote\n"
    )
    code, lines, _ = _run(["classify"], stdin)
    assert code == 0
    assert [line["verdict"] for line in lines] == ["static", "dynamic"]
    assert lines[1]["ptr"] == "pool-198-51-100-2.isp.example"


def test_undecodable_bytes_do_not_stop_the_run(tmp_path: Path) -> None:
    path = tmp_path / "latin1.tsv"
    path.write_bytes(b"203.0.113.7\tmail.m\xfcnchen.example\n203.0.113.8\tmail.example.net\n")
    code, lines, _ = _run(["classify", str(path)])
    assert code == 0
    assert lines[0]["verdict"] == "generic"
    assert lines[0]["reasons"][0].startswith("invalid name:")
    assert lines[1]["verdict"] == "custom"


@pytest.mark.parametrize("via_env", [False, True])
def test_extra_rules_file_from_option_or_environment(tmp_path: Path, via_env: bool) -> None:
    rules = tmp_path / "isp.toml"
    rules.write_text(
        "[[isp]]\ndomain = 'acme.example'\npattern = '^gw-'\nverdict = 'static'\nreason = 'ACME gateways'\n",
        encoding="utf-8",
    )
    stdin = "203.0.113.7\tgw-203-0-113-7.acme.example\n"
    _, before, _ = _run(["classify"], stdin)
    assert before[0]["verdict"] == "generic"
    if via_env:
        code, after, _ = _run(["classify"], stdin, TMSI_RDNS_RULES_FILE=str(rules))
    else:
        code, after, _ = _run(["classify", "--rules", str(rules)], stdin)
    assert code == 0
    assert after[0]["verdict"] == "static"
    assert any("ACME gateways" in reason for reason in after[0]["reasons"])


def test_a_broken_rules_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    rules = tmp_path / "broken.toml"
    rules.write_text("[[isp]]\ndomain = 'x.example'\npattern = '('\nverdict = 'static'\n", encoding="utf-8")
    result = CliRunner().invoke(rdns, ["classify", "--rules", str(rules)], input="203.0.113.7\tx.example\n")
    assert result.exit_code != 0
    assert str(rules) in result.output
    assert "bad regex" in result.output


def test_needs_no_app_and_no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    import tmsi

    def _no_app(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("rdns classify must not build the Flask app")

    monkeypatch.setattr(tmsi, "create_app", _no_app)
    monkeypatch.setenv("TMSI_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    code, lines, _ = _run(["classify"], "203.0.113.7\tmail.example.net\n")
    assert code == 0
    assert lines[0]["verdict"] == "custom"


def test_registered_in_the_tmsi_command_without_loading_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    import click

    import tmsi
    from tmsi.cli import main

    assert "rdns" in main.list_commands(click.Context(main))

    def _no_app(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("rdns classify must not build the Flask app")

    monkeypatch.setattr(tmsi, "create_app", _no_app)
    result = CliRunner().invoke(
        main, ["rdns", "classify"], input="203.0.113.7\tpool-203-0-113-7.isp.example\n"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["verdict"] == "dynamic"
