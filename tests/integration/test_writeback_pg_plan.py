"""A PostgreSQL group commit reads the rows it commits, one primary-key probe each, whatever the statistics say.

asyncpg prepares the write-back statements, and from the sixth execution PostgreSQL may run them with a generic
plan. With the statistics autovacuum took before the run (every row queued, none in progress), that plan went
in through the guard's partial index (`state = 'in_progress'`) or the lease owner's, expecting one row, and
rescanned the unnested arrays once per in-progress row: at concurrency 1,000 one commit compared 1.4 million
pairs and took 4.8 s (postgres/hot.sql, set_response_ids). Here the runner holds 2,000 leases and commits
260 of them, through each statement of the careful path and through the one-statement `apply` (with and without
response ids: a background run commits both at once).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from runner import app
from runner.store import Store
from runner.store.sqlfile import blocks
from tests.integration.test_reuse_store import jobfile

pytestmark = [pytest.mark.pg, pytest.mark.anyio]

OWNER = "host-a:1:abc"
LINES, HELD, COMMITTED = 20_000, 2000, 260


class _RolledBack(Exception):
    """Leaves an EXPLAINed statement's transaction, rolled back."""


def _arguments(ids: list[int]) -> dict[str, list[Any]]:
    n, now = len(ids), time.time()
    body = json.dumps({"id": "resp_1", "output": []})
    reply = [[200] * n, ["req_1"] * n, [None] * n, [None] * n, [0] * n, [now] * n]
    requeue = [[now] * n, [0] * n, [False] * n]
    usage, no_ids = [[1] * n] * 5, [[]] * 4
    return {
        "set_response_ids": [ids, [f"resp_{i}" for i in ids], ["req_1"] * n, [now] * n, OWNER],
        "record_attempts": [ids, ["completed"] * n, [now] * n, [200] * n, ["req_1"] * n, [None] * n, [None] * n, OWNER],
        "finish": [ids, ["completed"] * n, [body] * n, *usage, *reply, OWNER],
        "requeue": [ids, [now] * n, [0] * n, [False] * n, *reply, OWNER],
        # half of them final, half back to the queue, each with its attempts row
        "apply": [ids, ["completed", "queued"] * (n // 2), [body] * n, *usage, *reply, *requeue, OWNER, *no_ids],
    }


def _apply_with_response_ids(ids: list[int]) -> list[Any]:
    """`apply` as a background run's commit has it: outcomes for half the rows, response ids for the other half."""
    done, created = ids[: len(ids) // 2], ids[len(ids) // 2 :]
    args = _arguments(done)["apply"][:-4]
    return [*args, created, [f"resp_{i}" for i in created], ["req_1"] * len(created), [time.time()] * len(created)]


async def test_each_write_back_statement_probes_the_primary_key_once_per_row(pg_store_url: str, tmp_path: Path) -> None:
    import asyncpg

    job = await app.submit(jobfile(tmp_path / "a.jsonl", LINES), db=pg_store_url)
    conn = await asyncpg.connect(pg_store_url)
    try:
        await conn.execute("VACUUM ANALYZE requests")  # statistics of a store with nothing in progress
        async with await Store.open(pg_store_url, "existing") as store:
            held = await store.claim(OWNER, [job.job_id], HELD, 300.0)
        assert len(held) == HELD
        ids = sorted(c.id for c in held)[HELD // 2 : HELD // 2 + COMMITTED]
        sql = blocks("postgres", "hot.sql")
        plans: dict[str, str] = {}
        statements = {name: (name, args) for name, args in _arguments(ids).items()}
        statements["apply with response ids"] = ("apply", _apply_with_response_ids(ids))
        for name, (statement, args) in statements.items():
            try:
                async with conn.transaction():
                    await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")  # as asyncpg's cache ends up
                    rows = await conn.fetch("EXPLAIN (ANALYZE, COSTS OFF) " + sql[statement], *args)
                    plans[name] = "\n".join(r[0] for r in rows)
                    raise _RolledBack
            except _RolledBack:
                pass
    finally:
        await conn.close()
    for name, plan in plans.items():
        # The arrays are read once, the table only through its primary key, and nothing is compared pair by pair.
        reads = re.findall(r"(Function|CTE) Scan on \w+ .*loops=(\d+)\)", plan)
        assert reads and all(loops == "1" for _, loops in reads), (name, plan)
        probes = re.findall(r"Scan using (\w+) on requests .*rows=(\d+) loops=(\d+)\)", plan)
        # A response id is looked up once per row too, to write only an id no other request holds: none does.
        held = [(rows, loops) for index, rows, loops in probes if index == "ix_requests_response_id"]
        looked_up = {"set_response_ids": COMMITTED, "apply with response ids": COMMITTED - COMMITTED // 2}.get(name)
        assert held == ([] if looked_up is None else [("0", str(looked_up))]), (name, plan)
        probes = [p for p in probes if p[0] != "ix_requests_response_id"]
        assert probes and all(index == "pk_requests" and rows == "1" for index, rows, _ in probes), (name, plan)
        assert sum(int(loops) for _, _, loops in probes) >= COMMITTED, (name, plan)
        assert "Seq Scan on requests" not in plan and "Rows Removed by Join Filter" not in plan, (name, plan)
