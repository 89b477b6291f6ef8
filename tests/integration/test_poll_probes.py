"""Background polls before anything is known: a few probes find out how long responses take, not every GET.

Responses that take 1.5 s used to be polled at 1 s and again at 2 s each (two GETs a request). Now only the
first few take the 1 s rung; the rest wait for the 2 s rung or for the estimate the probes learn.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from runner import app
from runner.config import Settings
from runner.worker.poller import PROBES
from runner_mock.app import serve
from runner_mock.knobs import Config
from tests.conftest import write_jobfile

N = 40


@pytest.mark.anyio
async def test_only_the_probes_are_polled_before_the_first_response_ends(tmp_path: Path, store_db: str) -> None:
    src = write_jobfile(tmp_path / "in.jsonl", N)
    job = await app.submit(str(src), db=store_db, background=True)
    async with serve(Config(bg_delay=1.5)) as base:
        s = Settings(db=store_db, base_url=base, api_key="k", concurrency=N)
        outcome = await app.run([job.job_id], s)
        async with httpx.AsyncClient() as http:
            stats = (await http.get(base.removesuffix("/v1") + "/_mock/stats")).json()
    assert outcome.result.reason == "done"
    [st] = outcome.stats
    assert st.counts["completed"] == N
    assert stats["creates"] == N
    # At most two GETs for a probe (1 s: running, 2 s: done) and one for every other response.
    assert N <= stats["gets"] <= N + PROBES
