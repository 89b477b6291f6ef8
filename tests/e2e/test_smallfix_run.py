"""Small faults of `runner run` a user saw: a job named twice, a refusal after "resuming ...", a global-option
mistake, budgets shown with too few digits, infinite numbers, a missing key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cli, MockServer, run_args, write_jobfile

pytestmark = pytest.mark.e2e


def test_a_job_named_twice_runs_and_reports_once(cli: Cli, mock_factory: object) -> None:
    mock: MockServer = mock_factory()  # type: ignore[operator]
    job = cli.submit(write_jobfile(cli.db.parent / "in.jsonl", 3))

    r = cli("run", job, job, *run_args(mock), "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(f"job {job} ") == 1, r.stdout
    assert mock.stats()["creates"] == 3
    assert cli.status(job)["counts"]["completed"] == 3
