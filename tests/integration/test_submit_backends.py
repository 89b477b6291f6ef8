"""Submit's promises on each backend (PostgreSQL's rows go in by COPY, one per chunk): what is stored is what the
file says, and a file with a bad line anywhere, or a custom_id used twice, leaves nothing behind. Each test runs
with the file parsed in this process and by the forked child that parses big files, which on PostgreSQL sends
each chunk as COPY data it encoded itself (runner/store/postgres/copy.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

import runner.ingest
from runner.errors import InputError
from runner.ingest import SubmitOptions, submit_file
from runner.reuse import body_hash
from runner.store import Store
from runner.store.tables import jobs, requests
from tests.integration.test_ingest import AWKWARD, body, line, write

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True, params=["in-process", "child"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "child":
        monkeypatch.setattr(runner.ingest, "CHILD_MIN_BYTES", 0)
    return str(request.param)


@pytest.fixture
async def store(store_db: str) -> Any:
    s = await Store.open(store_db)
    try:
        yield s
    finally:
        await s.aclose()


async def stored(store: Store) -> list[tuple[int, str, str, str]]:
    async def go(conn: AsyncConnection) -> list[tuple[int, str, str, str]]:
        rows = await conn.execute(
            select(requests.c.line_no, requests.c.custom_id, requests.c.body, requests.c.state).order_by(requests.c.id)
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    return await store.read(go)


async def assert_nothing_stored(store: Store) -> None:
    async def go(conn: AsyncConnection) -> tuple[int, int]:
        n_jobs = (await conn.execute(select(func.count()).select_from(jobs))).scalar_one()
        n_requests = (await conn.execute(select(func.count()).select_from(requests))).scalar_one()
        return n_jobs, n_requests

    assert await store.read(go) == (0, 0)


async def test_stored_rows_are_the_files_lines(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner.ingest, "CHUNK", 3)
    path = write(tmp_path / "awkward.jsonl", [line(cid, b) for cid, b in AWKWARD])
    res = await submit_file(store, path, options=SubmitOptions(cache_keys=False))
    assert res.total == len(AWKWARD)
    rows = await stored(store)
    assert [(n, cid, json.loads(b), s) for n, cid, b, s in rows] == [
        (i, cid, b, "queued") for i, (cid, b) in enumerate(AWKWARD, start=1)
    ]

    # And every other column a submit writes, as the row-by-row insert writes it: a field of the wrong width in
    # PostgreSQL's binary COPY data would be refused, one in the wrong place stored wrong.
    async def rest(conn: AsyncConnection) -> list[tuple[Any, ...]]:
        c = requests.c
        cols = (c.line_no, c.conversation, c.body_hash, c.sched, c.attempts, c.next_attempt_at, c.rate_limited)
        tokens = (c.input_tokens, c.cached_tokens, c.output_tokens, c.reasoning_tokens, c.total_tokens)
        stamped = (c.created_at > 0, c.started_at, c.finished_at, c.reused_from, c.parent_id, c.lease_owner)
        return [tuple(r) for r in await conn.execute(select(*cols, *tokens, *stamped).order_by(c.id))]

    conversations = {3: "conv_1"}
    assert await store.read(rest) == [
        (i, conversations.get(i), None if i in conversations else body_hash(b), i, 0, 0.0, 0, *(0,) * 5, True)
        + (None,) * 5
        for i, (_, b) in enumerate(AWKWARD, start=1)
    ]


async def test_a_custom_id_used_again_chunks_later_is_named_and_nothing_is_stored(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner.ingest, "CHUNK", 3)
    ids = ["a", "b", "c", "d", "e", "f", "g", "a"]
    path = write(tmp_path / "dup.jsonl", [line(x, body(i)) for i, x in enumerate(ids, start=1)])
    with pytest.raises(InputError) as info:
        await submit_file(store, path)
    assert f"{path}:line 8: field custom_id: 'a' is already used on line 1" in str(info.value)
    assert info.value.bad_lines == 1
    await assert_nothing_stored(store)


async def test_a_bad_last_line_after_many_chunks_stores_nothing(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner.ingest, "CHUNK", 3)
    lines = [line(f"c-{i}", body(i)) for i in range(1, 11)]
    lines.append(json.dumps({"custom_id": "c-11", "method": "POST", "url": "/v1/responses", "body": {"input": "x"}}))
    path = write(tmp_path / "late.jsonl", lines)
    with pytest.raises(InputError) as info:
        await submit_file(store, path)
    [p] = info.value.problems
    assert (p.line, p.field) == (11, "body.model")
    await assert_nothing_stored(store)


async def test_a_reuse_submit_answers_every_line_and_names_a_repeated_custom_id(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On PostgreSQL a --reuse chunk goes through a temporary table (postgres/hot.sql reuse_chunk_table), from the
    # child as the COPY data it encoded; a chunk that cannot go in whole is inserted row by row, which names the line.
    monkeypatch.setattr(runner.ingest, "CHUNK", 3)
    path = write(tmp_path / "a.jsonl", [line(f"c-{i}", body(i)) for i in range(1, 9)])
    first = await submit_file(store, path)

    async def answer(conn: AsyncConnection) -> None:
        done = {"state": "completed", "http_status": 200, "response_body": '{"id": "resp_1", "output": []}'}
        await conn.execute(requests.update().where(requests.c.job_id == first.job_id).values(**done, finished_at=1.0))

    await store.write(answer)
    again = await submit_file(store, path, options=SubmitOptions(reuse=True))
    assert (again.total, again.reused) == (8, 8)
    rows = await stored(store)
    assert [r[:2] for r in rows[8:]] == [(i, f"c-{i}") for i in range(1, 9)]
    assert {r[3] for r in rows[8:]} == {"completed"}

    dup = write(tmp_path / "dup.jsonl", [line(f"c-{i}", body(i)) for i in (1, 2, 3, 4, 5, 1)])
    with pytest.raises(InputError) as info:
        await submit_file(store, dup, options=SubmitOptions(reuse=True))
    assert f"{dup}:line 6: field custom_id: 'c-1' is already used on line 1" in str(info.value)
    assert len(await stored(store)) == 16


# On PostgreSQL the child's chunks go in streamed, COPY_GROUP_CHUNKS to a COPY (ingest._copy_stream): with
# chunks of 3 lines and groups of 2 chunks, 20 lines are four groups, and the last one ends early.
async def test_streamed_groups_store_every_line_once_in_file_order(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner.ingest, "CHUNK", 3)
    monkeypatch.setattr(runner.ingest, "COPY_GROUP_CHUNKS", 2)
    path = write(tmp_path / "many.jsonl", [line(f"c-{i}", body(i)) for i in range(1, 21)])
    res = await submit_file(store, path, options=SubmitOptions(cache_keys=False))
    assert res.total == 20
    # In id order: claims and the conversation rule take a job's rows by id as file order.
    assert [r[:2] for r in await stored(store)] == [(i, f"c-{i}") for i in range(1, 21)]


async def test_a_custom_id_used_again_in_a_later_streamed_group_is_named_and_nothing_is_stored(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner.ingest, "CHUNK", 3)
    monkeypatch.setattr(runner.ingest, "COPY_GROUP_CHUNKS", 2)
    ids = [f"c-{i}" for i in range(1, 17)] + ["c-2", "c-18"]  # line 17 repeats line 2, two groups later
    path = write(tmp_path / "dup.jsonl", [line(x, body(i)) for i, x in enumerate(ids, start=1)])
    with pytest.raises(InputError) as info:
        await submit_file(store, path)
    assert f"{path}:line 17: field custom_id: 'c-2' is already used on line 2" in str(info.value)
    assert info.value.bad_lines == 1
    await assert_nothing_stored(store)
