"""README "Nightly jobs: job specs", tried as a user would break it: a glob of several input files, a re-run
on the same day with changed tables, and the spec's `[job]` switches (`reuse`, `cache_keys`)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, run_args

pytestmark = pytest.mark.e2e


def questions(path: Path, tag: str, n: int = 3, *, prefix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"input": f"{prefix}Question {tag} {i}?"}) + "\n" for i in range(n)))
    return path


def jobs_in(db: Path) -> list[str]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as c:
        return [r[0] for r in c.execute("select name from jobs where name not like '%staging%' order by name")]


def test_a_glob_with_one_bad_file_queues_no_job_at_all(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory()
    questions(tmp_path / "data" / "a.jsonl", "a")
    bad = questions(tmp_path / "data" / "b.jsonl", "b")
    with bad.open("a") as f:
        f.write(json.dumps({"input": 5}) + "\n")  # line 4: input is not text
    spec = tmp_path / "nightly.toml"
    spec.write_text(
        '[job]\nname = "g"\ninput = "data/*.jsonl"\n[defaults]\nmodel = "gpt-4.1-mini"\n'
        '[output]\nresults = "out/{job}-{input}.jsonl"\n'
    )

    r = cli("run", str(spec), *run_args(mock, "--quiet"))

    assert r.returncode == 2, r.stderr
    assert "data/b.jsonl" in r.stderr and "line 4" in r.stderr and "nothing was queued" in r.stderr
    # "nothing was queued" is true of the good file too: it used to be queued as job g-a, and run by the next
    # `runner run` of the store, though the spec run had been refused.
    assert jobs_in(cli.db) == []
    assert mock.stats()["creates"] == 0
    assert not (tmp_path / "out").exists()
