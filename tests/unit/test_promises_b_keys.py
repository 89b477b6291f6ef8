"""README "Self-hosted servers": only api.openai.com makes the runner demand OPENAI_API_KEY; that is the host,
however the URL spells it, and nothing is sent without the key."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest

from runner import app
from runner.config import Settings
from runner.errors import ConfigError
from tests.conftest import write_jobfile


@pytest.mark.parametrize(
    "base_url",
    [
        "https://api.openai.com/v1",
        "https://API.OpenAI.com/v1",
        "https://api.openai.com./v1",
        "https://api.openai.com:443/v1/",
    ],
)
def test_openai_without_a_key_is_refused_before_anything_is_sent(base_url: str, tmp_path: Path) -> None:
    db = str(tmp_path / "r.db")
    job = anyio.run(lambda: app.submit(str(write_jobfile(tmp_path / "in.jsonl", 2)), db=db)).job_id
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:  # would answer 401, as OpenAI does without a key
        sent.append(request)
        return httpx.Response(401, json={"error": {"message": "no key", "code": "invalid_api_key"}})

    s = Settings(db=db, base_url=base_url)  # no OPENAI_API_KEY: the test environment has none
    with pytest.raises(ConfigError, match=r"^OPENAI_API_KEY is not set \(or pass --api-key\)$"):
        anyio.run(lambda: app.run([job], s, transport=httpx.MockTransport(record)))
    assert sent == []
    assert anyio.run(lambda: app.status(job, db=db)).counts["queued"] == 2
