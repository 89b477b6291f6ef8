"""README "Nightly jobs: job specs", tried as a user would break it: a glob of several input files, a re-run
on the same day with changed tables, and the spec's `[job]` switches (`reuse`, `cache_keys`)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, read_jsonl, run_args

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


def test_a_glob_whose_files_share_a_name_is_refused_before_anything_is_sent(
    cli: Cli, mock_factory: Any, tmp_path: Path
) -> None:
    mock = mock_factory()
    questions(tmp_path / "data" / "mon" / "x.jsonl", "mon")
    questions(tmp_path / "data" / "tue" / "x.jsonl", "tue")
    spec = tmp_path / "nightly.toml"
    spec.write_text(
        '[job]\nname = "g"\ninput = "data/*/x.jsonl"\n[defaults]\nmodel = "gpt-4.1-mini"\n'
        '[output]\nresults = "out/{job}-{input}.jsonl"\n'
    )

    r = cli("run", str(spec), *run_args(mock, "--quiet"))

    # {input} is the file's stem, "x" for both: the second job's export replaced the first's, and three paid-for
    # answers were missing from the results with exit 0.
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert str(spec) in r.stderr and "[output] results" in r.stderr and "out/g-x.jsonl" in r.stderr
    assert mock.stats()["creates"] == 0 and jobs_in(cli.db) == []

    # With {job_id} in the name each job has its own file.
    spec.write_text(spec.read_text().replace("{input}", "{input}-{job_id}"))
    r = cli("run", str(spec), *run_args(mock, "--quiet"))
    assert r.returncode == 0, r.stderr
    outputs = sorted((tmp_path / "out").iterdir())
    assert len(outputs) == 2
    assert sorted(len(read_jsonl(p)) for p in outputs) == [3, 3]


def test_detach_with_a_spec_is_refused_before_anything_is_queued(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory("--batch-run-delay", "30")
    questions(tmp_path / "in.jsonl", "a")
    spec = tmp_path / "nightly.toml"
    spec.write_text('[job]\ninput = "in.jsonl"\nlane = "batch"\n[defaults]\nmodel = "gpt-4.1-mini"\n')

    r = cli("run", str(spec), "--detach", *run_args(mock, "--quiet"))

    # --detach was ignored: the cron line waited for the batches (up to 24 h on the real API), then exported.
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [
        "runner: --detach is for `runner run JOB_ID`: a spec run waits for its batches and exports their results"
    ]
    assert mock.stats()["batch"]["uploads"] == 0 and jobs_in(cli.db) == []


def test_a_spec_run_killed_half_way_is_finished_by_the_next_cron_run_without_paying_twice(
    cli: Cli, mock_factory: Any, tmp_path: Path
) -> None:
    mock = mock_factory("--latency", "0.2")
    n, concurrency = 30, 3
    questions(tmp_path / "in.jsonl", "q", n)
    spec = tmp_path / "nightly.toml"
    spec.write_text(
        '[job]\nname = "eval"\ninput = "in.jsonl"\n[defaults]\nmodel = "gpt-4.1-mini"\n'
        f'[limits]\nconcurrency = {concurrency}\n[output]\nresults = "out/{{job}}.jsonl"\n'
    )
    run = cli.popen("run", str(spec), *run_args(mock, "--quiet"))
    try:
        deadline = time.monotonic() + 60
        while mock.stats()["creates"] < 6:
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "the run sent nothing"
            time.sleep(0.05)
    finally:
        run.kill()  # SIGKILL: the machine went down
        run.communicate()
    assert mock.stats()["creates"] < n

    r = cli("run", str(spec), *run_args(mock, "--quiet"))

    assert r.returncode == 0, r.stderr
    assert jobs_in(cli.db) == ["eval"]  # the same job, resumed
    assert len(read_jsonl(tmp_path / "out" / "eval.jsonl")) == n
    creates = mock.stats()["creates_by_key"]
    assert len(creates) == n
    # Sent twice: at most what was on the wire when the first run died.
    assert sum(creates.values()) - n <= concurrency
