"""The CLI's exit codes and environment variables are spelled once: the README and --help follow the code."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from runner.cli.exits import ExitCode, epilog
from runner.cli.parser import build_parser
from runner.config import Settings, env_name

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_exit_codes() -> dict[int, str]:
    """The README's "Exit codes" table: code -> meaning (a row may name two codes, `130 / 143`)."""
    section = README.read_text().split("### Exit codes", 1)[1].split("\n#", 1)[0]
    rows: dict[int, str] = {}
    for line in section.splitlines():
        m = re.match(r"^\|\s*([\d /]+?)\s*\|\s*(.+?)\s*\|$", line)
        if m:
            for code in m[1].split("/"):
                rows[int(code)] = m[2]
    return rows


def test_the_readme_table_lists_exactly_the_exit_codes_of_the_code() -> None:
    rows = _readme_exit_codes()
    assert sorted(rows) == sorted(int(c) for c in ExitCode)
    assert "budget" in rows[ExitCode.BUDGET] and "doomed" in rows[ExitCode.DOOMED]
    assert "SIGINT / SIGTERM" in rows[ExitCode.SIGINT] and "closed" in rows[ExitCode.PIPE]


def test_the_help_epilog_names_every_exit_code() -> None:
    text = epilog()
    named = [int(n) for n in re.findall(r"(\d+) [a-zA-Z]", text)]
    assert named == [int(c) for c in ExitCode]
    assert " ".join(build_parser().format_help().split()).endswith(" ".join(text.split()))


def _settings_options(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.Action]]:
    found = [(parser.prog, a) for a in parser._actions if a.dest in Settings.model_fields]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _settings_options(sub)
    return found


def test_every_setting_flag_names_the_variable_its_field_is_read_from() -> None:
    options = _settings_options(build_parser())
    fields = {a.dest for _, a in options}
    # Every setting a user may give on the command line, on the commands that use it.
    assert {"db", "base_url", "api_key", "auth_style", "concurrency", "timeout", "grace", "prices"} <= fields
    for prog, action in options:
        env = env_name(action.dest)
        assert env is not None and action.help is not None
        assert action.help.endswith(f"[env: {env}]"), (prog, action.option_strings, action.help)
        assert action.option_strings[-1] == "--" + action.dest.replace("_", "-")
