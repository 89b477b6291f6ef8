"""The aiohttp handlers: create, retrieve and cancel responses, and the admin routes under `/_mock/`."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from runner_mock import knobs
from runner_mock.batches import BATCHES_KEY, add_batch_routes
from runner_mock.content import final_fields, prompt_text, service_tier, skeleton, usage_for, validate
from runner_mock.faults import (
    authorized,
    drop,
    not_found,
    previous_not_found,
    rate_limited,
    scripted_error,
    unauthorized,
)
from runner_mock.replies import JSON, error, reply
from runner_mock.state import STATE_KEY, TERMINAL, Record, status_of

__all__ = ["POLL_AFTER_HEADER", "add_routes"]

POLL_AFTER_HEADER = "openai-poll-after-ms"
_NO_HINT: dict[str, str] = {}


def _create_key(request: web.Request, body: Mapping[str, Any]) -> str:
    header = request.headers.get("X-Client-Request-Id")
    if header is not None:
        return header.rpartition("/")[0] if "/" in header else header
    value = body.get("input")
    if isinstance(value, str):
        return value
    return hashlib.sha1(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


# asyncio's plain-socket transport reads with recv(256 KiB): above glibc's mmap threshold, so each read of a
# request mapped 256 KiB, shrank it (mremap) and unmapped it: ~3,600 of each for 4,000 requests (strace), and
# 22 us against 3 us for a 1.5 KB read at 64 KiB (a socket pair). Set on the connection at its first create or
# GET, so its later requests, the most of a keep-alive connection's, read at most this much at a time.
READ_SIZE = 64 * 1024


def _small_reads(request: web.Request) -> None:
    transport = request.transport
    if transport is not None and getattr(transport, "max_size", 0) > READ_SIZE:
        transport.max_size = READ_SIZE  # type: ignore[attr-defined]  # uvloop's transports have none: untouched


async def _create(request: web.Request) -> web.Response:
    started = time.monotonic()
    _small_reads(request)
    state = request.app[STATE_KEY]
    config = state.config
    if not authorized(state, request):
        return unauthorized(state, started)
    body, problem = validate(await request.read())
    if body is None:
        return reply(state, started, 400, problem)
    previous = body.get("previous_response_id")
    parent = None if previous is None else state.responses.get(previous) if isinstance(previous, str) else None
    if previous is not None and parent is None:
        return previous_not_found(state, started, previous)
    if (scripted := scripted_error(state, started, body)) is not None:
        return scripted

    if config.quota or (config.quota_after is not None and state.creates >= config.quota_after):
        state.faults["quota"] += 1
        message = "You exceeded your current quota, please check your plan and billing details."
        return reply(state, started, 429, error(message, "insufficient_quota", "insufficient_quota"))

    key = _create_key(request, body)
    computed = usage_for(body, state.creates_by_key.get(key, 0))
    limit = body.get("max_output_tokens")
    charge = computed[1]["input_tokens"] + (limit if isinstance(limit, int) else 0)
    now = time.monotonic()
    if config.tpm and charge > config.tpm:
        state.faults["429"] += 1
        message = f"Request too large: limit {config.tpm} tokens per minute, requested {charge}."
        return reply(state, started, 429, error(message, "tokens", "rate_limit_exceeded"))
    over = state.charge(now, charge)
    if over is not None:
        return rate_limited(state, started, math.floor(now) + 1 - now, over, whole=True)

    # Faults are drawn from `random.Random(seed)`, so a run with the same seed and request order repeats.
    if config.pdrop or config.p5xx or config.p429 or config.p500:
        draw = state.rng.random()
        if draw < config.pdrop:
            state.faults["drop"] += 1
            if config.latency > 0:
                await asyncio.sleep(config.latency)
            return drop(request)
        if draw < config.pdrop + config.p5xx:
            state.faults["5xx"] += 1
            message = "The server is overloaded or not ready yet."
            return reply(state, started, 503, error(message, "server_error", "server_is_overloaded"))
        if draw < config.pdrop + config.p5xx + config.p429:
            return rate_limited(state, started, config.retry_after, "requests")
        if draw < config.pdrop + config.p5xx + config.p429 + config.p500:
            state.faults["5xx"] += 1
            message = "The server had an error while processing your request."
            return reply(state, started, 500, error(message, "server_error", "server_error"))

    flex = body.get("service_tier") == "flex"
    if flex and (config.flex_busy > 0 or (config.flex_p429 and state.rng.random() < config.flex_p429)):
        # The flex tier sheds load with an unbilled 429 that is not a rate limit (no retry-after, no window).
        config.flex_busy = max(0, config.flex_busy - 1)
        state.faults["capacity"] += 1
        message = "Resource Unavailable: flex processing has no capacity right now. You will not be charged."
        return reply(state, started, 429, error(message, "resource_unavailable", "resource_unavailable"))

    background = bool(body.get("background"))
    fail = background and config.bg_fail > 0 and state.rng.random() < config.bg_fail
    # Only a request that is answered is processed, so only it reads and fills the prompt cache.
    computed[1]["input_tokens_details"]["cached_tokens"] = state.cache.cached_tokens(body, prompt_text(body), now)
    state.creates += 1
    tier = service_tier(body.get("service_tier"))
    state.tiers[tier] = state.tiers.get(tier, 0) + 1
    state.creates_by_key[key] = state.creates_by_key.get(key, 0) + 1

    rid = state.new_id("resp")
    if parent is not None:
        state.note_continued(rid, str(previous), status_of(parent))
    created_at = int(time.time())
    response = skeleton(body, rid, created_at)
    if background:
        delay = max(0.0, config.bg_delay)
        final = final_fields(state, computed, created_at + math.ceil(delay), fail)
        record = Record(response, True, delay, final)
        state.store(rid, record)
        if config.latency > 0:
            await asyncio.sleep(config.latency / 10)
        return reply(state, started, 200, state.shown(record), _poll_hint(config, record))

    latency = config.flex_latency if flex and config.flex_latency is not None else config.latency
    if latency > 0:
        delay = latency
        if config.latency_jitter:
            delay *= 1.0 + state.rng.uniform(-config.latency_jitter, config.latency_jitter)
        await asyncio.sleep(delay)
    response.update(final_fields(state, computed, int(time.time()), False))
    record = Record(response, False, 0.0, {})
    if response["store"]:
        state.store(rid, record)
    return reply(state, started, 200, state.shown(record))


async def _retrieve(request: web.Request) -> web.Response:
    started = time.monotonic()
    _small_reads(request)
    state = request.app[STATE_KEY]
    config = state.config
    if not authorized(state, request):
        return unauthorized(state, started)
    if config.poll_p429 and state.rng.random() < config.poll_p429:
        return rate_limited(state, started, config.retry_after, "requests")
    state.gets += 1
    if config.latency > 0:
        await asyncio.sleep(config.latency / 10)
    rid = request.match_info["rid"]
    record = state.responses.get(rid)
    if record is None:
        return not_found(state, started, rid)
    return reply(state, started, 200, state.shown(record), _poll_hint(config, record))


def _poll_hint(config: knobs.Config, record: Record) -> Mapping[str, str]:
    """`openai-poll-after-ms` for a background response still running, when the `poll_hint` knob is on: the ms
    until it ends, rounded up (a server's honest hint; the runner's first GET goes then)."""
    if not config.poll_hint or record.raw is not None or not record.background:
        return _NO_HINT
    left = record.created_mono + record.delay - time.monotonic()
    return {POLL_AFTER_HEADER: str(max(math.ceil(left * 1000), 0))}


async def _cancel(request: web.Request) -> web.Response:
    started = time.monotonic()
    state = request.app[STATE_KEY]
    if not authorized(state, request):
        return unauthorized(state, started)
    state.cancels += 1
    if state.config.latency > 0:
        await asyncio.sleep(state.config.latency / 10)
    rid = request.match_info["rid"]
    record = state.responses.get(rid)
    if record is None:
        return not_found(state, started, rid)
    if not record.background:
        message = "Only responses created with background=true can be cancelled"
        return reply(state, started, 400, error(message, "invalid_request_error", None))
    if record.raw is None and record.advance() not in TERMINAL:
        record.body.update(status="cancelled", output=[], usage=None)
    return reply(state, started, 200, state.shown(record))


async def _invalid_url(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.faults["404"] += 1
    message = f"Invalid URL ({request.method} {request.path})"
    return reply(state, time.monotonic(), 404, error(message, "invalid_request_error", None))


async def _stats(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    stats = {**state.stats(), "batch": request.app[BATCHES_KEY].stats()}
    return web.Response(body=orjson.dumps(stats), content_type=JSON)


async def _config(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        changes = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        changes = None
    if not isinstance(changes, dict):
        body = orjson.dumps(error("Body must be a JSON object.", "invalid_request_error", "invalid_body"))
        return web.Response(status=400, body=body, content_type=JSON)
    bad = knobs.bad_change(changes)
    if bad is not None:
        message = f"Bad config field or value: {bad}={changes[bad]!r}"
        body = orjson.dumps(error(message, "invalid_request_error", "invalid_value", bad))
        return web.Response(status=400, body=body, content_type=JSON)
    knobs.apply_changes(state.config, changes)
    if "seed" in changes:
        state.rng.seed(state.config.seed)
    return web.Response(body=orjson.dumps(dataclasses.asdict(state.config)), content_type=JSON)


def add_routes(app: web.Application) -> None:
    """Route the API under any prefix ending in `/v1`, the admin routes, and a 404 for everything else."""
    # Any run of path segments ending in `v1`: `/v1`, `/openai/v1`.
    prefix = "/{prefix:(?:[^/]+/)*v1}"
    # The plain `/v1` spellings first: aiohttp finds those by their path in a dict, where every prefixed route
    # sits under `/` and is tried in turn, a regular expression each (a background run's creates and GETs).
    app.router.add_post("/v1/responses", _create)
    app.router.add_get("/v1/responses/{rid}", _retrieve)
    app.router.add_post(f"{prefix}/responses", _create)
    app.router.add_get(f"{prefix}/responses/{{rid}}", _retrieve)
    app.router.add_post(f"{prefix}/responses/{{rid}}/cancel", _cancel)
    add_batch_routes(app, prefix)
    app.router.add_get("/_mock/stats", _stats)
    app.router.add_post("/_mock/config", _config)
    # Last, so it only gets what nothing above matched (a known path with another method included).
    app.router.add_route("*", "/{tail:.*}", _invalid_url)
