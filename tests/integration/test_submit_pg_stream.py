"""PostgreSQL's submit streams the parsing child's chunks, several to a COPY (runner/ingest.py `_copy_stream`): a
group that fails on a conflict has put nothing in, and its chunks go in again one by one, each once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest

import runner.ingest
from runner.ingest import SubmitOptions, submit_file
from runner.store import Store
from runner.store.postgres import PostgresBackend
from tests.integration.test_ingest import body, line, write
from tests.integration.test_submit_backends import stored

pytestmark = pytest.mark.anyio


async def test_a_streamed_group_that_meets_a_conflict_goes_in_again_chunk_by_chunk(
    pg_store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner.ingest, "CHILD_MIN_BYTES", 0)
    monkeypatch.setattr(runner.ingest, "CHUNK", 3)
    monkeypatch.setattr(runner.ingest, "COPY_GROUP_CHUNKS", 3)
    real = PostgresBackend.insert_copy_stream
    tries: list[int] = []

    async def deadlocked_once(self: PostgresBackend, job_id: str, parts: Any) -> None:
        if tries:
            tries.append(0)
            return await real(self, job_id, parts)

        async def two_then_conflict() -> Any:
            taken = 0
            async for part in parts:
                taken += 1
                yield part
                if taken == 2:  # two chunks sent, the third read: then the server gives up the transaction
                    async for _ in parts:
                        break
                    raise asyncpg.exceptions.DeadlockDetectedError("deadlock detected")

        tries.append(0)
        await real(self, job_id, two_then_conflict())

    monkeypatch.setattr(PostgresBackend, "insert_copy_stream", deadlocked_once)
    path = write(tmp_path / "many.jsonl", [line(f"c-{i}", body(i)) for i in range(1, 21)])
    async with await Store.open(pg_store_url) as store:
        res = await submit_file(store, path, options=SubmitOptions(cache_keys=False))
        assert res.total == 20
        assert len(tries) >= 2  # the failed group, then the later groups streamed again
        assert [r[:2] for r in await stored(store)] == [(i, f"c-{i}") for i in range(1, 21)]
