"""When a run demands a key: OpenAI's regional hosts (eu.api.openai.com) as much as api.openai.com, any server
with `--auth-style api-key` (Azure), and an empty key counts as none. Nothing is sent without it."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest

from runner import app
from runner.config import AuthStyle, Settings
from runner.errors import ConfigError
from tests.conftest import write_jobfile

NO_KEY = r"^OPENAI_API_KEY is not set \(or pass --api-key\)$"
AZURE_NO_KEY = r"^--auth-style api-key needs a key: OPENAI_API_KEY is not set \(or pass --api-key\)$"


def _refused(tmp_path: Path, settings: dict[str, object], message: str) -> None:
    db = str(tmp_path / "r.db")
    job = anyio.run(lambda: app.submit(str(write_jobfile(tmp_path / "in.jsonl", 2)), db=db)).job_id
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:  # a server that wants a key answers 401 without one
        sent.append(request)
        return httpx.Response(401, json={"error": {"message": "no key", "code": "invalid_api_key"}})

    s = Settings(db=db, **settings)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        anyio.run(lambda: app.run([job], s, transport=httpx.MockTransport(record)))
    assert sent == []
    assert anyio.run(lambda: app.status(job, db=db)).counts["queued"] == 2


@pytest.mark.parametrize("base_url", ["https://eu.api.openai.com/v1", "https://EU.api.openai.com./v1"])
def test_a_regional_openai_host_wants_a_key(base_url: str, tmp_path: Path) -> None:
    _refused(tmp_path, {"base_url": base_url}, NO_KEY)


def test_an_empty_key_is_no_key(tmp_path: Path) -> None:
    _refused(tmp_path, {"api_key": ""}, NO_KEY)


@pytest.mark.parametrize("base_url", ["https://res.openai.azure.com/openai/v1", "http://127.0.0.1:9/v1"])
def test_the_api_key_auth_style_wants_a_key_on_any_server(base_url: str, tmp_path: Path) -> None:
    _refused(tmp_path, {"base_url": base_url, "auth_style": AuthStyle.API_KEY}, AZURE_NO_KEY)


@pytest.mark.parametrize(
    "base_url", ["http://127.0.0.1:8000/v1", "https://api.openai.com.example.net/v1", "https://notapi.openai.com/v1"]
)
def test_other_hosts_need_no_key(base_url: str) -> None:
    anyio.run(app.refuse_run, [], Settings(base_url=base_url))  # README "Self-hosted servers": no key, no header
