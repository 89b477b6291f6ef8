"""Lines that build on each other, run in-process against the mock server (real HTTP on 127.0.0.1) on both
store backends: every child is sent after its parent completed, with the parent's real response id (the mock's
ledger says what it received), and a parent that fails takes its subtree down with `parent_failed`."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from runner import app
from runner.config import Settings
from runner.states import RequestState
from runner.store import NewRequest, Outcome, Store
from runner.store.chains import link, parents_of, resolve_parents
from runner_mock.app import serve
from runner_mock.knobs import Config

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def mock(**knobs: Any) -> AsyncIterator[str]:
    async with serve(Config(**knobs)) as base:
        yield base


async def mock_call(base: str, path: str, knobs: dict[str, Any] | None = None) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        root = base.removesuffix("/v1")
        r = await (http.get(root + path) if knobs is None else http.post(root + path, json=knobs))
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data


def chain_file(path: Path, convs: int, turns: int, *, fail: frozenset[str] = frozenset()) -> Path:
    """`convs` conversations of `turns` turns (`c<i>-t<j>` continues `c<i>-t<j-1>`), shuffled: children come
    before their parents as often as after. Lines in `fail` are answered 400 by the mock, every time."""
    lines = []
    for c in range(convs):
        for t in range(1, turns + 1):
            cid = f"c{c}-t{t}"
            body: dict[str, Any] = {"model": "gpt-test", "input": f"conversation {c}, turn {t}"}
            if t > 1:
                body["previous_response_id"] = f"@c{c}-t{t - 1}"
            if cid in fail:
                body["metadata"] = {"mock_error": "invalid_prompt"}
            lines.append({"custom_id": cid, "method": "POST", "url": "/v1/responses", "body": body})
    random.Random(16).shuffle(lines)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


async def rows_of(job: str, db: str) -> dict[str, app.ResultRow]:
    return {r.custom_id: r async for r in app.results(job, db=db)}


def parent_of(cid: str) -> str:
    c, t = cid.split("-t")
    return f"{c}-t{int(t) - 1}"


def assert_children_continued_their_parents(rows: dict[str, app.ResultRow], stats: dict[str, Any]) -> None:
    """Each completed child's create (found in the mock's ledger by its own response id) continued its parent's
    final response id, and came once that response was completed; no other create continued anything."""
    rid = {cid: r.response["id"] for cid, r in rows.items() if r.status == "completed" and r.response}
    ledger = {e["id"]: e for e in stats["continued"]}
    children = [cid for cid in rid if not cid.endswith("-t1")]
    assert children
    for cid in children:
        entry = ledger[rid[cid]]
        assert entry["previous_response_id"] == rid[parent_of(cid)], cid
        assert entry["previous_status"] == "completed", cid
    assert len(ledger) == len(children)


async def test_fifty_three_turn_conversations_at_concurrency_32(tmp_path: Path, store_db: str) -> None:
    src = chain_file(tmp_path / "chat.jsonl", 50, 3, fail=frozenset({"c7-t1", "c11-t2"}))
    job = (await app.submit(src, db=store_db)).job_id
    async with mock(latency=0.02, latency_jitter=0.9, seed=3) as base:
        out = await app.run([job], Settings(db=store_db, base_url=base, api_key="k", concurrency=32))
        stats = await mock_call(base, "/_mock/stats")
    counts = out.stats[0].counts
    # c7: t1 fails, t2 and t3 below it; c11: t2 fails, t3 below it.
    assert (counts["completed"], counts["failed"], counts["queued"]) == (150 - 5, 5, 0)
    assert out.result.snapshot.failed == 5  # the run's own figures count the lines failed unsent too
    rows = await rows_of(job, store_db)
    assert_children_continued_their_parents(rows, stats)
    assert {cid: r.error for cid, r in rows.items() if r.status == "failed"} == {
        "c7-t1": "invalid_prompt: Scripted failure (invalid_prompt).",
        "c7-t2": "parent_failed: the line it continues, 'c7-t1', ended failed (invalid_prompt)",
        "c7-t3": "parent_failed: the line it continues, 'c7-t2', ended failed (parent_failed)",
        "c11-t2": "invalid_prompt: Scripted failure (invalid_prompt).",
        "c11-t3": "parent_failed: the line it continues, 'c11-t2', ended failed (invalid_prompt)",
    }
    assert stats["creates"] == 145  # nothing below a failed parent was sent
    # The store keeps the line as written; what went out had the parent's id (the ledger above).
    assert rows["c3-t2"].request["previous_response_id"] == "@c3-t1"


async def test_background_children_wait_for_their_parent_to_complete(tmp_path: Path, store_db: str) -> None:
    src = chain_file(tmp_path / "bg.jsonl", 4, 2)  # each turn waits about a second for its first poll
    job = (await app.submit(src, db=store_db, background=True)).job_id
    async with mock(bg_delay=0.1) as base:
        out = await app.run([job], Settings(db=store_db, base_url=base, api_key="k", concurrency=8))
        stats = await mock_call(base, "/_mock/stats")
    assert out.stats[0].counts["completed"] == 8
    assert_children_continued_their_parents(await rows_of(job, store_db), stats)


async def test_retry_of_a_failed_parent_runs_its_subtree_again(tmp_path: Path, store_db: str) -> None:
    src = chain_file(tmp_path / "r.jsonl", 2, 3)
    job = (await app.submit(src, db=store_db)).job_id
    async with mock(p5xx=1.0) as base:
        s = Settings(db=store_db, base_url=base, api_key="k", concurrency=4, max_attempts=1)
        out = await app.run([job], s)
        assert (out.stats[0].counts["failed"], (await mock_call(base, "/_mock/stats"))["creates"]) == (6, 0)
        await mock_call(base, "/_mock/config", {"p5xx": 0.0})
        assert await app.retry(job, db=store_db) == 6  # the parents and every line below them
        out = await app.run([job], s)
        stats = await mock_call(base, "/_mock/stats")
    assert out.stats[0].counts["completed"] == 6
    assert_children_continued_their_parents(await rows_of(job, store_db), stats)


async def test_a_mock_create_continuing_an_unknown_id_is_refused(tmp_path: Path) -> None:
    # The mock answers as the real API does, so a wrong substitution could not pass unnoticed.
    async with mock() as base, httpx.AsyncClient() as http:
        body = {"model": "gpt-test", "input": "x", "previous_response_id": "@c1-t1"}
        r = await http.post(base + "/responses", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "previous_response_not_found"
    assert r.json()["error"]["param"] == "previous_response_id"


async def test_the_readme_example_file_runs_each_turn_after_the_one_it_continues(store_db: str) -> None:
    # README "Lines that build on each other": jobs/chains.jsonl, last turns first in the file.
    src = Path(__file__).resolve().parents[2] / "jobs" / "chains.jsonl"
    job = (await app.submit(src, db=store_db)).job_id
    async with mock() as base:
        out = await app.run([job], Settings(db=store_db, base_url=base, api_key="k"))
        stats = await mock_call(base, "/_mock/stats")
    assert out.stats[0].counts["completed"] == 9 and out.failed == 0
    rows = await rows_of(job, store_db)
    assert rows["trip-2"].request["previous_response_id"] == "@trip-1"
    sent = rows["trip-2"].response
    assert sent is not None and rows["trip-1"].response is not None
    assert sent["previous_response_id"] == rows["trip-1"].response["id"]  # what the export shows
    ledger = {e["id"]: e for e in stats["continued"]}
    for cid, row in rows.items():
        turn = int(cid.rsplit("-", 1)[1])
        if turn > 1:
            assert row.response is not None
            parent = rows[f"{cid.rsplit('-', 1)[0]}-{turn - 1}"].response
            assert parent is not None
            assert ledger[row.response["id"]]["previous_response_id"] == parent["id"]
    assert len(ledger) == 6


async def test_estimate_counts_chained_lines_of_a_file_and_of_a_job(store_db: str) -> None:
    src = Path(__file__).resolve().parents[2] / "jobs" / "chains.jsonl"
    assert (await app.estimate(str(src), db=store_db, reuse=True)).lines == 9  # nothing answered yet: none reused
    job = (await app.submit(src, db=store_db)).job_id
    assert (await app.estimate(job, db=store_db)).lines == 9


async def test_an_incomplete_parent_fails_its_children_unsent(tmp_path: Path, store_db: str) -> None:
    src = tmp_path / "cut.jsonl"
    long = "word " * 200  # the mock echoes it: far more than 16 output tokens, so the answer is cut short
    src.write_text(
        json.dumps(
            {
                "custom_id": "p",
                "body": {"model": "gpt-test", "input": long, "max_output_tokens": 16},
                "method": "POST",
                "url": "/v1/responses",
            }
        )
        + "\n"
        + json.dumps(
            {
                "custom_id": "q",
                "body": {"model": "gpt-test", "input": "on", "previous_response_id": "@p"},
                "method": "POST",
                "url": "/v1/responses",
            }
        )
        + "\n"
    )
    job = (await app.submit(src, db=store_db)).job_id
    async with mock() as base:
        out = await app.run([job], Settings(db=store_db, base_url=base, api_key="k"))
        stats = await mock_call(base, "/_mock/stats")
    rows = await rows_of(job, store_db)
    assert (rows["p"].status, rows["q"].status) == ("incomplete", "failed")
    assert rows["q"].error == "parent_failed: the line it continues, 'p', ended incomplete"
    assert (stats["creates"], out.failed) == (1, 1)


async def test_a_parent_completed_without_a_stored_response_fails_its_child_at_claim(store_db: str) -> None:
    # A server that ignores `store` (the mock honours it): the parent's answer says store: false.
    store = await Store.open(store_db)
    try:
        await store.begin_job(job_id="j", name="j", source="j", fingerprint="f", background=False, staged_by="t:1")
        child = json.dumps({"model": "m", "input": "on", "previous_response_id": "@p"}, separators=(",", ":"))
        await store.add_requests("j", [NewRequest(1, "p", '{"model":"m","input":"x"}'), NewRequest(2, "q", child)])
        await link(store, "j", [(2, (await parents_of(store, "j", ["p"]))["p"].id)])
        await store.publish_job("j", 2)
        [parent] = await store.claim("o", ["j"], 10, 60)  # the child waits: its parent is not completed
        assert parent.custom_id == "p"
        answer = '{"id":"resp_1","status":"completed","store":false}'
        done = Outcome(parent.id, RequestState.COMPLETED, http_status=200, response_body=answer)
        assert await store.apply("o", [done]) == []
        claimed = await store.claim("o", ["j"], 10, 60)
        assert [c.custom_id for c in claimed] == ["q"]
        ready, orphans = await resolve_parents(store, claimed)
        assert ready == []
        assert [(c.custom_id, why) for c, why in orphans] == [
            ("q", "the line it continues, 'p', completed but its response was not stored (store: false)")
        ]
    finally:
        await store.aclose()
