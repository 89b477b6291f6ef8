"""The flex lane in-process against the mock server: tier on the wire, patient capacity retries, fallback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from runner import app
from runner.config import Settings
from runner.limits import AdaptiveConcurrency
from runner.worker.types import Snapshot
from runner_mock.app import serve
from runner_mock.knobs import Config
from tests.conftest import write_jobfile

N = 24


async def _run(tmp_path: Path, config: Config, **settings: Any) -> tuple[app.RunOutcome, list[Snapshot], str]:
    src = write_jobfile(tmp_path / "in.jsonl", N)
    db = str(tmp_path / "r.db")
    job = await app.submit(str(src), db=db)
    seen: list[Snapshot] = []

    def progress(s: Snapshot) -> None:
        seen.append(Snapshot(**{k: v for k, v in vars(s).items()}))

    async with serve(config) as base:
        s = Settings(db=db, base_url=base, api_key="k", concurrency=8, **settings)
        outcome = await app.run([job.job_id], s, on_progress=progress)
    return outcome, seen, job.job_id


def _count_overloads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the times the pool is told to shrink (the adaptive concurrency's overload signal)."""
    calls: list[int] = []
    original = AdaptiveConcurrency.on_overload

    def counted(self: AdaptiveConcurrency, in_flight: int | None = None) -> None:
        calls.append(1)
        original(self, in_flight)

    monkeypatch.setattr(AdaptiveConcurrency, "on_overload", counted)
    return calls


@pytest.mark.anyio
async def test_capacity_429s_are_retried_without_shrinking_concurrency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shrinks = _count_overloads(monkeypatch)
    outcome, seen, job_id = await _run(tmp_path, Config(flex_busy=12, latency=0.05), lane="flex")
    assert outcome.result.reason == "done" and outcome.failed == 0
    [st] = outcome.stats
    assert st.counts["completed"] == N
    # Twelve capacity 429s met, and the pool was never told to shrink: they are not a rate limit.
    assert shrinks == [] and not any(s.concurrency_reason for s in seen)
    assert st.attempts == N  # the 429s did not use up attempts
    detail = await app.show(job_id, "c-00001", db=str(tmp_path / "r.db"))
    assert json.loads(detail.response_body or "{}")["service_tier"] == "flex"
    assert [a.error_code for a in detail.attempt_rows][-1] is None
    # Flex is priced at the Batch rate: half the standard price of the same usage.
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."gpt-test"]\ninput = 2.0\noutput = 8.0\n')
    report = await app.report(job_id, db=str(tmp_path / "r.db"), prices=prices)
    [lane] = report.lanes
    assert (lane.lane, lane.requests) == ("flex", N)
    assert report.cost_usd == pytest.approx(lane.usd_standard / 2) and report.saved_usd == pytest.approx(
        report.cost_usd
    )


@pytest.mark.anyio
async def test_an_overload_on_the_same_lane_does_shrink_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control, so the test above can fail: on the same flex lane, replies that time out (the server
    overloaded) do tell the pool to shrink."""
    shrinks = _count_overloads(monkeypatch)
    outcome, _, _ = await _run(tmp_path, Config(flex_latency=2.0), lane="flex", timeout=0.2, max_attempts=1)
    assert outcome.failed == N
    assert len(shrinks) >= 8


@pytest.mark.anyio
async def test_flex_fallback_moves_stragglers_to_the_default_tier(tmp_path: Path) -> None:
    src = write_jobfile(tmp_path / "in.jsonl", 6)
    own = {"custom_id": "own", "method": "POST", "url": "/v1/responses"}
    own["body"] = {"model": "gpt-test", "input": "x", "service_tier": "priority"}  # type: ignore[assignment]
    with src.open("a") as f:
        f.write(json.dumps(own) + "\n")
    db = str(tmp_path / "r.db")
    job = await app.submit(str(src), db=db)
    async with serve(Config(flex_latency=30.0)) as base:
        s = Settings(db=db, base_url=base, api_key="k", lane="flex", flex_fallback=0.3)
        outcome = await app.run([job.job_id], s)
        async with httpx.AsyncClient() as http:
            stats = (await http.get(base.removesuffix("/v1") + "/_mock/stats")).json()
    tiers = {row.custom_id: (row.response or {}).get("service_tier") async for row in app.results(job.job_id, db=db)}
    assert outcome.failed == 0 and outcome.result.snapshot.elapsed < 10
    # The six flex requests (sent, 30 s from an answer) were given up after 0.3 s and answered on the default
    # tier; the line that names its own tier was sent once, as written.
    assert tiers == {**{f"c-{i:05d}": "default" for i in range(1, 7)}, "own": "priority"}
    assert stats["tiers"] == {"flex": 6, "default": 6, "priority": 1}
