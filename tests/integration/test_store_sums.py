"""A row the store refuses does not sink the group commit, and job totals cannot overflow."""

from __future__ import annotations

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.states import RequestState as S
from runner.store import Outcome, Store, UsageCounts
from runner.store.tables import requests
from tests.integration.test_store import LEASE, db_row, done, make_job


@pytest.fixture
def db(store_db: str) -> str:
    """These run on each backend: a file for SQLite, a fresh database for PostgreSQL."""
    return store_db


@pytest.mark.anyio
async def test_a_row_the_store_refuses_fails_alone_and_the_rest_of_the_commit_lands(store: Store, db: str) -> None:
    await make_job(store, "job_a", 4)
    c = await store.claim("me", ["job_a"], 4, LEASE)
    outcomes = [
        done(c[0].id, UsageCounts(1, 0, 1, 0, 2)),
        # Past the edge's bounds, as a bug there would let through: too large for SQLite's INTEGER.
        done(c[1].id, UsageCounts(2**64, 0, 1, 0, 2**64 + 1)),
        # A string SQLite cannot encode (a lone surrogate).
        Outcome(c[2].id, S.FAILED, error_code="x", error_message="bad \ud800 text"),
        done(c[3].id, UsageCounts(3, 0, 3, 0, 6)),
    ]
    assert await store.apply("me", outcomes) == []
    assert (await db_row(store, c[0].id))["state"] == "completed"
    assert (await db_row(store, c[3].id))["total_tokens"] == 6
    for refused in (c[1].id, c[2].id):
        row = await db_row(store, refused)
        # Final, so no run claims and sends it again; the reason is kept.
        assert row["state"] == "failed" and row["error_code"] == "store_refused"
        assert row["error_message"].startswith("the job store refused this result (")
        assert row["lease_owner"] is None and row["total_tokens"] == 0
    assert await store.claim("me", ["job_a"], 10, LEASE) == []


@pytest.mark.anyio
async def test_job_totals_do_not_overflow(store: Store, db: str) -> None:
    await make_job(store, "job_a", 3)
    c = await store.claim("me", ["job_a"], 3, LEASE)
    await store.apply("me", [done(x.id, UsageCounts(1, 0, 1, 0, 2)) for x in c])

    # Rows as an older runner stored them: counts near 2^63 (their sum overflows SUM) and a negative one.
    async def old_rows(conn: AsyncConnection) -> None:
        big = {"input_tokens": 2**63 - 1, "total_tokens": 2**63 - 1}
        await conn.execute(update(requests).where(requests.c.id.in_([c[0].id, c[1].id])).values(**big))
        await conn.execute(update(requests).where(requests.c.id == c[2].id).values(output_tokens=-50))

    await store.write(old_rows)
    stats = await store.job_stats("job_a")
    assert stats.usage.input_tokens >= 2**64 - 2**12  # TOTAL's float: close, and no exception
    assert stats.usage.output_tokens == 0  # 1 + 1 - 50: a sum is never negative


@pytest.mark.anyio
async def test_a_store_without_a_file_refuses_a_row_the_same_way() -> None:
    s = await Store.open("sqlite+aiosqlite://")
    try:
        await make_job(s, "job_a", 2)
        [a, b] = await s.claim("me", ["job_a"], 2, LEASE)
        assert await s.apply("me", [done(a.id, UsageCounts(2**64, 0, 0, 0, 0)), done(b.id)]) == []
        stats = await s.job_stats("job_a")
        assert stats.counts["completed"] == 1 and stats.counts["failed"] == 1
    finally:
        await s.aclose()
