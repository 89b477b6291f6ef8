"""README "Nightly jobs": flags win over a spec's `[limits]`, and `[limits]` win over RUNNER_* variables (a
variable set for the whole machine does not retune a nightly job), while `--db`/RUNNER_DB win over `[job] store`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, write_jobfile

pytestmark = pytest.mark.e2e

SPEC = """
[job]
name = "prec"
input = "in.jsonl"
store = "spec.db"

[limits]
concurrency = 3
"""


def _limit(stderr: str) -> int:
    """The concurrency limit of the run's last progress line (`concurrency=IN_USE/LIMIT`)."""
    limits = re.findall(r"concurrency=\d+/(\d+)", stderr)
    assert limits, stderr
    return int(limits[-1])


def test_limits_beat_the_environment_and_flags_beat_limits(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory()
    write_jobfile(tmp_path / "in.jsonl", 4)
    spec = tmp_path / "nightly.toml"
    spec.write_text(SPEC)
    env = {"RUNNER_CONCURRENCY": "7", "OPENAI_BASE_URL": mock.base_url}

    r = cli("run", str(spec), extra_env=env)
    assert r.returncode == 0, r.stderr
    assert _limit(r.stderr) == 3

    spec.write_text(SPEC.replace("concurrency = 3", ""))  # the spec is silent: the variable counts
    r = cli("run", str(spec), extra_env=env)
    assert r.returncode == 0, r.stderr
    assert _limit(r.stderr) == 7

    spec.write_text(SPEC)
    r = cli("run", str(spec), "--concurrency", "5", extra_env=env)
    assert r.returncode == 0, r.stderr
    assert _limit(r.stderr) == 5


def test_runner_db_beats_the_spec_store(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory()
    write_jobfile(tmp_path / "in.jsonl", 2)
    spec = tmp_path / "nightly.toml"
    spec.write_text(SPEC)
    r = cli("run", str(spec), extra_env={"OPENAI_BASE_URL": mock.base_url})  # cli sets RUNNER_DB
    assert r.returncode == 0, r.stderr
    assert cli.db.exists() and not (tmp_path / "spec.db").exists()
