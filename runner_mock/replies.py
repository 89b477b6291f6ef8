"""How every reply of the fake API is framed: the OpenAI error body and the headers each reply carries."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from runner_mock.state import MockState

__all__ = ["JSON", "error", "reply"]

JSON = "application/json"
_NO_HEADERS: dict[str, str] = {}
_request_ids = random.Random()  # seeded from the system's randomness, so ids differ between servers


def error(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error body."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def reply(
    state: MockState,
    started: float,
    status: int,
    payload: Any,
    extra: Mapping[str, str] = _NO_HEADERS,
) -> web.Response:
    """Encode `payload` (or send it as is if already bytes) with the headers every API reply carries."""
    now = time.monotonic()
    headers = {} if state.config.no_limit_headers else state.limit_headers(now)
    headers["Content-Type"] = JSON  # as `content_type=JSON` sets it, without aiohttp's checks of that argument
    # 32 random hex digits as before, from a generator of its own (the seeded one draws the faults), without a
    # system call for each reply.
    headers["x-request-id"] = f"req_{_request_ids.getrandbits(128):032x}"
    headers["openai-processing-ms"] = str(int((now - started) * 1000))
    if extra:
        headers.update(extra)
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return web.Response(status=status, body=raw, headers=headers)
