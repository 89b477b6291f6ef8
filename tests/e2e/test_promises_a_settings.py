"""README "Settings": flags win over environment variables, and a bad value is one line naming the flag and
the variable, exit 2. A plain `runner run` (no job id) used to judge the environment alone while picking its
jobs, so a stale RUNNER_CONCURRENCY=99999 stopped `runner run --concurrency 4` although the flag overrode it."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import anyio
import pytest

from runner import app
from tests.conftest import Cli, MockServer, run_args, write_jobfile

pytestmark = pytest.mark.e2e


def _states(db: Path) -> dict[str, int]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return dict(conn.execute("select state, count(*) from requests group by state"))


def test_a_flag_wins_over_a_bad_variable_in_a_plain_run(cli: Cli, mock_factory: object) -> None:
    mock: MockServer = mock_factory()  # type: ignore[operator]
    path = write_jobfile(cli.db.parent / "in.jsonl", 2)
    job = anyio.run(lambda: app.submit(path, db=str(cli.db))).job_id  # set-up only
    bad = {"RUNNER_CONCURRENCY": "99999"}

    r = cli("run", *run_args(mock), "--quiet", extra_env=bad)
    assert r.returncode == 2, r.stderr
    bounds = "Input should be less than or equal to 10000"
    assert r.stderr == f"runner: invalid --concurrency / RUNNER_CONCURRENCY: {bounds}\n"
    assert _states(cli.db) == {"queued": 2}  # nothing was changed

    r = cli("run", *run_args(mock), "--quiet", "--concurrency", "4", extra_env=bad)
    assert r.returncode == 0, r.stderr
    assert _states(cli.db) == {"completed": 2}
    assert f"starting {job}" in r.stderr
