"""Two `runner delete`s at once on one PostgreSQL store, of two jobs that reference each other's answers.

Deleting a job hands each of its answers that other jobs reused to one referencing row (store/answer.py), so
the delete locks the referencing jobs' rows too. Two deletes whose jobs reference each other each lock their
own job, then the other's: without one order over both, PostgreSQL found a cycle and aborted one with
"deadlock detected". Both must succeed, and every reused row left must still read an answer.

How two jobs come to reference each other: two reuse submits staged at once (their chunks interleave, so each
job has rows older than some of the other's) both reuse answers of a third job, which is then deleted: each
answer moves to its oldest referencing row, in whichever of the two jobs that is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from runner import app
from runner.config import Settings
from runner.store import Store
from runner.store.answer import answer
from runner.store.models import NewRequest
from runner.store.reuse import add_reusing
from runner.store.tables import requests
from tests.integration.test_reuse_store import FakeApi, jobfile

ROUNDS = 3
QUESTIONS = 4


async def _source_rows(db: str, job_id: str) -> list[tuple[str, str]]:
    """(body, body_hash) of each line of a job, in line order."""

    async def go(conn: AsyncConnection) -> list[tuple[str, str]]:
        rows = await conn.execute(
            select(requests.c.body, requests.c.body_hash)
            .where(requests.c.job_id == job_id)
            .order_by(requests.c.line_no)
        )
        return [(r.body, r.body_hash) for r in rows]

    async with await Store.open(db, "existing") as store:
        return await store.read(go)


async def _mutual_pair(db: str, tmp: Path, tag: str) -> tuple[str, str]:
    """Two published jobs, each holding answers the other's rows reference (see the module docstring)."""
    api = FakeApi()
    source = (await app.submit(jobfile(tmp / f"{tag}.jsonl", QUESTIONS), db=db, new=True)).job_id
    await app.run([source], Settings(db=db, base_url="http://api.test/v1", api_key="k"), transport=api.transport())
    questions = await _source_rows(db, source)
    a, b = f"{tag}-a", f"{tag}-b"
    async with await Store.open(db, "existing") as store:
        for job in (a, b):
            await store.begin_job(job_id=job, name=job, source="x", fingerprint=job, background=False, staged_by="test")
        # Chunks interleaved: a's first half of the questions, b's first half in reverse, a's second, b's second.
        half = QUESTIONS // 2
        order = list(range(QUESTIONS))
        plan = [(a, order[:half]), (b, order[::-1][:half]), (a, order[half:]), (b, order[::-1][half:])]
        lines = {a: 0, b: 0}
        for job, picked in plan:
            chunk = []
            for q in picked:
                lines[job] += 1
                body, digest = questions[q]
                chunk.append(NewRequest(lines[job], f"line-{lines[job]}", body, None, digest, None))
            assert await add_reusing(store, job, chunk) == len(chunk)
        for job in (a, b):
            await store.publish_job(job, QUESTIONS)
    await app.delete([source], db=db)
    return a, b


async def _references(db: str) -> list[tuple[str, str]]:
    """(job of the row, job of its source) for every row that references another."""
    stmt = text("SELECT r.job_id, s.job_id FROM requests r JOIN requests s ON s.id = r.reused_from ORDER BY r.id")

    async def go(conn: AsyncConnection) -> list[tuple[str, str]]:
        return [(x, y) for x, y in await conn.execute(stmt)]

    async with await Store.open(db, "existing") as store:
        return await store.read(go)


async def _answers(db: str) -> list[tuple[str, int, Any, Any]]:
    """(job, line, answer as read, reused_from) of every row left."""

    async def go(conn: AsyncConnection) -> list[tuple[str, int, Any, Any]]:
        rows = await conn.execute(
            select(requests.c.job_id, requests.c.line_no, answer().label("a"), requests.c.reused_from).order_by(
                requests.c.id
            )
        )
        return [(r.job_id, r.line_no, r.a, r.reused_from) for r in rows]

    async with await Store.open(db, "existing") as store:
        return await store.read(go)


async def _deadlocks(db: str) -> int:
    """How many transactions PostgreSQL has aborted with "deadlock detected" in this database, once every other
    session has ended (a session reports its count as it ends)."""
    others = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    count = text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
    async with await Store.open(db, "existing") as store:
        with anyio.fail_after(30):
            while True:
                async with store.engine.connect() as conn:
                    if int((await conn.execute(others)).scalar_one()) == 0:
                        return int((await conn.execute(count)).scalar_one())
                await anyio.sleep(0.05)


async def _until_waiting(db: str, n: int) -> None:
    """Until `n` sessions of the runner wait for a lock."""
    q = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")
    async with await Store.open(db, "existing") as store:
        with anyio.fail_after(30):
            while True:
                async with store.engine.connect() as conn:
                    if int((await conn.execute(q)).scalar_one()) >= n:
                        return
                await anyio.sleep(0.01)


async def _delete(db: str, job: str, failures: list[BaseException]) -> None:
    try:
        await app.delete([job], db=db)
    except Exception as e:  # the test's assertion names it
        failures.append(e)


@pytest.mark.anyio
async def test_two_deletes_of_jobs_reusing_each_others_answers_both_succeed(pg_store_url: str, tmp_path: Path) -> None:
    db = pg_store_url
    for round_no in range(ROUNDS):
        a, b = await _mutual_pair(db, tmp_path, f"r{round_no}")
        # Each references the other: the cycle the two deletes must not lock in.
        assert {(a, b), (b, a)} <= set(await _references(db))
        # A third job answered from both, so the deletes have answers to hand on and a reader to check.
        keeper = await app.submit(jobfile(tmp_path / f"r{round_no}.jsonl", QUESTIONS), db=db, new=True, reuse=True)
        assert keeper.reused == QUESTIONS
        expected = [row[2] for row in await _answers(db) if row[0] == keeper.job_id]
        assert all(expected)

        failures: list[BaseException] = []

        deadlocks = await _deadlocks(db)
        async with await Store.open(db, "existing") as blocker, blocker.engine.connect() as hold:
            # Both deletes wait for their own job's row, so they start their locking at the same moment.
            lock = text("SELECT id FROM jobs WHERE id IN (:a, :b) FOR NO KEY UPDATE")
            await hold.execute(lock, {"a": a, "b": b})
            async with anyio.create_task_group() as tg:
                tg.start_soon(_delete, db, a, failures)
                tg.start_soon(_delete, db, b, failures)
                await _until_waiting(db, 2)
                await hold.rollback()
        assert failures == [], f"round {round_no}: {failures!r}"
        # Not even one that a retry got past: both locked the same rows in the same order.
        assert await _deadlocks(db) == deadlocks, f"round {round_no}: PostgreSQL detected a deadlock"
        left = await _answers(db)
        assert not {a, b} & {row[0] for row in left}
        # Every answer the keeper had reads the same, whether its rows hold it now or reference a row that does.
        assert [row[2] for row in left if row[0] == keeper.job_id] == expected, f"round {round_no}"
        assert all(row[2] is not None for row in left), f"round {round_no}: an answer was lost"
