"""`runner delete` interrupted after its delete committed, while it gives the space back to the file system: it says
the jobs are deleted (it said only `runner: interrupted`, and a second delete then said the job did not exist), and
`runner doctor --fix` gives back the space it left."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import Cli, write_jobfile

pytestmark = [pytest.mark.e2e, pytest.mark.kill]


def _size(db: Path) -> int:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))


def _has_job(db: Path, job: str) -> bool:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as c:
        return c.execute("SELECT count(*) FROM jobs WHERE id = ?", (job,)).fetchone()[0] == 1


def test_sigterm_after_the_delete_committed_says_so_and_doctor_gives_the_space_back(
    cli: Cli, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    big = cli.submit(write_jobfile(tmp_path / "big.jsonl", 10_000, extra={"instructions": "x" * 1000}))
    small = cli.submit(write_jobfile(tmp_path / "small.jsonl", 3))
    full = _size(cli.db)
    p = cli.popen("delete", big, "--yes")
    procs.append(p)
    deadline = time.monotonic() + 60
    while _has_job(cli.db, big):  # until its delete has committed: it now gives the space back
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.005)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    said = err.strip().splitlines()
    print(f"exit {p.returncode}: {said}")
    if p.returncode == 0:  # it had finished giving the space back before the signal came
        assert said[-1].startswith("deleted 1 job(s) and 10000 requests; the store went from"), err
    else:
        assert p.returncode == 143, err
        assert len(said) == 2 and said[-1] == "runner: interrupted", err
        assert said[0].endswith(
            "deleted 1 job(s) before the interrupt; their space may not be given back yet:"
            " `runner doctor --fix` gives it back"
        ), err
    jobs = json.loads(cli("jobs", "--json").stdout)
    assert [j["job_id"] for j in jobs] == [small]

    r = cli("doctor", "--fix")
    assert r.returncode == 0, r.stderr
    assert "integrity_check: ok" in r.stdout
    assert _size(cli.db) < full // 4, (full, _size(cli.db))
    assert cli.status(small)["counts"]["queued"] == 3
