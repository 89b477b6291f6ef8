"""`runner cancel` on a job a `runner run --lane batch` is polling: the run's last line, `runner status` and the
cancel line count the same cancelled requests (the run's line said `cancelled 0`, the rest counted as retries)."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.conftest import Cli, write_jobfile


def _batch_ids(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM batches WHERE batch_id IS NOT NULL").fetchone()[0])


def test_cancelled_batch_requests_are_counted_alike_by_run_status_and_cancel(
    cli: Cli, mock_factory: Any, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    # Batches would run 60 s and stay `cancelling` 0.5 s: the cancel lands while they run, most lines never ran.
    mock = mock_factory("--batch-run-delay", "60", "--batch-finalize-delay", "0.5")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 200))
    run = cli.popen("run", job, "--lane", "batch", "--batch-max-lines", "100", "--base-url", mock.base_url)
    procs.append(run)
    deadline = time.monotonic() + 30
    while _batch_ids(cli.db) < 2:  # both batch ids committed: `runner cancel` finds them
        assert run.poll() is None, run.communicate()[1]
        assert time.monotonic() < deadline, "the batches were never created"
        time.sleep(0.05)

    c = cli("cancel", job, "--base-url", mock.base_url)
    assert c.returncode == 0, c.stderr
    assert "2 batches cancelled, 200 requests in them not merged yet" in c.stderr, c.stderr

    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    last = [x for x in err.splitlines() if x.startswith("this run: ")][-1]
    m = re.search(r"completed (\d+), incomplete (\d+), failed (\d+), cancelled (\d+)\)", last)
    assert m is not None, last
    counts = cli.status(job)["counts"]
    assert int(m[4]) == counts["cancelled"] > 0, (last, counts)
    assert int(m[1]) + int(m[2]) + int(m[3]) + int(m[4]) == 200, last
    assert "retries 0," in last, last
