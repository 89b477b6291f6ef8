"""PostgreSQL `submit --reuse` stays linear in the lines it reuses (issue 15).

A count of each chunk's reused rows after the insert, a statement asyncpg prepares, ran from its sixth chunk on
with PostgreSQL's generic plan: with `job_id = $1` unknown and one job in the statistics (taken before the submit,
no reused rows yet), that plan walked ix_requests_reused_from, which holds every reused row of the store, this
submit's so far among them. Quadratic: 1,000,000 reused lines cost the server 60.8 CPU-s against 7.7 for a plain
submit. The insert now counts its own rows (postgres/hot.sql insert_answered); here the server's index
statistics say whether a reuse submit walks that index again. (SQLite counts by (job_id, line_no).)

And each lookup of an original answer is one entry of ix_requests_body_hash_id, which carries what the lookup
reads (migration 0013): where the table's pages are known all-visible (autovacuum; here VACUUM), a lookup reads
no row of the table and sorts nothing, where through (body_hash, state) every candidate was read and sorted (a
gigabyte of answers at 1,000,000 lines).
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from runner import app
from runner.store import Store
from runner.store.sqlfile import blocks
from tests.integration.test_reuse_store import jobfile

N = 14_000  # 7 chunks (ingest.CHUNK): from the 6th on, asyncpg's prepared count ran with a generic plan
ANSWERED = (
    "UPDATE requests SET state = 'completed', http_status = 200, request_id = 'req_1',"
    """ response_body = '{"id": "resp_1", "output": []}', finished_at = 1.0"""
)

HASH = "ix_requests_body_hash_id"
_SCANS = text(
    "SELECT indexrelname, idx_scan, idx_tup_fetch FROM pg_stat_user_indexes"
    f" WHERE indexrelname IN ('ix_requests_reused_from', '{HASH}')"
)


async def _scans(db: str, what: int = 1) -> dict[str, int]:
    """Index name -> its scans so far (`what` 2: the table rows fetched through it)."""

    async def go(conn: AsyncConnection) -> dict[str, int]:
        return {r[0]: int(r[what]) for r in await conn.execute(_SCANS)}

    async with await Store.open(db, "existing") as store:
        return await store.read(go)


@pytest.mark.anyio
async def test_a_reuse_submit_on_postgresql_never_walks_the_index_of_reused_rows(
    pg_store_url: str, tmp_path: Path
) -> None:
    db = pg_store_url
    src = jobfile(tmp_path / "a.jsonl", N)
    await app.submit(src, db=db)

    async def answer(conn: AsyncConnection) -> None:
        # Every line answered as a run would leave it (the bench does the same), then the statistics autovacuum
        # would take: a store of answers and no reused row yet.
        await conn.execute(text(ANSWERED))
        await conn.execute(text("ANALYZE requests"))

    async with await Store.open(db, "existing") as store:
        await store.write(answer)
    before = await _scans(db)

    again = await app.submit(src, db=db, new=True, reuse=True)
    assert again.reused == N

    # A backend's index statistics reach the server when it goes idle or exits, all at once: once the lookups'
    # scans of the hash index show, whatever else that submit scanned shows too.
    for _ in range(200):
        after = await _scans(db)
        if after[HASH] > before[HASH]:
            break
        await anyio.sleep(0.05)
    else:
        pytest.fail("the reuse lookups' index scans never reached the server's statistics")
    assert after["ix_requests_reused_from"] == before["ix_requests_reused_from"]


@pytest.mark.anyio
async def test_a_reuse_lookup_on_postgresql_is_one_walk_of_one_index(pg_store_url: str, tmp_path: Path) -> None:
    import asyncpg

    await app.submit(jobfile(tmp_path / "a.jsonl", 3000), db=pg_store_url)
    sql = blocks("postgres", "hot.sql")
    conn = await asyncpg.connect(pg_store_url)
    try:
        await conn.execute(ANSWERED)
        await conn.execute("VACUUM ANALYZE requests")  # what autovacuum does after a run
        job, h = await conn.fetchrow("SELECT job_id, body_hash FROM requests LIMIT 1")
        await conn.execute(
            "INSERT INTO jobs (id, name, source, fingerprint, background, total, phase, created_at)"
            " VALUES ('job_b', 'b', 'b', 'b', false, 0, 'staging', 0)"
        )
        async with conn.transaction():
            await conn.execute(sql["reuse_chunk_table"])
            await conn.execute(
                "INSERT INTO runner_reuse_rows (line_no, custom_id, body, body_hash, sched)"
                " VALUES (1, 'c-1', '{}', $1, 1)",
                h,
            )
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")  # as asyncpg's cache ends up
            explain = "EXPLAIN (ANALYZE) " + sql["insert_answered"]
            plan = "\n".join(r[0] for r in await conn.fetch(explain, "job_b", 1.0, None))
            raise _RolledBack
    except _RolledBack:
        pass
    finally:
        await conn.close()
    assert job != "job_b"
    # The newest original answer is the last entry of its hash, read from the index alone: no sort of the
    # candidates (the only sort is of the chunk's own lines, into line order), no row of the table read.
    assert "Index Only Scan Backward using ix_requests_body_hash_id" in plan, plan
    sorts = [line for line in plan.splitlines() if "Sort Key" in line]
    assert all("runner_reuse_rows.line_no" in line for line in sorts), plan
    assert "Heap Fetches: 0" in plan, plan


class _RolledBack(Exception):
    """Leaves the EXPLAINed insert's transaction, rolled back."""
