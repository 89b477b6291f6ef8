"""Background polls keep to their share of the request budget (a quarter) while there are creates to send, so
they never starve them; once nothing is left to send but polls, they may use all of it (runner/limits.py
POLL_SHARE). Before, the last responses of a run waited for the share while no create needed the rest."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from runner import app
from runner.client import ApiClient, ApiReply
from runner.config import Settings
from runner_mock.app import serve
from runner_mock.knobs import Config
from tests.conftest import write_jobfile

N = 30
RPM = 1200  # 20 a second: creates take 1.5 s, and polls' share is 5 a second


@pytest.mark.anyio
async def test_polls_after_the_last_create_use_the_whole_request_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = str(tmp_path / "runner.db")
    src = write_jobfile(tmp_path / "in.jsonl", N)
    job = await app.submit(str(src), db=db, background=True)
    creates: list[float] = []
    gets: list[float] = []
    create, retrieve = ApiClient.create, ApiClient.retrieve

    async def timed_create(self: ApiClient, body: bytes, *, client_request_id: str | None = None) -> ApiReply:
        reply = await create(self, body, client_request_id=client_request_id)
        creates.append(time.monotonic())
        return reply

    async def timed_retrieve(self: ApiClient, response_id: str) -> ApiReply:
        gets.append(time.monotonic())
        return await retrieve(self, response_id)

    monkeypatch.setattr(ApiClient, "create", timed_create)
    monkeypatch.setattr(ApiClient, "retrieve", timed_retrieve)
    async with serve(Config(bg_delay=0.2)) as base:
        s = Settings(db=db, base_url=base, api_key="k", concurrency=N, rpm=RPM)
        outcome = await app.run([job.job_id], s)
    assert outcome.result.reason == "done"
    assert outcome.stats[0].counts["completed"] == N
    last_create = max(creates)
    after = sorted(t for t in gets if t > last_create)
    # After the last create, the responses still running were polled at the budget's pace (20 a second), not at
    # the share's 5 (12 GETs: 0.55 s against 2.2 s); those booked at the share while creates went out included.
    assert len(after) >= 12
    assert after[11] - after[0] < 1.2, [round(t - after[0], 2) for t in after]
