"""Submits of one file at once, on each backend: publishing looks again for a job of the same fingerprint, in the
transaction that publishes (PostgreSQL: under the fingerprint's advisory lock), so exactly one job is published and
every other staged job gives way to it. `new` publishes each. The CLI's side is tests/e2e/test_submit_race.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.ingest import SubmitOptions, submit_files
from runner.store import NewRequest, Store
from runner.store.tables import jobs, requests
from tests.integration.test_ingest import good_file

pytestmark = pytest.mark.anyio

AT_ONCE = 4
LINES = 5
ROUNDS = 5  # without its lock, PostgreSQL published more than one job in a single round in 4 runs of 5


@pytest.fixture
async def stores(store_db: str) -> AsyncIterator[list[Store]]:
    """AT_ONCE stores on one database, each with its own connections, as AT_ONCE submitting processes have."""
    opened = [await Store.open(store_db) for _ in range(AT_ONCE)]
    try:
        yield opened
    finally:
        for s in opened:
            await s.aclose()


async def stage(store: Store, job_id: str, fingerprint: str) -> None:
    await store.begin_job(
        job_id=job_id, name="in", source="in.jsonl", fingerprint=fingerprint, background=False, staged_by="test"
    )
    await store.add_requests(job_id, [NewRequest(i, f"c-{i}", "{}") for i in range(1, LINES + 1)])


async def counts(store: Store) -> tuple[dict[str, int], int]:
    """Jobs by phase, and requests."""

    async def go(conn: AsyncConnection) -> tuple[dict[str, int], int]:
        by_phase = await conn.execute(select(jobs.c.phase, func.count()).group_by(jobs.c.phase))
        n = (await conn.execute(select(func.count()).select_from(requests))).scalar_one()
        return {phase: int(k) for phase, k in by_phase}, int(n)

    return await store.read(go)


async def publish_at_once(stores: list[Store], n: int, *, new: bool) -> list[list[tuple[str, int]]]:
    """Each store publishes its own staged job of fingerprint `n`, all at once (their statements interleave)."""
    for i, s in enumerate(stores):
        await stage(s, f"job_{n}_{i}", f"fp-{n}")
    results: list[list[tuple[str, int]]] = [[] for _ in stores]

    async def publish(i: int) -> None:
        results[i] = await stores[i].publish_jobs([(f"job_{n}_{i}", LINES)], new=new)

    async with anyio.create_task_group() as tg:
        for i in range(len(stores)):
            tg.start_soon(publish, i)
    return results


async def test_publishes_of_one_fingerprint_at_once_publish_one_job(stores: list[Store]) -> None:
    published = []
    for n in range(ROUNDS):
        results = await publish_at_once(stores, n, new=False)
        [[(job_id, total)]] = {tuple(r) for r in results}
        assert total == LINES
        published.append(job_id)
    assert [j.id for j in await stores[0].list_jobs()] == published
    # The others' staged jobs are gone, rows and all.
    assert await counts(stores[0]) == ({"ready": ROUNDS}, ROUNDS * LINES)


async def test_new_publishes_every_staged_job(stores: list[Store]) -> None:
    results = await publish_at_once(stores, 0, new=True)
    assert results == [[(f"job_0_{i}", LINES)] for i in range(AT_ONCE)]
    assert await counts(stores[0]) == ({"ready": AT_ONCE}, AT_ONCE * LINES)


async def test_a_submit_that_looked_before_another_published_gives_back_that_job(
    stores: list[Store], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = good_file(tmp_path / "a.jsonl", 3)
    b = good_file(tmp_path / "b.jsonl", 2)
    first, other = stores[0], stores[1]
    [published] = await submit_files(first, [a])

    async def looked_too_early(fingerprint: str) -> None:
        return None  # as when `first` had not published yet

    monkeypatch.setattr(other, "find_job_by_fingerprint", looked_too_early)
    # `a` twice (the second is the first's twin in this call) and a new file: all of them published in one go.
    results = await submit_files(other, [a, b, a])
    assert [(r.job_id, r.total, r.existing) for r in results] == [
        (published.job_id, 3, True),
        (results[1].job_id, 2, False),
        (published.job_id, 3, True),
    ]
    assert [j.id for j in await first.list_jobs()] == [published.job_id, results[1].job_id]
    assert await counts(first) == ({"ready": 2}, 5)
    again = await submit_files(other, [a], options=SubmitOptions(), new=True)  # --new still makes one
    assert again[0].job_id not in {published.job_id, results[1].job_id} and not again[0].existing
