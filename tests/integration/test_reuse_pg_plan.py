"""PostgreSQL `submit --reuse` stays linear in the lines it reuses (issue 15).

A count of each chunk's reused rows after the insert, a statement asyncpg prepares, ran from its sixth chunk on
with PostgreSQL's generic plan: with `job_id = $1` unknown and one job in the statistics (taken before the submit,
no reused rows yet), that plan walked ix_requests_reused_from, which holds every reused row of the store, this
submit's so far among them. Quadratic: 1,000,000 reused lines cost the server 60.8 CPU-s against 7.7 for a plain
submit. The insert now counts its own rows (postgres/hot.sql insert_answered); here the server's index
statistics say whether a reuse submit walks that index again. (SQLite counts by (job_id, line_no).)
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from runner import app
from runner.store import Store
from tests.integration.test_reuse_store import jobfile

N = 14_000  # 7 chunks (ingest.CHUNK): from the 6th on, asyncpg's prepared count ran with a generic plan
ANSWERED = (
    "UPDATE requests SET state = 'completed', http_status = 200, request_id = 'req_1',"
    """ response_body = '{"id": "resp_1", "output": []}', finished_at = 1.0"""
)

_SCANS = text(
    "SELECT indexrelname, idx_scan FROM pg_stat_user_indexes"
    " WHERE indexrelname IN ('ix_requests_reused_from', 'ix_requests_body_hash_state')"
)


async def _scans(db: str) -> dict[str, int]:
    async def go(conn: AsyncConnection) -> dict[str, int]:
        return {name: int(n) for name, n in await conn.execute(_SCANS)}

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
        if after["ix_requests_body_hash_state"] > before["ix_requests_body_hash_state"]:
            break
        await anyio.sleep(0.05)
    else:
        pytest.fail("the reuse lookups' index scans never reached the server's statistics")
    assert after["ix_requests_reused_from"] == before["ix_requests_reused_from"]
