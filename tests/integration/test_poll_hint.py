"""A server that says when to poll (`openai-poll-after-ms`) is believed: no probes, no ladder, one GET a response.

The mock's `poll_hint` knob sends the header on a background response still running (the create's reply and a
GET that finds it running), as the ms until it ends.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from runner import app
from runner.client import ApiClient, ApiReply
from runner.config import Settings
from runner_mock.app import serve
from runner_mock.knobs import Config
from tests.conftest import write_jobfile

N = 40
DELAY = 1.5  # past the ladder's first rung (1 s): a run without the hint polls its probes there, in vain


@pytest.mark.anyio
async def test_a_run_polls_each_response_when_the_server_says_it_ends(
    tmp_path: Path, store_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: dict[str, float] = {}
    seen: dict[str, float] = {}
    create, retrieve = ApiClient.create, ApiClient.retrieve

    async def timed_create(self: ApiClient, body: bytes, *, client_request_id: str | None = None) -> ApiReply:
        sent = time.monotonic()
        reply = await create(self, body, client_request_id=client_request_id)
        assert reply.rate_limits.get("openai-poll-after-ms") is not None
        created[reply.body["id"]] = sent  # the response began after this, so it ends after sent + DELAY
        return reply

    async def timed_retrieve(self: ApiClient, response_id: str) -> ApiReply:
        reply = await retrieve(self, response_id)
        if reply.body["status"] == "completed":
            seen[response_id] = time.monotonic()
        return reply

    monkeypatch.setattr(ApiClient, "create", timed_create)
    monkeypatch.setattr(ApiClient, "retrieve", timed_retrieve)
    src = write_jobfile(tmp_path / "in.jsonl", N)
    job = await app.submit(str(src), db=store_db, background=True)
    async with serve(Config(bg_delay=DELAY, poll_hint=True)) as base:
        s = Settings(db=store_db, base_url=base, api_key="k", concurrency=N)
        outcome = await app.run([job.job_id], s)
        async with httpx.AsyncClient() as http:
            stats = (await http.get(base.removesuffix("/v1") + "/_mock/stats")).json()
    assert outcome.result.reason == "done"
    assert outcome.stats[0].counts["completed"] == N
    assert stats["creates"] == N
    # Without the hint the probes' GETs at 1 s find their responses running: N + 8.
    assert stats["gets"] <= N + 2
    # Seen final soon after the end, not at the ladder's 2 s rung.
    assert len(seen) == N
    assert max(seen[rid] - created[rid] for rid in seen) < DELAY + 0.4
