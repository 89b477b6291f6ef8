"""The batch lane in-process against the mock server (real HTTP on 127.0.0.1, a real store file).

The issue's 12,000 lines in files of 5,000 are scaled down to 600 in files of 250 (three files, three
batches) to fit the suite's time budget.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from runner import app
from runner.config import Settings
from runner_mock.app import serve
from runner_mock.knobs import Config
from tests.conftest import write_jobfile


class Mock:
    def __init__(self, base: str) -> None:
        self.base = base

    async def stats(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            data: dict[str, Any] = (await http.get(self.base.removesuffix("/v1") + "/_mock/stats")).json()
            return data

    async def configure(self, **knobs: Any) -> None:
        async with httpx.AsyncClient() as http:
            r = await http.post(self.base.removesuffix("/v1") + "/_mock/config", json=knobs)
            assert r.status_code == 200, r.text


@asynccontextmanager
async def mock(**knobs: Any) -> AsyncIterator[Mock]:
    async with serve(Config(**knobs)) as base:
        yield Mock(base)


def settings(tmp_path: Path, m: Mock, **kw: Any) -> Settings:
    return Settings(db=str(tmp_path / "r.db"), base_url=m.base, api_key="k", **kw)


async def submit(tmp_path: Path, n: int, *, new: bool = False) -> str:
    src = write_jobfile(tmp_path / "in.jsonl", n)
    return (await app.submit(str(src), db=str(tmp_path / "r.db"), new=new)).job_id


async def exported(tmp_path: Path, job_id: str) -> list[tuple[Any, ...]]:
    """Each exported line without what differs between two runs of one request (ids, timestamps)."""
    out = tmp_path / f"{job_id}.jsonl"
    await app.export(job_id, str(out), db=str(tmp_path / "r.db"))
    rows = []
    for raw in out.read_text().splitlines():
        line = json.loads(raw)
        resp = line["response"] or {}
        body = resp.get("body") or {}
        texts = [c.get("text") for item in body.get("output") or [] for c in item.get("content") or []]
        rows.append((line["custom_id"], resp.get("status_code"), body.get("status"), texts, body.get("usage")))
    return rows


@pytest.mark.anyio
async def test_batch_lane_matches_the_sync_lane_and_the_mock_ledger(tmp_path: Path) -> None:
    # The first create's reply is lost after the batch was made: the runner must find it, not create another.
    async with mock(batch_run_delay=0.3, batch_validate_delay=0.1, batch_drop_create=1) as m:
        batch_job = await submit(tmp_path, 600)
        sync_job = await submit(tmp_path, 600, new=True)
        out = await app.run([batch_job], settings(tmp_path, m, lane="batch", batch_max_lines=250))
        ledger = await m.stats()
        assert outcome_ok(out)
        assert (ledger["batch"]["uploads"], ledger["batch"]["creates"], ledger["batch"]["lines_uploaded"]) == (
            3,
            3,
            600,
        )
        assert ledger["batch"]["max_uploads_of_a_line"] == 1
        st = out.stats[0]
        assert st.counts["completed"] == 600 and st.attempts == 600
        assert st.usage.as_dict() == ledger["usage"]  # every token billed is in the store, once
        assert outcome_ok(await app.run([sync_job], settings(tmp_path, m, concurrency=32)))
    via_batch, via_sync = await exported(tmp_path, batch_job), await exported(tmp_path, sync_job)
    assert len(via_batch) == 600 and via_batch == via_sync  # input order, the same answers and usage

    # The same usage costs half on the batch lane, and the report says what that saved.
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."gpt-test"]\ninput = 2.0\noutput = 8.0\n')
    on_batch = await app.report(batch_job, db=str(tmp_path / "r.db"), prices=prices)
    on_sync = await app.report(sync_job, db=str(tmp_path / "r.db"), prices=prices)
    assert on_sync.cost_usd > 0 and on_batch.cost_usd == pytest.approx(on_sync.cost_usd / 2)
    assert on_batch.saved_usd == pytest.approx(on_batch.cost_usd) and on_sync.saved_usd == 0
    assert [(x.lane, x.requests) for x in on_batch.lanes] == [("batch", 600)]
    assert "    lanes: batch 600 req $" in on_batch.render_text()
    assert "lanes:" not in on_sync.render_text()


def outcome_ok(out: app.RunOutcome) -> bool:
    return out.result.reason == "done" and out.failed == 0 and not out.result.problems


@pytest.mark.anyio
async def test_expired_rows_are_requeued_and_a_second_run_finishes_them(tmp_path: Path) -> None:
    async with mock(batch_run_delay=0.1, batch_validate_delay=0.1, batch_expire=0.25) as m:
        job = await submit(tmp_path, 200)
        s = settings(tmp_path, m, lane="batch", batch_max_lines=100)
        out = await app.run([job], s)
        assert out.result.problems == [
            "50 requests came back from an expired or cancelled batch and are queued again; `runner run` sends them"
        ]
        st = out.stats[0]
        assert (st.counts["completed"], st.counts["queued"]) == (150, 50)
        assert sorted((await m.stats())["batch"]["batches"].values()) == ["expired", "expired"]
        expired = [r.custom_id async for r in app.results(job, db=s.db) if r.status == "queued"]
        detail = await app.show(job, expired[0], db=s.db)
        assert [(a.outcome, a.error_code) for a in detail.attempt_rows] == [("queued", "batch_expired")]

        await m.configure(batch_expire=0.0)
        out = await app.run([job], settings(tmp_path, m))  # any lane finishes them: here the sync lane
        assert outcome_ok(out)
        st = out.stats[0]
        assert st.counts["completed"] == 200 and st.attempts == 250  # the expired attempt counted
        assert st.usage.as_dict() == (await m.stats())["usage"]


@pytest.mark.anyio
async def test_cancel_cancels_open_batches_and_keeps_partial_results(tmp_path: Path) -> None:
    async with mock(batch_run_delay=2.0, batch_validate_delay=0.0, batch_finalize_delay=0.1) as m:
        job = await submit(tmp_path, 200)
        s = settings(tmp_path, m, lane="batch", batch_max_lines=100)
        out = await app.run([job], s, detach=True)
        assert out.result.detached and out.result.batches_open == 2
        await anyio.sleep(0.8)  # part of each batch has run
        res = await app.cancel(job, s)
        assert res.batches_cancelled == 2 and not res.cancel_failures
        assert (await m.stats())["batch"]["cancels"] == 2
        out = await app.run([job], settings(tmp_path, m))
        st = out.stats[0]
        done, cancelled = st.counts["completed"], st.counts["cancelled"]
        assert done > 0 and cancelled > 0 and done + cancelled == 200
        ledger = await m.stats()
        assert sorted(ledger["batch"]["batches"].values()) == ["cancelled", "cancelled"]
        assert st.usage.as_dict() == ledger["usage"]  # the partial results that were paid for are kept


@pytest.mark.anyio
async def test_a_batch_that_fails_validation_is_reported_and_its_rows_requeued(tmp_path: Path) -> None:
    async with mock(batch_fail=1, batch_run_delay=0.0, batch_validate_delay=0.1) as m:
        job = await submit(tmp_path, 20)
        s = settings(tmp_path, m, lane="batch")
        out = await app.run([job], s)
        [problem] = out.result.problems
        assert "failed: invalid_request: The batch input file failed validation" in problem
        assert problem.endswith("its 20 requests are queued again (fix the cause, then `runner run`)")
        assert out.stats[0].counts["queued"] == 20
        out = await app.run([job], s)
        assert outcome_ok(out) and out.stats[0].counts["completed"] == 20


@pytest.mark.anyio
async def test_a_queue_limit_waits_and_retries_without_counting_an_attempt(tmp_path: Path) -> None:
    # Two files of 10 lines; the limit lets one batch in at a time. The first runs for 1 s, so the second's
    # create (one upload later) is refused even on a loaded machine.
    async with mock(batch_run_delay=1.0, batch_validate_delay=0.05, batch_token_limit=150) as m:
        job = await submit(tmp_path, 20)
        import runner.lanes.batch as lane

        lane.LIMIT_WAIT_FIRST = 0.2  # the real first wait is 5 s
        try:
            out = await app.run([job], settings(tmp_path, m, lane="batch", batch_max_lines=10))
        finally:
            lane.LIMIT_WAIT_FIRST = 5.0
        assert outcome_ok(out)
        st = out.stats[0]
        assert st.counts["completed"] == 20 and st.attempts == 20  # the refused batch cost no attempt
        assert "failed" in (await m.stats())["batch"]["batches"].values()


@pytest.mark.anyio
async def test_a_create_refused_outright_is_reported_and_its_rows_requeued(tmp_path: Path) -> None:
    """A 400 on `POST /batches` is not retried forever: the chunk is settled, its rows queued, the run says why."""
    seen: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.method == "POST" and request.url.path.endswith("/files"):
            return httpx.Response(200, json={"id": "file_1", "object": "file", "filename": "x.jsonl"})
        if request.method == "POST" and request.url.path.endswith("/batches"):
            error = {"message": "Model gpt-test is not supported in the Batch API.", "code": "model_not_supported"}
            return httpx.Response(400, json={"error": error})
        return httpx.Response(404, json={"error": {"message": "no", "code": "not_found"}})

    job = await submit(tmp_path, 5)
    s = Settings(db=str(tmp_path / "r.db"), base_url="http://127.0.0.1:9/v1", api_key="k", lane="batch")
    out = await app.run([job], s, transport=httpx.MockTransport(api))
    [problem] = out.result.problems
    assert "failed: model_not_supported: Model gpt-test is not supported in the Batch API." in problem
    assert out.stats[0].counts["queued"] == 5
    assert seen == ["POST /v1/files", "POST /v1/batches"]  # refused once: not retried, not created twice
    assert (await app.status_report(job, db=s.db)).open_batches == []


@pytest.mark.anyio
async def test_a_spec_runs_on_the_lane_its_job_table_names(tmp_path: Path) -> None:
    write_jobfile(tmp_path / "in.jsonl", 30)
    spec = tmp_path / "nightly.toml"
    spec.write_text('[job]\ninput = "in.jsonl"\nlane = "batch"\n\n[output]\nresults = "out.jsonl"\n')
    async with mock(batch_run_delay=0.1, batch_validate_delay=0.05) as m:
        done = await app.run_spec(spec, overrides={"base_url": m.base, "api_key": "k"})
        ledger = await m.stats()
    assert done.failed == 0 and done.total == 30
    assert (ledger["batch"]["uploads"], ledger["batch"]["creates"], ledger["creates"]) == (1, 1, 0)
    [job] = done.jobs
    assert job.report is not None and [(x.lane, x.requests) for x in job.report.lanes] == [("batch", 30)]
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 30


@pytest.mark.anyio
async def test_requests_sharing_a_conversation_are_left_to_the_sync_lane(tmp_path: Path) -> None:
    src = write_jobfile(tmp_path / "in.jsonl", 6)
    with src.open("a") as f:
        for i in (1, 2):
            body = {"model": "gpt-test", "input": f"turn {i}", "conversation": "conv_1"}
            f.write(json.dumps({"custom_id": f"t-{i}", "method": "POST", "url": "/v1/responses", "body": body}) + "\n")
    job = (await app.submit(str(src), db=str(tmp_path / "r.db"))).job_id
    async with mock(batch_run_delay=0.1, batch_validate_delay=0.05) as m:
        out = await app.run([job], settings(tmp_path, m, lane="batch"))
        assert out.result.problems == [
            "2 requests share a conversation or continue another line's response, which a batch cannot run in"
            " order: they are left queued for the sync lane (`runner run` without --lane batch)"
        ]
        assert (out.stats[0].counts["completed"], out.stats[0].counts["queued"]) == (6, 2)
        out = await app.run([job], settings(tmp_path, m))
        assert outcome_ok(out) and out.stats[0].counts["completed"] == 8


@pytest.mark.anyio
async def test_a_dead_server_stops_the_batch_lane_within_seconds(tmp_path: Path) -> None:
    """A base URL where nothing listens dooms the run quickly (exit 5), as on the sync lane, not after two
    minutes of backoff; nothing fails: the packed chunk waits for the run after the fix."""
    import socket
    import time

    from runner.app import StopReason

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    job = await submit(tmp_path, 5)
    s = Settings(db=str(tmp_path / "r.db"), base_url=f"http://127.0.0.1:{port}/v1", api_key="k", lane="batch")
    t0 = time.monotonic()
    out = await app.run([job], s)
    took = time.monotonic() - t0
    assert out.result.reason is StopReason.DOOMED
    assert out.result.doomed_error is not None and "127.0.0.1" in out.result.doomed_error.message
    assert took < 15, took  # 10 tries 0.5 s apart, where the backoff took ~2 minutes
    counts = out.stats[0].counts
    assert counts["queued"] + counts["in_progress"] == 5 and counts["failed"] == 0
