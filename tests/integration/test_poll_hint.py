"""A server that says when to poll (`openai-poll-after-ms`) is believed: no probes, no ladder, one GET a response.

The mock's `poll_hint` knob sends the header on a background response still running (the create's reply and a
GET that finds it running), as the ms until it ends.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from runner import app
from runner.client import ApiClient, ApiReply
from runner.config import Settings
from runner.store.models import Claimed
from runner.worker.poller import Poller
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

    hints: list[float | None] = []
    add = Poller.add

    def noted_add(
        self: Poller, claimed: Claimed, first_poll: float | None = None, hint: float | None = None, **kw: Any
    ) -> None:
        hints.append(hint)
        add(self, claimed, first_poll, hint, **kw)

    monkeypatch.setattr(ApiClient, "create", timed_create)
    monkeypatch.setattr(ApiClient, "retrieve", timed_retrieve)
    monkeypatch.setattr(Poller, "add", noted_add)
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
    # Each first GET was set for the end the server announced (the hint), not for the ladder's 2 s rung: what the
    # poller was told, not a wall-clock figure that a loaded machine stretches (1.95 s seen under a load of 9).
    assert len(hints) == N and all(h is not None and DELAY - 0.5 <= h <= DELAY for h in hints), hints
    assert len(seen) == N
    assert max(seen[rid] - created[rid] for rid in seen) < DELAY + 1.5  # and then polled: not left for 30 s
