"""The run's look for a `runner cancel` of its jobs (four times a second), on each backend's own connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import app
from runner.store import Store
from tests.conftest import write_jobfile


@pytest.mark.anyio
async def test_a_run_sees_which_of_its_jobs_were_cancelled(store_db: str, tmp_path: Path) -> None:
    kept = await app.submit(write_jobfile(tmp_path / "a.jsonl", 3), db=store_db)
    stopped = await app.submit(write_jobfile(tmp_path / "b.jsonl", 2), db=store_db)
    await app.cancel(stopped.job_id, db=store_db)
    async with await Store.open(store_db, "existing") as store:
        ids = [kept.job_id, stopped.job_id, "job_nope"]
        assert await store.cancelled_among(ids) == {stopped.job_id}
        assert await store.cancelled_among([kept.job_id]) == set()
        assert await store.cancelled_among([]) == set()
    await app.retry(stopped.job_id, db=store_db)  # retry un-cancels the job
    async with await Store.open(store_db, "existing") as store:
        assert await store.cancelled_among(ids) == set()
