"""When a run demands a key: OpenAI's regional hosts (eu.api.openai.com) as much as api.openai.com, any server
with `--auth-style api-key` (Azure), and an empty key counts as none. Nothing is sent without it."""

from __future__ import annotations

import re
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


def _refused(tmp_path: Path, settings: dict[str, object], message: str) -> ConfigError:
    db = str(tmp_path / "r.db")
    job = anyio.run(lambda: app.submit(str(write_jobfile(tmp_path / "in.jsonl", 2)), db=db)).job_id
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:  # a server that wants a key answers 401 without one
        sent.append(request)
        return httpx.Response(401, json={"error": {"message": "no key", "code": "invalid_api_key"}})

    s = Settings(db=db, **settings)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message) as refused:
        anyio.run(lambda: app.run([job], s, transport=httpx.MockTransport(record)))
    assert sent == []
    assert anyio.run(lambda: app.status(job, db=db)).counts["queued"] == 2
    return refused.value


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


def test_a_key_read_with_its_line_end_is_sent_without_it(tmp_path: Path) -> None:
    # A Kubernetes secret or a key file keeps its trailing newline; sent as it was, aiohttp refused the header
    # and every request of the run crashed it with a traceback.
    db = str(tmp_path / "r.db")
    job = anyio.run(lambda: app.submit(str(write_jobfile(tmp_path / "in.jsonl", 2)), db=db)).job_id
    seen: list[str | None] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(401, json={"error": {"message": "no", "code": "invalid_api_key"}})

    s = Settings(db=db, api_key=" sk-abc\r\n", base_url="http://127.0.0.1:9/v1")  # type: ignore[arg-type]
    anyio.run(lambda: app.run([job], s, transport=httpx.MockTransport(record)))
    assert seen and set(seen) == {"Bearer sk-abc"}


@pytest.mark.parametrize("key", ["sk-a\nbc", "sk-a\rbc", "sk-\x00abc", "sk-\x1babc", "sk-ab\x7fc"])
def test_a_key_with_a_control_character_inside_is_refused_unshown_before_anything_is_sent(
    key: str, tmp_path: Path
) -> None:
    e = _refused(tmp_path, {"api_key": key}, r"^OPENAI_API_KEY \(or --api-key\) has a control character inside: ")
    # No part of the key in the message (not even its length, nor that of its part before the character).
    assert "bc" not in str(e) and not re.search(r"\d", str(e).replace("OPENAI", "")), str(e)


def test_the_python_apis_client_refuses_such_a_key_too() -> None:
    from runner.client import ApiClient

    with pytest.raises(ConfigError, match=r"^OPENAI_API_KEY \(or --api-key\) has a control character inside:"):
        ApiClient("http://127.0.0.1:9/v1", "sk-ab\ncd")
