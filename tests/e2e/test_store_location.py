"""Where the store lives: a spec's store beside the spec whatever the working directory, read-only commands
that never create one, and one-line errors for a store that cannot be used or vanishes under a run."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, read_jsonl, run_args, write_jobfile

pytestmark = pytest.mark.e2e

SPEC = """
[job]
name = "eval"
input = "in.jsonl"

[defaults]
model = "gpt-4.1-mini"

[output]
results = "out/{job}-{date}.jsonl"
"""


def runner_in(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI as cron would start it: in `cwd`, with no RUNNER_DB."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "OPENAI_"))}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**clean, **(env or {})},
    )


def test_the_same_spec_from_two_directories_sends_each_request_once(mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory()
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    write_jobfile(jobs / "in.jsonl", 20)
    spec = jobs / "nightly.toml"
    spec.write_text(SPEC)
    home, ci = tmp_path / "home", tmp_path / "ci"
    home.mkdir()
    ci.mkdir()

    first = runner_in(home, "run", str(spec), *run_args(mock, "--quiet"))
    assert first.returncode == 0, first.stderr
    store = jobs / "runner.db"
    assert f"created store {store}" in first.stderr
    # cron starts in another directory, with a relative path to the spec; -v names the store, once
    second = runner_in(ci, "-v", "run", os.path.relpath(spec, ci), *run_args(mock, "--quiet"))
    assert second.returncode == 0, second.stderr
    assert "created store" not in second.stderr
    assert second.stderr.count(str(store)) == 1  # although the run opens it three times

    stats = mock.stats()
    assert stats["creates"] == 20
    assert sorted(stats["creates_by_key"].values()) == [1] * 20
    assert store.is_file()
    assert not list(home.iterdir()) and not list(ci.iterdir())  # no store, no copy of the input anywhere else
    assert not (jobs / ".runner").exists()
    results = jobs / "out" / f"eval-{dt.date.today().isoformat()}.jsonl"
    assert len(read_jsonl(results)) == 20
    # Both runs reported the same job.
    job_line = next(ln for ln in first.stdout.splitlines() if ln.startswith("job "))
    assert job_line in second.stdout


def test_db_flag_wins_over_the_spec_store(mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory()
    write_jobfile(tmp_path / "in.jsonl", 3)
    spec = tmp_path / "s.toml"
    # No [output] this time: the results still land beside the spec, and the run says where.
    without_output = SPEC.split("[output]")[0]
    spec.write_text(without_output.replace('input = "in.jsonl"', 'input = "in.jsonl"\nstore = "stores/eval.db"'))
    other = tmp_path / "other.db"
    r = runner_in(tmp_path, "run", str(spec), *run_args(mock, "--quiet", "--db", str(other)))
    assert r.returncode == 0, r.stderr
    assert f"created store {other}" in r.stderr
    assert not (tmp_path / "stores").exists()
    assert mock.stats()["creates"] == 3
    results = tmp_path / "out" / f"eval-in-{dt.date.today().isoformat()}.jsonl"
    assert len(read_jsonl(results)) == 3
    assert f"results: {results}" in r.stdout


@pytest.mark.parametrize("args", [("status",), ("jobs",), ("report",), ("export", "job_x"), ("run",)])
def test_read_only_commands_in_an_empty_directory_create_nothing(tmp_path: Path, args: tuple[str, ...]) -> None:
    r = runner_in(tmp_path, *args)
    assert r.returncode == 2
    expected = f"runner: no store at {tmp_path / 'runner.db'} (run `runner submit FILE` first, or pass --db)"
    assert r.stderr.strip() == expected
    assert r.stdout == ""
    assert list(tmp_path.iterdir()) == []


def _unwritable_dir(tmp_path: Path) -> Path:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root ignores permissions; nobody can add files to /proc/self
        return Path("/proc/self")
    return ro


def test_a_store_in_a_read_only_directory_is_one_line(tmp_path: Path) -> None:
    where = _unwritable_dir(tmp_path)
    jobfile = write_jobfile(tmp_path / "in.jsonl", 3)
    r = runner_in(tmp_path, "submit", str(jobfile), "--db", str(where / "runner.db"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"runner: cannot use the store {where / 'runner.db'}: its directory {where} is not")
    assert "Traceback" not in r.stderr


def test_a_file_that_is_not_a_store_is_named(tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_text("not a database, just notes\n" * 100)
    r = runner_in(tmp_path, "status", "--db", "notes.db")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"runner: cannot use the store {tmp_path / 'notes.db'}: it is not a runner store (not an SQLite database)"
    )


def test_a_store_deleted_under_a_run_stops_it(
    cli: Cli, mock_factory: Any, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    mock = mock_factory("--latency", "0.2")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 40))
    proc = cli.popen("run", job, *run_args(mock, "--quiet", "--concurrency", "2"))
    procs.append(proc)
    deadline = time.monotonic() + 30
    while mock.stats()["creates"] < 4:  # the run is well under way
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    cli.db.unlink()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.count("\n") == 1, err
    assert err.startswith(f"runner: the store {cli.db} was deleted while this run was using it; stopped at once")
    assert mock.stats()["creates"] < 30  # it stopped, not ran on into a file nobody reads
    assert not cli.db.exists()  # and did not bring it back empty
