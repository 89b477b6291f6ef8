"""`runner cancel` of a job whose background responses a `runner run` is polling: the cancels go out many at
once, one summary line reports the count `runner status` then shows, and the run ends quietly."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, write_jobfile

pytestmark = pytest.mark.e2e

N = 100


def _with_response_id(db: Path, job: str) -> int:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        sql = "select count(*) from requests where job_id=? and state='in_progress' and response_id is not null"
        n: int = conn.execute(sql, (job,)).fetchone()[0]
        return n


def test_cancel_of_100_polling_requests_is_quick_counted_right_and_quiet(
    cli: Cli, mock_factory: Any, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    # Each cancel takes 0.4 s on the mock (latency / 10): one at a time, 100 would take 40 s.
    mock = mock_factory("--bg-delay", "120", "--latency", "4")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", N), "--background")
    run = cli.popen("run", job, "--base-url", mock.base_url, "--concurrency", str(N), "--quiet")
    procs.append(run)
    end = time.monotonic() + 60
    while _with_response_id(cli.db, job) < N:
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < end, "the background requests were not all sent"
        time.sleep(0.05)

    started = time.monotonic()
    r = cli("cancel", job, "--base-url", mock.base_url)
    took = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [f"cancelled {N} requests of job {job} (0 queued, {N} in flight)"]
    assert took < 15  # includes starting Python on a busy machine; the cancels themselves take about 2 s
    assert mock.stats()["cancels"] == N

    # The run polling them sees them end, records nothing twice and says so in at most one line.
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    assert "Traceback" not in err
    assert len(re.findall("finished by another process", err)) <= 1
    assert "no longer leased" not in err
    counts = {k: v for k, v in cli.status(job)["counts"].items() if v}
    assert counts == {"cancelled": N}


def test_a_run_sends_nothing_more_of_a_job_cancelled_under_it(
    cli: Cli, mock_factory: Any, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    # The run holds requests it claimed but has not sent (its ready buffer, and slots waiting for the pacer): it
    # sent them all after `runner cancel` had returned, each paid for (46-53 at --rpm 6000 and concurrency 40).
    mock = mock_factory("--latency", "0.5")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 400))
    run = cli.popen("run", job, "--base-url", mock.base_url, "--concurrency", "80", "--rpm", "1200", "--quiet")
    procs.append(run)
    end = time.monotonic() + 60
    while mock.stats()["creates"] < 30:
        assert run.poll() is None and time.monotonic() < end, run.communicate()
        time.sleep(0.02)
    r = cli("cancel", job)
    assert r.returncode == 0, r.stderr
    at_cancel = mock.stats()["creates"]
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    after = mock.stats()["creates"] - at_cancel
    # What the pacer lets out (20 a second) until the run's next look for a cancel (every 0.25 s), with room for
    # a loaded machine; never the 80 and more it holds.
    print(f"sent after the cancel: {after}")
    assert after <= 15, after
    counts = cli.status(job)["counts"]
    assert counts["completed"] + counts["cancelled"] == 400 and counts["completed"] == mock.stats()["creates"]
    assert counts["queued"] == counts["in_progress"] == 0
