"""`runner delete`: jobs go with their results, the file gives the space back, and nothing goes unasked."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, run_args, write_jobfile

pytestmark = pytest.mark.e2e

PROMPT = "Summarise the following passage in one sentence. " * 60  # ~3 KB, like an eval prompt


def _store_size(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())


def test_delete_removes_a_job_and_the_file_shrinks(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory()
    old = cli.submit(write_jobfile(tmp_path / "a.jsonl", 40, extra={"instructions": PROMPT}))
    keep = cli.submit(write_jobfile(tmp_path / "b.jsonl", 10, extra={"instructions": PROMPT}))
    assert cli("run", *run_args(mock, "--quiet")).returncode == 0

    r = cli("delete", old)  # no terminal, no --yes
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "runner: delete: refusing to delete without confirmation (stdin is not a terminal); pass --yes"
    )

    before = _store_size(cli.db)
    r = cli("delete", old, "--yes")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [old]
    assert "deleted 1 job(s) and 40 requests; the store went from" in r.stderr  # all 40 were still there
    after = _store_size(cli.db)
    assert before - after > 40 * len(PROMPT), (before, after)  # at least the prompts' bytes went back

    r = cli("delete", "--older-than", "7d", "--yes")
    assert r.returncode == 0 and r.stderr.strip() == "no job was created more than 7d ago; nothing deleted"
    r = cli("delete", "--older-than", "7 days", "--yes")
    assert r.returncode == 2
    assert r.stderr.strip() == "runner: --older-than: '7 days' is not a duration (for example 30m, 12h, 7d, 2w)"

    [listed] = json.loads(cli("jobs", "--json").stdout)
    assert listed["job_id"] == keep and listed["counts"]["completed"] == 10


def test_delete_asks_on_a_terminal(cli: Cli, tmp_path: Path) -> None:
    job = cli.submit(write_jobfile(tmp_path / "a.jsonl", 3), "--name", "weekly")

    def answer(text: str) -> tuple[int, str]:
        master, slave = pty.openpty()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "runner", "delete", job],
                stdin=slave,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=cli.environ(),
                cwd=tmp_path,
            )
            os.write(master, text.encode())
            _, err = proc.communicate(timeout=60)
        finally:
            os.close(master)
            os.close(slave)
        return proc.returncode, err

    code, err = answer("n\n")
    assert code == 0
    assert "about to delete 1 job(s), 3 requests, with their results:" in err
    assert job in err and "weekly" in err and "delete them? [y/N]" in err
    assert "nothing deleted" in err
    code, err = answer("y\n")
    assert code == 0 and "deleted 1 job(s) and 3 requests" in err  # all 3 were still there


def test_delete_refuses_a_job_a_live_runner_is_working_on(
    cli: Cli, mock_factory: Any, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    mock = mock_factory("--latency", "30")
    job = cli.submit(write_jobfile(tmp_path / "a.jsonl", 4))
    proc = cli.popen("run", job, *run_args(mock, "--quiet", "--grace", "0"))
    procs.append(proc)
    deadline = time.monotonic() + 30
    while mock.stats()["creates"] < 4:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    r = cli("delete", job, "--yes")
    assert r.returncode == 2
    assert r.stderr.startswith(f"runner: job {job} is being run by ")
    assert "stop that runner (or wait for it) before deleting" in r.stderr
