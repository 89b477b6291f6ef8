"""A run's end starts copying SQLite's write-ahead log into the store file at once (`Store.settle`), beside its
last reads and writes, so that closing the store does not wait for it (~20 ms of a background run's tail)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import anyio
import pytest

from runner import app
from runner.store import Store


def _claimed_in_the_file_alone(db: Path, copy: Path) -> int:
    """Requests a copy of the store's file alone, without its log, shows claimed: what a checkpoint has copied."""
    shutil.copyfile(db, copy)
    conn = sqlite3.connect(copy)
    try:
        return int(conn.execute("SELECT count(*) FROM requests WHERE state = 'in_progress'").fetchone()[0])
    finally:
        conn.close()


async def _copied(db: Path, copy: Path) -> None:
    while not _claimed_in_the_file_alone(db, copy):  # noqa: ASYNC110  # another thread's work: no event to wait on
        await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_settle_copies_the_log_into_the_file_while_the_store_stays_open(tmp_path: Path) -> None:
    src, db = tmp_path / "in.jsonl", tmp_path / "s.db"
    body = {"model": "m", "input": "hi"}
    src.write_text(
        "".join(
            json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/responses", "body": body}) + "\n"
            for i in range(5)
        )
    )
    job = (await app.submit(src, db=str(db))).job_id  # closed: everything is in the file
    async with await Store.open(str(db)) as store:
        assert len(await store.claim("owner", [job], 5, 60.0)) == 5  # written to the log
        assert _claimed_in_the_file_alone(db, tmp_path / "before.db") == 0
        store.settle()
        with anyio.fail_after(10):
            await _copied(db, tmp_path / "after.db")
        assert _claimed_in_the_file_alone(db, tmp_path / "after.db") == 5
