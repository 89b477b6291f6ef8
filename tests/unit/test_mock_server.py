"""The mock Responses API server, exercised over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from runner_mock import Config, format_duration, serve

ROOT = Path(__file__).resolve().parents[2]
RATE_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)

Session = aiohttp.ClientSession
Scenario = Callable[[str, Session], Awaitable[None]]


@contextlib.asynccontextmanager
async def _client(config: Config) -> AsyncIterator[tuple[str, Session]]:
    async with serve(config) as base, aiohttp.ClientSession() as session:
        yield base, session


def run(scenario: Scenario, config: Config | None = None) -> None:
    """Start a server with `config`, run `scenario(base_url, session)` against it."""

    async def main() -> None:
        async with _client(config or Config()) as (base, session):
            await scenario(base, session)

    asyncio.run(main())


async def call(
    session: Session,
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, CIMultiDict[str]]:
    data = None if body is None else (body if isinstance(body, bytes) else orjson.dumps(body))
    async with session.request(method, url, data=data, headers=headers) as resp:
        raw = await resp.read()
        # Header names are case-insensitive; aiohttp capitalises the ones it knows.
        return resp.status, orjson.loads(raw) if raw else None, CIMultiDict(resp.headers)


def admin(base: str, what: str) -> str:
    return base.removesuffix("/v1") + "/_mock/" + what


def tokens(chars: int) -> int:
    return max(1, math.ceil(chars / 4))


# -- validation and auth ---------------------------------------------------------------------------


def test_create_rejects_missing_fields_and_bad_bodies() -> None:
    async def scenario(base: str, s: Session) -> None:
        for body, param in (({"input": "hi"}, "model"), ({"model": "m"}, "input")):
            status, data, headers = await call(s, "POST", f"{base}/responses", body)
            assert status == 400
            err = data["error"]
            assert err["type"] == "invalid_request_error"
            assert err["param"] == param
            assert err["code"] == "missing_required_parameter"
            assert set(err) == {"message", "type", "param", "code"}
            assert headers["x-request-id"].startswith("req_")
        for raw in (b"[1, 2]", b"not json", b""):
            status, data, _ = await call(s, "POST", f"{base}/responses", raw)
            assert status == 400
            assert data["error"]["type"] == "invalid_request_error"
        _, stats, _ = await call(s, "GET", admin(base, "stats"))
        assert stats["creates"] == 0

    run(scenario)


def test_api_key_required_in_any_of_three_styles() -> None:
    key = "sk-test-secret-123"
    body = {"model": "m", "input": "hi"}

    async def scenario(base: str, s: Session) -> None:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"api-key": "nope"}):
            status, data, raw_headers = await call(s, "POST", f"{base}/responses", body, headers)
            assert status == 401
            assert data["error"]["code"] == "invalid_api_key"
            assert data["error"]["message"] == "Incorrect API key provided"
            assert key not in orjson.dumps(data).decode()
            assert "x-request-id" in raw_headers
        status, _, _ = await call(s, "GET", f"{base}/responses/resp_x")
        assert status == 401
        for headers in ({"Authorization": f"Bearer {key}"}, {"Authorization": key}, {"api-key": key}):
            status, data, _ = await call(s, "POST", f"{base}/responses", body, headers)
            assert status == 200, headers
        # Admin routes need no key.
        status, stats, _ = await call(s, "GET", admin(base, "stats"))
        assert status == 200
        assert stats["faults"]["401"] == 4
        assert stats["creates"] == 3

    run(scenario, Config(api_key=key))


# -- responses and usage -----------------------------------------------------------------------------


def test_foreground_response_shape_and_deterministic_usage() -> None:
    instructions = "Be brief."
    text = "What is the capital of France? " * 3
    body = {
        "model": "gpt-test",
        "input": text,
        "instructions": instructions,
        "reasoning": {"effort": "low"},
        "prompt_cache_key": "k1",
        "metadata": {"line": "7"},
    }

    async def scenario(base: str, s: Session) -> None:
        status, data, headers = await call(s, "POST", f"{base}/responses", body)
        assert status == 200
        assert "output_text" not in data
        assert data["id"].startswith("resp_")
        assert data["object"] == "response"
        assert data["status"] == "completed"
        assert isinstance(data["created_at"], int)
        assert isinstance(data["completed_at"], int)
        assert data["error"] is None
        assert data["incomplete_details"] is None
        assert data["model"] == "gpt-test"
        assert data["instructions"] == instructions
        assert data["metadata"] == {"line": "7"}
        assert data["background"] is False
        assert data["store"] is True
        assert data["service_tier"] == "default"
        assert data["truncation"] == "disabled"
        assert data["text"] == {"format": {"type": "text"}}
        assert data["reasoning"]["effort"] == "low"
        for field in ("max_output_tokens", "temperature", "top_p", "previous_response_id", "conversation"):
            assert field in data

        [message] = data["output"]
        assert message["id"].startswith("msg_")
        assert message["type"] == "message"
        assert message["status"] == "completed"
        assert message["role"] == "assistant"
        out = "echo: " + text[:200]
        assert message["content"] == [{"type": "output_text", "text": out, "annotations": []}]

        input_tokens = tokens(len(instructions + text))
        output_tokens = tokens(len(out)) + 8
        assert data["usage"] == {
            "input_tokens": input_tokens,
            # A prompt under 1,024 tokens is never cached, key or not (tests/unit/test_cache_mock.py).
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 8},
            "total_tokens": input_tokens + output_tokens,
        }
        assert headers["x-request-id"].startswith("req_")
        assert int(headers["openai-processing-ms"]) >= 0
        for name in RATE_HEADERS:
            assert name in headers
        assert headers["x-ratelimit-limit-requests"] == "1000000"
        assert headers["x-ratelimit-limit-tokens"] == "100000000"

        # The same request gives the same output and usage; the stored response can be retrieved.
        _, again, _ = await call(s, "POST", f"{base}/responses", body)
        assert again["usage"] == data["usage"]
        assert again["output"][0]["content"] == data["output"][0]["content"]
        assert again["id"] != data["id"]
        status, fetched, _ = await call(s, "GET", f"{base}/responses/{data['id']}")
        assert status == 200
        assert fetched == data

        _, stats, _ = await call(s, "GET", admin(base, "stats"))
        assert stats["creates"] == 2
        assert stats["gets"] == 1
        u = data["usage"]
        assert stats["usage"] == {
            "input_tokens": 2 * u["input_tokens"],
            "cached_tokens": 2 * u["input_tokens_details"]["cached_tokens"],
            "output_tokens": 2 * u["output_tokens"],
            "reasoning_tokens": 16,
            "total_tokens": 2 * u["total_tokens"],
        }

    run(scenario)


def test_message_item_input_and_routes_under_a_prefix_ending_in_v1() -> None:
    items = [
        {"role": "system", "content": "sys "},
        {"role": "user", "content": [{"type": "input_text", "text": "part one "}, {"type": "input_image"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "part two"}]},
        {"type": "function_call_output", "call_id": "c1", "output": "ignored"},
    ]

    async def scenario(base: str, s: Session) -> None:
        azure = base.removesuffix("/v1") + "/openai/v1"
        status, data, _ = await call(s, "POST", f"{azure}/responses", {"model": "m", "input": items})
        assert status == 200
        text = "sys part one part two"
        assert data["output"][0]["content"][0]["text"] == "echo: " + text
        assert data["usage"]["input_tokens"] == tokens(len(text))
        assert data["usage"]["input_tokens_details"]["cached_tokens"] == 0
        assert data["usage"]["output_tokens_details"]["reasoning_tokens"] == 0
        status, _, _ = await call(s, "GET", f"{azure}/responses/{data['id']}")
        assert status == 200

    run(scenario)


def test_paths_outside_v1_get_an_openai_style_404() -> None:
    async def scenario(base: str, s: Session) -> None:
        root = base.removesuffix("/v1")
        body = {"model": "m", "input": "x"}
        for method, url in (
            ("POST", f"{root}/responses"),  # a base URL without /v1
            ("POST", f"{base}/responses/responses"),  # a base URL ending in /responses
            ("GET", f"{root}/v2/responses/resp_1"),
            ("POST", f"{root}/xv1/responses"),
        ):
            status, data, _ = await call(s, method, url, body)
            assert status == 404, url
            path = url.removeprefix(root)
            assert data["error"] == {
                "message": f"Invalid URL ({method} {path})",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        _, stats, _ = await call(s, "GET", admin(base, "stats"))
        assert stats["faults"]["404"] == 4
        assert stats["creates"] == 0

    run(scenario)


def test_help_shows_every_default() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "runner", "mock-server", "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT
    ).stdout
    flat = " ".join(out.split())
    for shown in ("(default: 8787)", "(default: 1.0)", "(default: 0.2)", "(default: server_error)"):
        assert shown in flat


def test_every_knob_is_a_flag_with_its_default() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "runner_mock", "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT
    ).stdout
    flat = " ".join(out.split())
    for knob in dataclasses.fields(Config):
        flag = "--" + knob.name.replace("_", "-")
        assert flag in flat, flag
        if knob.type != "bool":
            after = flat.split(f"{flag} {knob.name.upper()} ", 1)[1]
            assert f"(default: {knob.default})" in after.split(" --", 1)[0], flag


def test_imports_nothing_of_runner() -> None:
    # In a fresh interpreter: every module of runner_mock loaded, and not one module of runner with them.
    code = (
        "import pkgutil, importlib, sys, runner_mock\n"
        "for m in pkgutil.iter_modules(runner_mock.__path__): importlib.import_module('runner_mock.' + m.name)\n"
        "print(len([m for m in sys.modules if m.startswith('runner_mock.')]))\n"
        "print([m for m in sys.modules if m == 'runner' or m.startswith('runner.')])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    loaded, runner_modules = r.stdout.splitlines()
    assert int(loaded) >= 9
    assert runner_modules == "[]"


def test_small_max_output_tokens_gives_incomplete() -> None:
    body = {"model": "m", "input": "x" * 100, "max_output_tokens": 16, "reasoning": {"effort": "medium"}}

    async def scenario(base: str, s: Session) -> None:
        status, data, _ = await call(s, "POST", f"{base}/responses", body)
        assert status == 200
        assert data["status"] == "incomplete"
        assert data["incomplete_details"] == {"reason": "max_output_tokens"}
        assert data["completed_at"] is None
        usage = data["usage"]
        assert usage["output_tokens"] == 16
        assert usage["output_tokens_details"]["reasoning_tokens"] == 16
        assert usage["total_tokens"] == usage["input_tokens"] + 16 == 25 + 16

    run(scenario)


def test_unknown_id_is_404() -> None:
    async def scenario(base: str, s: Session) -> None:
        for method, url in (("GET", "responses/resp_nope"), ("POST", "responses/resp_nope/cancel")):
            status, data, _ = await call(s, method, f"{base}/{url}")
            assert status == 404
            assert data["error"]["code"] == "not_found"
            assert data["error"]["type"] == "invalid_request_error"

    run(scenario)


# -- background mode ---------------------------------------------------------------------------------


def test_background_moves_from_queued_to_completed() -> None:
    body = {"model": "m", "input": "hello background", "background": True, "store": True}

    async def scenario(base: str, s: Session) -> None:
        status, data, _ = await call(s, "POST", f"{base}/responses", body)
        assert status == 200
        assert data["status"] == "queued"
        assert data["background"] is True
        assert data["output"] == []
        assert data["usage"] is None
        rid = data["id"]
        await asyncio.sleep(0.12)
        _, mid, _ = await call(s, "GET", f"{base}/responses/{rid}")
        assert mid["status"] == "in_progress"
        assert mid["usage"] is None
        await asyncio.sleep(0.12)
        _, done, _ = await call(s, "GET", f"{base}/responses/{rid}")
        assert done["status"] == "completed"
        assert done["output"][0]["content"][0]["text"] == "echo: hello background"
        assert done["usage"]["input_tokens"] == tokens(len("hello background"))
        _, again, _ = await call(s, "GET", f"{base}/responses/{rid}")
        assert again == done

        _, stats, _ = await call(s, "GET", admin(base, "stats"))
        assert stats["gets"] == 3
        # Usage is counted once although the finished response was fetched twice.
        assert stats["usage"]["total_tokens"] == done["usage"]["total_tokens"]

    run(scenario, Config(bg_delay=0.2))


def test_cancel_background_is_idempotent_and_foreground_cannot_be_cancelled() -> None:
    async def scenario(base: str, s: Session) -> None:
        _, data, _ = await call(s, "POST", f"{base}/responses", {"model": "m", "input": "x", "background": True})
        rid = data["id"]
        status, first, _ = await call(s, "POST", f"{base}/responses/{rid}/cancel")
        assert status == 200
        assert first["status"] == "cancelled"
        assert first["usage"] is None
        status, second, _ = await call(s, "POST", f"{base}/responses/{rid}/cancel")
        assert status == 200
        assert second == first
        _, fetched, _ = await call(s, "GET", f"{base}/responses/{rid}")
        assert fetched["status"] == "cancelled"

        _, fg, _ = await call(s, "POST", f"{base}/responses", {"model": "m", "input": "x"})
        status, err, _ = await call(s, "POST", f"{base}/responses/{fg['id']}/cancel")
        assert status == 400
        assert err["error"]["message"] == "Only responses created with background=true can be cancelled"

        _, stats, _ = await call(s, "GET", admin(base, "stats"))
        assert stats["cancels"] == 3
        assert stats["usage"]["total_tokens"] == fg["usage"]["total_tokens"]

    run(scenario, Config(bg_delay=5.0))


def test_cancel_after_completion_returns_it_unchanged() -> None:
    async def scenario(base: str, s: Session) -> None:
        _, data, _ = await call(s, "POST", f"{base}/responses", {"model": "m", "input": "x", "background": True})
        await asyncio.sleep(0.06)
        status, cancelled, _ = await call(s, "POST", f"{base}/responses/{data['id']}/cancel")
        assert status == 200
        assert cancelled["status"] == "completed"
        assert cancelled["usage"] is not None

    run(scenario, Config(bg_delay=0.05))


def test_bg_fail_ends_failed_with_server_error() -> None:
    async def scenario(base: str, s: Session) -> None:
        _, data, _ = await call(s, "POST", f"{base}/responses", {"model": "m", "input": "x", "background": True})
        assert data["status"] == "queued"
        await asyncio.sleep(0.08)
        _, done, _ = await call(s, "GET", f"{base}/responses/{data['id']}")
        assert done["status"] == "failed"
        assert done["error"]["code"] == "server_error"
        assert done["error"]["message"]
        assert done["usage"] is None
        _, stats, _ = await call(s, "GET", admin(base, "stats"))
        assert stats["usage"]["total_tokens"] == 0

    run(scenario, Config(bg_delay=0.05, bg_fail=1.0))


# -- faults ------------------------------------------------------------------------------------------


def test_p429_gives_rate_limit_with_retry_after() -> None:
    async def scenario(base: str, s: Session) -> None:
        status, data, headers = await call(s, "POST", f"{base}/responses", {"model": "m", "input": "x"})
        assert status == 429
        assert data["error"]["code"] == "rate_limit_exceeded"
        assert headers["retry-after"] == "0.5"
        assert headers["retry-after-ms"] == "500"
        _, stats, _ = await call(s, "GET", admin(base, "stats"))
        assert stats["faults"]["429"] == 1
        assert stats["creates"] == 0

    run(scenario, Config(p429=1.0, retry_after=0.5))


def test_latency_jitter_spreads_create_times_around_the_latency() -> None:
    async def scenario(base: str, s: Session) -> None:
        async def timed() -> float:
            t0 = time.monotonic()
            status, _, _ = await call(s, "POST", f"{base}/responses", {"model": "m", "input": "x"})
            assert status == 200
            return time.monotonic() - t0

        took = await asyncio.gather(*(timed() for _ in range(12)))
        # 0.2 s x (1 +- 0.5): never under 0.1 s; the upper bound leaves room for a loaded CI machine.
        assert all(0.1 <= t < 0.3 + 0.5 for t in took), took
        assert max(took) - min(took) > 0.03  # spread, not all alike

    run(scenario, Config(latency=0.2, latency_jitter=0.5, seed=4))


def test_p5xx_gives_overloaded_503() -> None:
    async def scenario(base: str, s: Session) -> None:
        status, data, headers = await call(s, "POST", f"{base}/responses", {"model": "m", "input": "x"})
        assert status == 503
        assert data["error"] == {
            "message": data["error"]["message"],
            "type": "server_error",
            "param": None,
            "code": "server_is_overloaded",
        }
        assert "retry-after" not in headers
        _, stats, _ = await call(s, "GET", admin(base, "stats"))
        assert stats["faults"]["5xx"] == 1

    run(scenario, Config(p5xx=1.0))


def test_poll_p429_applies_to_get() -> None:
    async def scenario(base: str, s: Session) -> None:
        status, data, _ = await call(s, "POST", f"{base}/responses", {"model": "m", "input": "x"})
        assert status == 200
        status, err, headers = await call(s, "GET", f"{base}/responses/{data['id']}")
        assert status == 429
        assert err["error"]["code"] == "rate_limit_exceeded"
        assert "retry-after" in headers

    run(scenario, Config(poll_p429=1.0))


def test_quota_and_quota_after() -> None:
    body = {"model": "m", "input": "x"}

    async def always(base: str, s: Session) -> None:
        status, data, headers = await call(s, "POST", f"{base}/responses", body)
        assert status == 429
        assert data["error"]["code"] == "insufficient_quota"
        assert data["error"]["type"] == "insufficient_quota"
        assert "quota" in data["error"]["message"]
        assert "retry-after" not in headers

    async def after_two(base: str, s: Session) -> None:
        statuses = [(await call(s, "POST", f"{base}/responses", body))[0] for _ in range(4)]
        assert statuses == [200, 200, 429, 429]
        _, stats, _ = await call(s, "GET", admin(base, "stats"))
        assert stats["creates"] == 2
        assert stats["faults"]["quota"] == 2

    run(always, Config(quota=True))
    run(after_two, Config(quota_after=2))


def test_pdrop_closes_the_connection_quietly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp")

    async def scenario(base: str, s: Session) -> None:
        with pytest.raises(aiohttp.ClientConnectionError):
            await call(s, "POST", f"{base}/responses", {"model": "m", "input": "x"})
        _, stats, _ = await call(s, "GET", admin(base, "stats"))
        assert stats["faults"]["drop"] == 1
        assert stats["creates"] == 0

    run(scenario, Config(pdrop=1.0))
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_faults_repeat_for_the_same_seed() -> None:
    async def statuses(config: Config) -> list[int]:
        async with _client(config) as (base, s):
            return [(await call(s, "POST", f"{base}/responses", {"model": "m", "input": "x"}))[0] for _ in range(20)]

    async def main() -> None:
        a = await statuses(Config(p429=0.3, p5xx=0.2, seed=7))
        b = await statuses(Config(p429=0.3, p5xx=0.2, seed=7))
        assert a == b
        assert {200, 429, 503} <= set(a)

    asyncio.run(main())


# -- admin ---------------------------------------------------------------------------------------------


def test_stats_count_creates_by_key() -> None:
    async def scenario(base: str, s: Session) -> None:
        url = f"{base}/responses"
        for attempt in (1, 2):
            hdr = {"X-Client-Request-Id": f"job1/3/{attempt}"}
            assert (await call(s, "POST", url, {"model": "m", "input": "a"}, hdr))[0] == 200
        assert (await call(s, "POST", url, {"model": "m", "input": "plain"}))[0] == 200
        items = {"model": "m", "input": [{"role": "user", "content": "hi"}]}
        assert (await call(s, "POST", url, items))[0] == 200
        # A rejected create is not counted.
        assert (await call(s, "POST", url, {"model": "m"}, {"X-Client-Request-Id": "job1/9/1"}))[0] == 400

        _, stats, _ = await call(s, "GET", admin(base, "stats"))
        digest = hashlib.sha1(orjson.dumps(items, option=orjson.OPT_SORT_KEYS)).hexdigest()
        assert stats["creates_by_key"] == {"job1/3": 2, "plain": 1, digest: 1}
        assert stats["creates"] == 4
        assert set(stats["faults"]) == {"429", "5xx", "drop", "quota", "401", "404", "capacity"}
        assert set(stats["usage"]) == {
            "input_tokens",
            "cached_tokens",
            "output_tokens",
            "reasoning_tokens",
            "total_tokens",
        }

    run(scenario)


def test_config_endpoint_changes_knobs() -> None:
    body = {"model": "m", "input": "x"}

    async def scenario(base: str, s: Session) -> None:
        assert (await call(s, "POST", f"{base}/responses", body))[0] == 200
        status, cfg, _ = await call(s, "POST", admin(base, "config"), {"p5xx": 1})
        assert status == 200
        assert cfg["p5xx"] == 1.0
        assert cfg["bg_delay"] == 1.0
        assert (await call(s, "POST", f"{base}/responses", body))[0] == 503
        status, _, _ = await call(s, "POST", admin(base, "config"), {"p5xx": 0, "quota": True})
        assert status == 200
        assert (await call(s, "POST", f"{base}/responses", body))[0] == 429
        for bad in ({"nope": 1}, {"quota": "yes"}, {"rpm": 1.5}, {"rpm": True}, {"latency": None}):
            status, data, _ = await call(s, "POST", admin(base, "config"), bad)
            assert status == 400, bad
            ((name, value),) = bad.items()
            assert data["error"]["param"] == name
            assert data["error"]["message"] == f"Bad config field or value: {name}={value!r}"
        status, cfg, _ = await call(s, "POST", admin(base, "config"), {"rpm": None, "api_key": None, "latency": 0})
        assert status == 200
        assert cfg["rpm"] is None and cfg["latency"] == 0.0

    run(scenario)


# -- rate limits -----------------------------------------------------------------------------------------


def test_rpm_limit_gives_429_with_headers() -> None:
    async def scenario(base: str, s: Session) -> None:
        results = [await call(s, "POST", f"{base}/responses", {"model": "m", "input": "x"}) for _ in range(6)]
        ok = [r for r in results if r[0] == 200]
        limited = [r for r in results if r[0] == 429]
        # Two per one-second window; six quick requests span at most two windows.
        assert 2 <= len(ok) <= 4
        assert limited
        _, data, headers = limited[0]
        assert data["error"]["code"] == "rate_limit_exceeded"
        assert data["error"]["type"] == "requests"
        assert int(headers["retry-after"]) >= 1
        assert 0 <= int(headers["retry-after-ms"]) <= 1000
        for _, _, h in results:
            for name in RATE_HEADERS:
                assert name in h
            assert h["x-ratelimit-limit-requests"] == "120"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert ok[0][2]["x-ratelimit-remaining-requests"] in ("0", "1")
        assert headers["x-ratelimit-reset-requests"].endswith("ms")

    run(scenario, Config(rpm=120))


def test_tpm_limit_counts_input_and_max_output_tokens() -> None:
    # 600 TPM = 10 tokens per window; each request charges 1 input + 8 max output tokens = 9.
    body = {"model": "m", "input": "x", "max_output_tokens": 8}

    async def scenario(base: str, s: Session) -> None:
        results = [await call(s, "POST", f"{base}/responses", body) for _ in range(4)]
        limited = [r for r in results if r[0] == 429]
        assert len(limited) >= 2
        assert limited[0][1]["error"]["type"] == "tokens"
        assert results[0][2]["x-ratelimit-limit-tokens"] == "600"

    run(scenario, Config(tpm=600))


def test_format_duration_is_go_style() -> None:
    assert format_duration(0.02) == "20ms"
    assert format_duration(1) == "1s"
    assert format_duration(14.981) == "14.981s"
    assert format_duration(90.5) == "1m30.5s"
    assert format_duration(360) == "6m0s"
    assert format_duration(3600) == "1h0m0s"


# -- command line ----------------------------------------------------------------------------------------


def test_cli_prints_url_serves_and_exits_cleanly_on_sigterm() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner_mock", "--port", "0", "--bg-delay", "0.1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("mock-server listening on http://127.0.0.1:")
        assert line.endswith("/v1")
        base = line.removeprefix("mock-server listening on ")

        async def request() -> int:
            async with aiohttp.ClientSession() as s:
                status, data, _ = await call(s, "POST", f"{base}/responses", {"model": "m", "input": "cli"})
                assert data["output"][0]["content"][0]["text"] == "echo: cli"
                return status

        assert asyncio.run(request()) == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert out == ""
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_cli_exits_on_sigint_too() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner_mock", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("mock-server listening on ")
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert "Traceback" not in err
        assert time.monotonic() - start < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_replies_are_the_same_under_v1_and_under_a_longer_prefix() -> None:
    # `/v1/responses` has routes of its own, found by their path before the prefixed ones: the same handlers,
    # so the same replies and the same counts; any other method on it is still the Invalid URL 404.
    body = {"model": "m", "input": "same", "background": True}

    async def scenario(base: str, s: Session) -> None:
        root = base.removesuffix("/v1")
        seen = []
        for prefix in (f"{root}/v1", f"{root}/openai/v1"):
            status, created, headers = await call(s, "POST", f"{prefix}/responses", body)
            assert status == 200 and created["status"] == "queued"
            assert headers["content-type"] == "application/json"
            got = await call(s, "GET", f"{prefix}/responses/{created['id']}")
            status, fetched, headers = got
            assert status == 200 and fetched["id"] == created["id"]
            assert headers["content-type"] == "application/json"
            seen.append(headers["x-request-id"])
            missing = await call(s, "GET", f"{prefix}/responses/resp_none")
            assert missing[0] == 404 and missing[1]["error"]["code"] == "not_found"
            wrong = await call(s, "DELETE", f"{prefix}/responses")
            assert (
                wrong[0] == 404
                and wrong[1]["error"]["message"] == f"Invalid URL (DELETE {prefix.removeprefix(root)}/responses)"
            )
            created.pop("id")
            created.pop("created_at")
            seen.append(orjson.dumps(created, option=orjson.OPT_SORT_KEYS))
        assert seen[1] == seen[3]  # the same Response object either way
        for rid in (seen[0], seen[2]):
            assert rid.startswith("req_") and len(rid) == 36 and int(rid[4:], 16) >= 0
        assert seen[0] != seen[2]
        _, stats, _ = await call(s, "GET", admin(base, "stats"))
        assert stats["creates"] == 2 and stats["gets"] == 4 and stats["faults"]["404"] == 2

    run(scenario)


def test_a_connection_reads_in_small_pieces_after_its_first_create_or_get(monkeypatch: pytest.MonkeyPatch) -> None:
    # recv(256 KiB), asyncio's default, mapped and unmapped a buffer for every request read (strace: ~3,600 mmap,
    # mremap and munmap each for 4,000 requests); at 64 KiB the heap serves it.
    from runner_mock import routes

    sizes: list[int | None] = []
    small_reads = routes._small_reads

    def spy(request: Any) -> None:
        small_reads(request)
        sizes.append(getattr(request.transport, "max_size", None))

    monkeypatch.setattr(routes, "_small_reads", spy)

    async def scenario(base: str, s: Session) -> None:
        status, created, _ = await call(
            s, "POST", f"{base}/responses", {"model": "m", "input": "x", "background": True}
        )
        assert status == 200
        status, _, _ = await call(s, "GET", f"{base}/responses/{created['id']}")
        assert status == 200

    run(scenario)
    assert sizes == [routes.READ_SIZE, routes.READ_SIZE]
    assert routes.READ_SIZE < 128 * 1024  # glibc's mmap threshold
