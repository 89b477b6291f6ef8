"""A fast, deterministic fake of the OpenAI Responses API, for the demo, the tests and the benchmarks.

It imports nothing from the `runner` package on purpose: tests treat it as an outside party.

Routes, under any prefix that ends in `/v1` (`/v1/responses`, or Azure-style `/openai/v1/responses`):

    POST /v1/responses                create (foreground or `background: true`)
    GET  /v1/responses/{id}           current Response object
    POST /v1/responses/{id}/cancel    cancel a background response (idempotent)
    GET  /_mock/stats                 counters and summed usage (admin, no key needed)
    POST /_mock/config                change `Config` knobs at runtime (admin, no key needed)

Every other path and method gets a 404 with an OpenAI-style error body, as the real API answers
(`Invalid URL (POST /responses)`), so a base URL without `/v1` fails in the demo as it would for real.

Output and usage are pure functions of the request body (see `usage_for`). Faults are drawn from
`random.Random(seed)`, so a run with the same seed and the same request order repeats exactly.

Rate limits (`rpm`, `tpm`) are enforced over one-second windows of `rpm // 60` requests and
`tpm // 60` tokens, like providers that meter per second. In the `x-ratelimit-*` headers `limit`
is the per-minute figure, while `remaining` and `reset` describe the current one-second window:
`remaining` is what can still be sent before a 429, `reset` is when the window refills.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import logging
import math
import os
import random
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

__all__ = [
    "STATE_KEY",
    "Config",
    "MockState",
    "build_app",
    "format_duration",
    "main",
    "serve",
    "usage_for",
]

# Without limits the headers still describe a plausible, never-binding budget.
NOTIONAL_RPM = 1_000_000
NOTIONAL_TPM = 100_000_000

REASONING_TOKENS: dict[str, int] = {
    "none": 0,
    "minimal": 4,
    "low": 8,
    "medium": 16,
    "high": 32,
    "xhigh": 64,
    "max": 128,
}

# Stored responses are capped so a long benchmark cannot grow memory without bound; the oldest go first,
# the way the real service forgets background responses after a while.
MAX_STORED = 100_000

_TERMINAL = frozenset({"completed", "incomplete", "failed", "cancelled"})
_JSON = "application/json"
_NO_HEADERS: dict[str, str] = {}
_FROZEN: dict[str, Any] = {}


@dataclass
class Config:
    """Fault and behaviour knobs; every fault defaults to off."""

    api_key: str | None = None
    latency: float = 0.0
    latency_jitter: float = 0.0  # a create takes latency * (1 +- jitter), uniformly: real latencies vary
    bg_delay: float = 1.0
    p429: float = 0.0
    retry_after: float = 0.2
    p5xx: float = 0.0
    pdrop: float = 0.0
    quota: bool = False
    quota_after: int | None = None
    bg_fail: float = 0.0
    bg_fail_code: str = "server_error"
    poll_p429: float = 0.0
    rpm: int | None = None
    tpm: int | None = None
    seed: int = 0


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "api_key": (str, type(None)),
    "latency": (float, int),
    "latency_jitter": (float, int),
    "bg_delay": (float, int),
    "p429": (float, int),
    "retry_after": (float, int),
    "p5xx": (float, int),
    "pdrop": (float, int),
    "quota": (bool,),
    "quota_after": (int, type(None)),
    "bg_fail": (float, int),
    "bg_fail_code": (str,),
    "poll_p429": (float, int),
    "rpm": (int, type(None)),
    "tpm": (int, type(None)),
    "seed": (int,),
}


class _Record:
    """One stored response, advanced lazily from its creation time when it is looked at."""

    __slots__ = ("background", "body", "created_mono", "delay", "final", "raw")

    def __init__(self, body: dict[str, Any], background: bool, delay: float, final: dict[str, Any]) -> None:
        self.body = body
        self.background = background
        self.created_mono = time.monotonic()
        self.delay = delay
        # Fields the body takes on when a background response finishes (status, output, usage, ...).
        self.final = final
        # Once a response has been shown finished it never changes again, so it is kept encoded: this is
        # cheaper to serve and several times smaller than the dict. Set exactly when usage was counted.
        self.raw: bytes | None = None


class MockState:
    """Everything one server instance remembers: config, RNG, stored responses, counters, windows."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.responses: OrderedDict[str, _Record] = OrderedDict()
        self.creates = 0
        self.gets = 0
        self.cancels = 0
        self.faults: dict[str, int] = {"429": 0, "5xx": 0, "drop": 0, "quota": 0, "401": 0, "404": 0}
        self.creates_by_key: dict[str, int] = {}
        self.usage: dict[str, int] = {
            "input_tokens": 0,
            "cached_tokens": 0,
            "output_tokens": 0,
            "reasoning_tokens": 0,
            "total_tokens": 0,
        }
        self.window = -1
        self.window_requests = 0
        self.window_tokens = 0
        # A per-process prefix keeps ids unique across restarts; the counter keeps them cheap.
        self._prefix = os.urandom(8).hex()
        self._ids = itertools.count(1)

    def new_id(self, kind: str) -> str:
        """Return a fresh id such as `resp_<48 hex>`."""
        return f"{kind}_{self._prefix}{next(self._ids):032x}"

    def stats(self) -> dict[str, Any]:
        """The `/_mock/stats` document."""
        return {
            "creates": self.creates,
            "gets": self.gets,
            "cancels": self.cancels,
            "faults": dict(self.faults),
            "creates_by_key": dict(self.creates_by_key),
            "usage": dict(self.usage),
        }

    def store(self, rid: str, record: _Record) -> None:
        """Remember a response, forgetting the oldest ones past `MAX_STORED`."""
        self.responses[rid] = record
        if len(self.responses) > MAX_STORED:
            self.responses.popitem(last=False)

    # -- rate limits -------------------------------------------------------------------------------

    def _roll(self, now: float) -> int:
        w = math.floor(now)
        if w != self.window:
            self.window = w
            self.window_requests = 0
            self.window_tokens = 0
        return w

    def limit_headers(self, now: float) -> dict[str, str]:
        """The six `x-ratelimit-*` headers for the current window."""
        w = self._roll(now)
        rpm, tpm = self.config.rpm or NOTIONAL_RPM, self.config.tpm or NOTIONAL_TPM
        req_cap, tok_cap = max(1, rpm // 60), max(1, tpm // 60)
        reset = format_duration(w + 1 - now)
        return {
            "x-ratelimit-limit-requests": str(rpm),
            "x-ratelimit-remaining-requests": str(max(0, req_cap - self.window_requests)),
            "x-ratelimit-reset-requests": reset if self.window_requests else "0s",
            "x-ratelimit-limit-tokens": str(tpm),
            "x-ratelimit-remaining-tokens": str(max(0, tok_cap - self.window_tokens)),
            "x-ratelimit-reset-tokens": reset if self.window_tokens else "0s",
        }

    def charge(self, now: float, tokens: int) -> str | None:
        """Take one request and `tokens` from the window; return "requests"/"tokens" if over a limit."""
        self._roll(now)
        rpm, tpm = self.config.rpm, self.config.tpm
        if rpm and self.window_requests + 1 > max(1, rpm // 60):
            return "requests"
        # A request bigger than one window still goes through alone, or it could never succeed.
        if tpm and self.window_tokens and self.window_tokens + tokens > max(1, tpm // 60):
            return "tokens"
        self.window_requests += 1
        self.window_tokens += tokens
        return None


STATE_KEY = web.AppKey("mock_state", MockState)


# -- deterministic content ---------------------------------------------------------------------------


def _input_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        return ""
    parts: list[str] = []
    for item in value:
        if not isinstance(item, dict):
            continue
        # Only messages carry text the model reads; other item types (function outputs, references) don't.
        if "role" not in item and item.get("type", "message") != "message":
            continue
        content = item.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    text = part.get("text")
                    if isinstance(text, str):
                        parts.append(text)
    return "".join(parts)


def usage_for(body: Mapping[str, Any]) -> tuple[str, dict[str, Any], bool]:
    """Return (output text, usage, truncated) for a create request, deterministically.

    The prompt text is `instructions` plus every text in `input`; the output echoes the first 200
    characters of the `input` text only. Truncation happens when `max_output_tokens` is too small.
    """
    instructions = body.get("instructions")
    input_text = _input_text(body.get("input"))
    prompt = (instructions if isinstance(instructions, str) else "") + input_text
    input_tokens = max(1, math.ceil(len(prompt) / 4))
    cached = input_tokens // 2 if "prompt_cache_key" in body else 0
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    reasoning_tokens = REASONING_TOKENS.get(effort, 0) if isinstance(effort, str) else 0
    text = "echo: " + input_text[:200]
    output_tokens = max(1, math.ceil(len(text) / 4)) + reasoning_tokens
    limit = body.get("max_output_tokens")
    truncated = isinstance(limit, int) and output_tokens > limit
    if truncated:
        assert isinstance(limit, int)
        output_tokens = limit
        text = text[: max(0, limit - reasoning_tokens) * 4]
    usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }
    return text, usage, truncated


def _service_tier(requested: Any) -> str:
    if requested == "fast":
        return "priority"
    if requested in ("default", "flex", "scale", "priority"):
        return str(requested)
    return "default"


def _skeleton(body: Mapping[str, Any], rid: str, created_at: int) -> dict[str, Any]:
    reasoning = body.get("reasoning")
    conversation = body.get("conversation")
    if isinstance(conversation, str):
        conversation = {"id": conversation}
    text = body.get("text")
    return {
        "id": rid,
        "object": "response",
        "created_at": created_at,
        "completed_at": None,
        "status": "queued",
        "error": None,
        "incomplete_details": None,
        "model": body["model"],
        "instructions": body.get("instructions"),
        "output": [],
        "usage": None,
        "background": bool(body.get("background")),
        "store": body.get("store", True) is not False,
        "metadata": body.get("metadata") or {},
        "max_output_tokens": body.get("max_output_tokens"),
        "temperature": body.get("temperature", 1.0),
        "top_p": body.get("top_p", 1.0),
        "previous_response_id": body.get("previous_response_id"),
        "conversation": conversation if isinstance(conversation, dict) else None,
        "prompt_cache_key": body.get("prompt_cache_key"),
        "service_tier": _service_tier(body.get("service_tier")),
        "truncation": "disabled",
        "text": text if isinstance(text, dict) else {"format": {"type": "text"}},
        "reasoning": {
            "effort": reasoning.get("effort") if isinstance(reasoning, dict) else None,
            "summary": reasoning.get("summary") if isinstance(reasoning, dict) else None,
        },
        "tools": body.get("tools") or [],
        "tool_choice": body.get("tool_choice", "auto"),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
    }


def _final_fields(
    state: MockState, computed: tuple[str, dict[str, Any], bool], completed_at: int, fail: bool
) -> dict[str, Any]:
    if fail:
        code = state.config.bg_fail_code
        return {
            "status": "failed",
            "error": {"code": code, "message": f"The model failed to generate a response ({code})."},
            "output": [],
            "usage": None,
        }
    text, usage, truncated = computed
    message = {
        "id": state.new_id("msg"),
        "type": "message",
        "status": "incomplete" if truncated else "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    return {
        "status": "incomplete" if truncated else "completed",
        "completed_at": None if truncated else completed_at,
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "output": [message],
        "usage": usage,
    }


# -- HTTP helpers ------------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """Format seconds like Go's time.Duration: `20ms`, `1s`, `14.981s`, `6m0s`, `1h0m0s`."""
    ms = max(0, round(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _reply(
    state: MockState,
    started: float,
    status: int,
    payload: Any,
    extra: Mapping[str, str] = _NO_HEADERS,
) -> web.Response:
    """Encode `payload` (or send it as is if already bytes) with the headers every API reply carries."""
    now = time.monotonic()
    headers = state.limit_headers(now)
    headers["x-request-id"] = "req_" + os.urandom(16).hex()
    headers["openai-processing-ms"] = str(int((now - started) * 1000))
    if extra:
        headers.update(extra)
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return web.Response(status=status, body=raw, content_type=_JSON, headers=headers)


def _error(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _retry_headers(seconds: float, whole: bool) -> dict[str, str]:
    after = str(max(1, math.ceil(seconds))) if whole else f"{seconds:g}"
    return {"retry-after": after, "retry-after-ms": str(max(0, round(seconds * 1000)))}


def _authorized(state: MockState, request: web.Request) -> bool:
    key = state.config.api_key
    if key is None:
        return True
    auth = request.headers.get("Authorization")
    if auth is not None and (auth == key or auth == "Bearer " + key):
        return True
    return request.headers.get("api-key") == key


def _unauthorized(state: MockState, started: float) -> web.Response:
    state.faults["401"] += 1
    # Never echo the key back: the real API only shows a redacted hint, and logs would leak it.
    return _reply(state, started, 401, _error("Incorrect API key provided", "invalid_request_error", "invalid_api_key"))


def _rate_limited(state: MockState, started: float, retry_after: float, kind: str, whole: bool = False) -> web.Response:
    state.faults["429"] += 1
    message = f"Rate limit reached for {kind}. Please try again in {format_duration(retry_after)}."
    headers = _retry_headers(retry_after, whole)
    return _reply(state, started, 429, _error(message, kind, "rate_limit_exceeded"), headers)


def _not_found(state: MockState, started: float, rid: str) -> web.Response:
    message = f"Response with id '{rid}' not found."
    return _reply(state, started, 404, _error(message, "invalid_request_error", "not_found"))


def _create_key(request: web.Request, body: Mapping[str, Any]) -> str:
    header = request.headers.get("X-Client-Request-Id")
    if header is not None:
        return header.rpartition("/")[0] if "/" in header else header
    value = body.get("input")
    if isinstance(value, str):
        return value
    return hashlib.sha1(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _validate(raw: bytes) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None, _error(
            "We could not parse the JSON body of your request.", "invalid_request_error", "invalid_json"
        )
    if not isinstance(body, dict):
        return None, _error("The request body must be a JSON object.", "invalid_request_error", "invalid_body")
    for field in ("model", "input"):
        if field not in body:
            message = f"Missing required parameter: '{field}'."
            return None, _error(message, "invalid_request_error", "missing_required_parameter", field)
    if not isinstance(body["model"], str):
        return None, _error("Invalid type for 'model'.", "invalid_request_error", "invalid_type", "model")
    if not isinstance(body["input"], str | list):
        return None, _error("Invalid type for 'input'.", "invalid_request_error", "invalid_type", "input")
    limit = body.get("max_output_tokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        message = "Invalid value for 'max_output_tokens'."
        return None, _error(message, "invalid_request_error", "invalid_value", "max_output_tokens")
    return body, None


def _advance(record: _Record) -> str:
    """Bring a background record's status up to date from the clock and return it."""
    body = record.body
    status: str = body["status"]
    if status == "queued" or status == "in_progress":
        elapsed = time.monotonic() - record.created_mono
        if elapsed >= record.delay:
            body.update(record.final)
            status = body["status"]
        elif elapsed >= record.delay / 2:
            status = body["status"] = "in_progress"
    return status


def _shown(state: MockState, record: _Record) -> bytes:
    """Encode the record as it is now; the first time it is shown finished, add its usage to the totals."""
    if record.raw is not None:
        return record.raw
    if _advance(record) not in _TERMINAL:
        return orjson.dumps(record.body)
    usage = record.body["usage"]
    if usage is not None:
        totals = state.usage
        totals["input_tokens"] += usage["input_tokens"]
        totals["cached_tokens"] += usage["input_tokens_details"]["cached_tokens"]
        totals["output_tokens"] += usage["output_tokens"]
        totals["reasoning_tokens"] += usage["output_tokens_details"]["reasoning_tokens"]
        totals["total_tokens"] += usage["total_tokens"]
    # orjson's buffer is several KiB whatever the size of the JSON; keep an exact-size copy instead.
    record.raw = raw = bytes(memoryview(orjson.dumps(record.body)))
    # Only `raw` is read from now on; dropping the dicts keeps a long run's memory small.
    record.body = record.final = _FROZEN
    return raw


def _drop(request: web.Request) -> web.Response:
    transport = request.transport
    if transport is not None:
        transport.abort()
    # aiohttp discards this once it sees the transport is gone; the client gets no HTTP response.
    return web.Response(status=500)


class _QuietDisconnects(logging.Filter):
    """Hide the server's complaints about connections we abort on purpose (`pdrop`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ConnectionError)


# -- handlers ----------------------------------------------------------------------------------------


async def _create(request: web.Request) -> web.Response:
    started = time.monotonic()
    state = request.app[STATE_KEY]
    config = state.config
    if not _authorized(state, request):
        return _unauthorized(state, started)
    body, problem = _validate(await request.read())
    if body is None:
        return _reply(state, started, 400, problem)

    if config.quota or (config.quota_after is not None and state.creates >= config.quota_after):
        state.faults["quota"] += 1
        message = "You exceeded your current quota, please check your plan and billing details."
        return _reply(state, started, 429, _error(message, "insufficient_quota", "insufficient_quota"))

    computed = usage_for(body)
    limit = body.get("max_output_tokens")
    charge = computed[1]["input_tokens"] + (limit if isinstance(limit, int) else 0)
    now = time.monotonic()
    if config.tpm and charge > config.tpm:
        state.faults["429"] += 1
        message = f"Request too large: limit {config.tpm} tokens per minute, requested {charge}."
        return _reply(state, started, 429, _error(message, "tokens", "rate_limit_exceeded"))
    over = state.charge(now, charge)
    if over is not None:
        return _rate_limited(state, started, math.floor(now) + 1 - now, over, whole=True)

    if config.pdrop or config.p5xx or config.p429:
        draw = state.rng.random()
        if draw < config.pdrop:
            state.faults["drop"] += 1
            if config.latency > 0:
                await asyncio.sleep(config.latency)
            return _drop(request)
        if draw < config.pdrop + config.p5xx:
            state.faults["5xx"] += 1
            message = "The server is overloaded or not ready yet."
            return _reply(state, started, 503, _error(message, "server_error", "server_is_overloaded"))
        if draw < config.pdrop + config.p5xx + config.p429:
            return _rate_limited(state, started, config.retry_after, "requests")

    background = bool(body.get("background"))
    fail = background and config.bg_fail > 0 and state.rng.random() < config.bg_fail
    state.creates += 1
    key = _create_key(request, body)
    state.creates_by_key[key] = state.creates_by_key.get(key, 0) + 1

    rid = state.new_id("resp")
    created_at = int(time.time())
    response = _skeleton(body, rid, created_at)
    if background:
        delay = max(0.0, config.bg_delay)
        final = _final_fields(state, computed, created_at + math.ceil(delay), fail)
        record = _Record(response, True, delay, final)
        state.store(rid, record)
        if config.latency > 0:
            await asyncio.sleep(config.latency / 10)
        return _reply(state, started, 200, _shown(state, record))

    if config.latency > 0:
        delay = config.latency
        if config.latency_jitter:
            delay *= 1.0 + state.rng.uniform(-config.latency_jitter, config.latency_jitter)
        await asyncio.sleep(delay)
    response.update(_final_fields(state, computed, int(time.time()), False))
    record = _Record(response, False, 0.0, {})
    if response["store"]:
        state.store(rid, record)
    return _reply(state, started, 200, _shown(state, record))


async def _retrieve(request: web.Request) -> web.Response:
    started = time.monotonic()
    state = request.app[STATE_KEY]
    config = state.config
    if not _authorized(state, request):
        return _unauthorized(state, started)
    if config.poll_p429 and state.rng.random() < config.poll_p429:
        return _rate_limited(state, started, config.retry_after, "requests")
    state.gets += 1
    if config.latency > 0:
        await asyncio.sleep(config.latency / 10)
    rid = request.match_info["rid"]
    record = state.responses.get(rid)
    if record is None:
        return _not_found(state, started, rid)
    return _reply(state, started, 200, _shown(state, record))


async def _cancel(request: web.Request) -> web.Response:
    started = time.monotonic()
    state = request.app[STATE_KEY]
    if not _authorized(state, request):
        return _unauthorized(state, started)
    state.cancels += 1
    if state.config.latency > 0:
        await asyncio.sleep(state.config.latency / 10)
    rid = request.match_info["rid"]
    record = state.responses.get(rid)
    if record is None:
        return _not_found(state, started, rid)
    if not record.background:
        message = "Only responses created with background=true can be cancelled"
        return _reply(state, started, 400, _error(message, "invalid_request_error", None))
    if record.raw is None and _advance(record) not in _TERMINAL:
        record.body.update(status="cancelled", output=[], usage=None)
    return _reply(state, started, 200, _shown(state, record))


async def _invalid_url(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.faults["404"] += 1
    message = f"Invalid URL ({request.method} {request.path})"
    return _reply(state, time.monotonic(), 404, _error(message, "invalid_request_error", None))


async def _stats(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return web.Response(body=orjson.dumps(state.stats()), content_type=_JSON)


async def _config(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        changes = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        changes = None
    if not isinstance(changes, dict):
        body = orjson.dumps(_error("Body must be a JSON object.", "invalid_request_error", "invalid_body"))
        return web.Response(status=400, body=body, content_type=_JSON)
    for name, value in changes.items():
        types = _FIELD_TYPES.get(name)
        if types is None or not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            message = f"Bad config field or value: {name}={value!r}"
            body = orjson.dumps(_error(message, "invalid_request_error", "invalid_value", name))
            return web.Response(status=400, body=body, content_type=_JSON)
    for name, value in changes.items():
        setattr(state.config, name, float(value) if float in _FIELD_TYPES[name] else value)
    if "seed" in changes:
        state.rng.seed(state.config.seed)
    return web.Response(body=orjson.dumps(dataclasses.asdict(state.config)), content_type=_JSON)


# -- app, in-process server, CLI ---------------------------------------------------------------------


def build_app(config: Config) -> web.Application:
    """Build the aiohttp application serving `config`; its state is `app[STATE_KEY]`."""
    app = web.Application()
    app[STATE_KEY] = MockState(config)
    # Any run of path segments ending in `v1`: `/v1`, `/openai/v1`.
    prefix = "/{prefix:(?:[^/]+/)*v1}"
    app.router.add_post(f"{prefix}/responses", _create)
    app.router.add_get(f"{prefix}/responses/{{rid}}", _retrieve)
    app.router.add_post(f"{prefix}/responses/{{rid}}/cancel", _cancel)
    app.router.add_get("/_mock/stats", _stats)
    app.router.add_post("/_mock/config", _config)
    # Last, so it only gets what nothing above matched (a known path with another method included).
    app.router.add_route("*", "/{tail:.*}", _invalid_url)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _QuietDisconnects) for f in server_log.filters):
        server_log.addFilter(_QuietDisconnects())
    return app


def _base_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


@contextlib.asynccontextmanager
async def _started(app: web.Application, host: str, port: int) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        yield _base_url(host, int(bound))
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serve(config: Config, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run a mock server in this event loop; yield its base URL, e.g. `http://127.0.0.1:PORT/v1`."""
    async with _started(build_app(config), host, port) as url:
        yield url


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mock-server",
        description="Fake OpenAI Responses API server, answering under /v1 (and any prefix ending in /v1).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8787, help="port to listen on; 0 picks a free port")
    p.add_argument("--api-key", default=None, help="require this key (None: accept any key, or none)")
    p.add_argument("--latency", type=float, default=0.0, help="seconds per foreground create")
    p.add_argument("--latency-jitter", type=float, default=0.0, help="creates take latency x (1 +- this), uniformly")
    p.add_argument("--bg-delay", type=float, default=1.0, help="seconds until a background response ends")
    p.add_argument("--p429", type=float, default=0.0, help="fraction of creates answered 429")
    p.add_argument("--retry-after", type=float, default=0.2, help="retry-after seconds on injected 429s")
    p.add_argument("--p5xx", type=float, default=0.0, help="fraction of creates answered 503")
    p.add_argument("--pdrop", type=float, default=0.0, help="fraction of creates whose connection drops")
    p.add_argument("--quota", action="store_true", help="answer every create with insufficient_quota")
    p.add_argument("--quota-after", type=int, default=None, help="insufficient_quota after N creates")
    p.add_argument("--bg-fail", type=float, default=0.0, help="fraction of background responses that fail")
    p.add_argument("--bg-fail-code", default="server_error", help="error code of background responses that fail")
    p.add_argument("--poll-p429", type=float, default=0.0, help="fraction of GET polls answered 429")
    p.add_argument("--rpm", type=int, default=None, help="requests per minute (per-second windows)")
    p.add_argument("--tpm", type=int, default=None, help="tokens per minute (per-second windows)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault draws")
    return p


async def _serve_forever(config: Config, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with serve(config, host, port) as url:
        print(f"mock-server listening on {url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (`python -m runner.mock_server`, `runner mock-server`)."""
    args = _parser().parse_args(argv)
    config = Config(
        api_key=args.api_key,
        latency=args.latency,
        latency_jitter=args.latency_jitter,
        bg_delay=args.bg_delay,
        p429=args.p429,
        retry_after=args.retry_after,
        p5xx=args.p5xx,
        pdrop=args.pdrop,
        quota=args.quota,
        quota_after=args.quota_after,
        bg_fail=args.bg_fail,
        bg_fail_code=args.bg_fail_code,
        poll_p429=args.poll_p429,
        rpm=args.rpm,
        tpm=args.tpm,
        seed=args.seed,
    )
    try:
        asyncio.run(_serve_forever(config, args.host, args.port))
    except OSError as exc:
        print(f"mock-server: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
