"""Reused lines reference their source's answer instead of copying it (runner/store/answer.py), on both backends:
every reader gives the answer, and deleting the source's job leaves it in place, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from runner import app
from runner.config import Settings
from runner.errors import InputError
from runner.export import FORMATS
from runner.store import Store
from runner.store.answer import keep_answers
from runner.store.reuse import reused_line_numbers, reused_rows
from runner.store.tables import jobs, requests
from tests.integration.test_reuse_store import FakeApi, jobfile

N = 6


async def _exports(job_id: str, db: str, tmp: Path, tag: str) -> dict[str, bytes]:
    out = {}
    for fmt in FORMATS:
        path = tmp / f"{tag}.{fmt}"
        await app.export(job_id, str(path), fmt=fmt, db=db)
        out[fmt] = path.read_bytes()
    return out


def _line(custom_id: str, body: dict[str, Any]) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": body}) + "\n"


def _settings(db: str) -> Settings:
    return Settings(db=db, base_url="http://api.test/v1", api_key="k")


async def _query(db: str, stmt: Any) -> list[tuple[Any, ...]]:
    async def go(conn: AsyncConnection) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await conn.execute(stmt)]

    async with await Store.open(db, "existing") as store:
        return await store.read(go)


async def _rows(db: str, job_id: str) -> list[tuple[Any, ...]]:
    """(line, response_body, reused_from) of each row of a job, as stored."""
    stmt = select(requests.c.line_no, requests.c.response_body, requests.c.reused_from).where(
        requests.c.job_id == job_id
    )
    return await _query(db, stmt.order_by(requests.c.line_no))


@pytest.mark.anyio
async def test_a_reused_line_stores_no_copy_and_keeps_its_answer_when_the_source_job_is_deleted(
    store_db: str, tmp_path: Path
) -> None:
    api = FakeApi()
    src = jobfile(tmp_path / "a.jsonl", N)
    first = (await app.submit(src, db=store_db)).job_id
    await app.run([first], _settings(store_db), transport=api.transport())
    second = await app.submit(src, db=store_db, new=True, reuse=True)
    assert second.reused == N and api.creates == N
    job = second.job_id

    # The reused rows hold a reference, not a copy.
    originals = await _rows(store_db, first)
    reused = await _rows(store_db, job)
    assert [body for _, body, _ in reused] == [None] * N
    ids = await _query(store_db, select(requests.c.id).where(requests.c.job_id == first).order_by(requests.c.line_no))
    assert [ref for _, _, ref in reused] == [i for (i,) in ids]

    # The flat exports' flags, read a slice of lines at a time (here 3 slices of 2 lines).
    async with await Store.open(store_db, "existing") as store:
        assert await reused_line_numbers(store, job, chunk=2) == bytearray([0] + [1] * N)
        assert await reused_line_numbers(store, first, chunk=2) == bytearray()

    # Every reader follows it: the exports carry the answers the first job paid for, show and results too.
    paid = [json.loads(body) for _, body, _ in originals]
    before = await _exports(job, store_db, tmp_path, "before")
    batch = [json.loads(x) for x in before["batch"].splitlines()]
    assert [x["response"]["body"] for x in batch] == paid
    flat = [json.loads(x) for x in before["jsonl-flat"].splitlines()]
    assert [(x["output_text"], x["reused"]) for x in flat] == [(p["output_text"], True) for p in paid]
    assert [r.response async for r in app.results(job, db=store_db)] == paid
    cid = batch[2]["custom_id"]
    shown = await app.show(job, cid, db=store_db)
    assert json.loads(shown.response_body or "") == paid[2] and shown.reused_source == (first, cid)

    # Delete the source job: each answer moves into the row that references it first, so every export is
    # byte-identical.
    deleted = await app.delete([first], db=store_db)
    assert deleted.deleted
    after = await _exports(job, store_db, tmp_path, "after")
    assert after == before
    shown = await app.show(job, cid, db=store_db)
    assert json.loads(shown.response_body or "") == paid[2] and shown.reused and shown.reused_source is None
    assert [json.loads(body) for _, body, _ in await _rows(store_db, job)] == paid
    # Those rows are the originals now: the same file is answered from them, and what the answers were
    # paid for is carried over again.
    third = await app.submit(src, db=store_db, new=True, reuse=True)
    assert third.reused == N
    held = await _rows(store_db, job)
    assert [ref for _, _, ref in await _rows(store_db, third.job_id)] == [
        i
        for (i,) in await _query(
            store_db, select(requests.c.id).where(requests.c.job_id == job).order_by(requests.c.line_no)
        )
    ]
    assert [ref for _, _, ref in held] == [None] * N
    async with await Store.open(store_db, "existing") as store:
        assert [r.usage for r in await reused_rows(store, third.job_id)] == [
            r.usage for r in await reused_rows(store, job)
        ]


@pytest.mark.anyio
async def test_a_row_reused_before_answers_were_referenced_keeps_reading_its_own_copy(
    store_db: str, tmp_path: Path
) -> None:
    api = FakeApi()
    src = jobfile(tmp_path / "a.jsonl", 2)
    first = (await app.submit(src, db=store_db)).job_id
    await app.run([first], _settings(store_db), transport=api.transport())
    job = (await app.submit(src, db=store_db, new=True, reuse=True)).job_id
    # As the runner once wrote reused rows: a copy of the body (here a marked one, to see which is read).
    copy = {"id": "resp_copy", "object": "response", "status": "completed", "output_text": "the old copy"}
    async with await Store.open(store_db, "existing") as store:

        async def legacy(conn: Any) -> None:
            await conn.execute(
                update(requests)
                .where(requests.c.job_id == job, requests.c.line_no == 1)
                .values(response_body=json.dumps(copy))
            )

        await store.write(legacy)
    before = await _exports(job, store_db, tmp_path, "before")
    assert json.loads(before["batch"].splitlines()[0])["response"]["body"] == copy
    await app.delete([first], db=store_db)
    assert await _exports(job, store_db, tmp_path, "after") == before


@pytest.mark.anyio
async def test_a_line_continuing_a_reused_parent_continues_the_source_response(store_db: str, tmp_path: Path) -> None:
    api = FakeApi()
    question = {"model": "gpt-4.1-mini", "input": "the parent question"}
    first_file = tmp_path / "a.jsonl"
    first_file.write_text(_line("p", question))
    first = (await app.submit(first_file, db=store_db)).job_id
    await app.run([first], _settings(store_db), transport=api.transport())

    chained = tmp_path / "b.jsonl"
    child = {"model": "gpt-4.1-mini", "input": "and then?", "previous_response_id": "@p"}
    chained.write_text(_line("p", question) + _line("c", child))
    second = await app.submit(chained, db=store_db, reuse=True)
    assert second.reused == 1
    seen: list[dict[str, Any]] = []

    async def spy(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return await api(request)

    await app.run([second.job_id], _settings(store_db), transport=httpx.MockTransport(spy))
    # Only the child was sent, continuing the response the first job was answered with (FakeApi's first).
    assert [b.get("previous_response_id") for b in seen] == ["resp_1"]


@pytest.mark.anyio
async def test_a_reuse_submit_during_the_delete_of_its_source_job_references_nothing_deleted(
    store_db: str, tmp_path: Path
) -> None:
    """Deleting a job copies its referenced answers, then deletes its rows (store/jobs.py delete_jobs). A submit
    that reuses from it in between must not reference what is then deleted: it waits for the delete to commit,
    and then finds nothing to reuse (PostgreSQL: a lock on the job's row; SQLite: one writer at a time)."""
    api = FakeApi()
    src = jobfile(tmp_path / "a.jsonl", 3)
    first = (await app.submit(src, db=store_db)).job_id
    await app.run([first], _settings(store_db), transport=api.transport())
    async with await Store.open(store_db, "existing") as store, store.engine.begin() as conn:
        # delete_jobs' own steps, held open half way: the job row locked and the answers already handed on.
        await conn.execute(select(jobs.c.id).where(jobs.c.id == first).with_for_update())
        await keep_answers(conn, [first])
        async with anyio.create_task_group() as tg:
            got: list[int] = []

            async def submit() -> None:
                got.append((await app.submit(src, db=store_db, new=True, reuse=True)).reused)

            tg.start_soon(submit)
            # No event says "the submit is as far as it can get": give it the time to get there.
            await anyio.sleep(0.5)
            assert got == []
            await conn.execute(delete(requests).where(requests.c.job_id == first))
            await conn.execute(delete(jobs).where(jobs.c.id == first))
            await conn.commit()
    assert got == [0]


@pytest.mark.anyio
async def test_a_repeated_custom_id_under_reuse_is_named_and_nothing_is_queued(store_db: str, tmp_path: Path) -> None:
    api = FakeApi()
    question = {"model": "gpt-4.1-mini", "input": "asked twice"}
    first = tmp_path / "a.jsonl"
    first.write_text(_line("a", question))
    job = (await app.submit(first, db=store_db)).job_id
    await app.run([job], _settings(store_db), transport=api.transport())
    twice = tmp_path / "b.jsonl"
    twice.write_text(_line("a", question) + _line("a", {**question, "input": "another"}))
    with pytest.raises(InputError) as e:
        await app.submit(twice, db=store_db, reuse=True)
    assert "line 2: field custom_id: 'a' is already used on line 1" in str(e.value)
    assert [j.job.id for j in await app.jobs(db=store_db)] == [job]
