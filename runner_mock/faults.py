"""The failures the fake API answers with: bad keys, rate limits, unknown ids, dropped connections."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from runner_mock.replies import error, reply
from runner_mock.state import MockState, format_duration

__all__ = [
    "ERROR_KEY",
    "QuietDisconnects",
    "authorized",
    "drop",
    "not_found",
    "previous_not_found",
    "rate_limited",
    "scripted_error",
    "unauthorized",
]

# A line whose `metadata.mock_error` is an error code is answered 400 with that code, every time: a test
# scripts one line of a file to fail for good (a parent whose children must then fail too).
ERROR_KEY = "mock_error"


def _retry_headers(seconds: float, whole: bool) -> dict[str, str]:
    after = str(max(1, math.ceil(seconds))) if whole else f"{seconds:g}"
    return {"retry-after": after, "retry-after-ms": str(max(0, round(seconds * 1000)))}


def authorized(state: MockState, request: web.Request) -> bool:
    """Whether the request carries the configured key (any request does when no key is set)."""
    key = state.config.api_key
    if key is None:
        return True
    auth = request.headers.get("Authorization")
    if auth is not None and (auth == key or auth == "Bearer " + key):
        return True
    return request.headers.get("api-key") == key


def unauthorized(state: MockState, started: float) -> web.Response:
    """The 401 for a missing or wrong key."""
    state.faults["401"] += 1
    # Never echo the key back: the real API only shows a redacted hint, and logs would leak it.
    return reply(state, started, 401, error("Incorrect API key provided", "invalid_request_error", "invalid_api_key"))


def rate_limited(state: MockState, started: float, retry_after: float, kind: str, whole: bool = False) -> web.Response:
    """A 429 for `kind` ("requests" or "tokens") with retry-after headers (whole seconds if `whole`)."""
    state.faults["429"] += 1
    message = f"Rate limit reached for {kind}. Please try again in {format_duration(retry_after)}."
    headers = _retry_headers(retry_after, whole)
    return reply(state, started, 429, error(message, kind, "rate_limit_exceeded"), headers)


def not_found(state: MockState, started: float, rid: str) -> web.Response:
    """The 404 for an unknown response id."""
    message = f"Response with id '{rid}' not found."
    return reply(state, started, 404, error(message, "invalid_request_error", "not_found"))


def previous_not_found(state: MockState, started: float, rid: object) -> web.Response:
    """The 400 for a `previous_response_id` this server never stored (as the real API answers it)."""
    message = f"Previous response with id '{rid}' not found."
    body = error(message, "invalid_request_error", "previous_response_not_found", "previous_response_id")
    return reply(state, started, 400, body)


def scripted_error(state: MockState, started: float, body: Mapping[str, Any]) -> web.Response | None:
    """The 400 a line asks for with `metadata.mock_error` (see ERROR_KEY), or None."""
    metadata = body.get("metadata")
    code = metadata.get(ERROR_KEY) if isinstance(metadata, dict) else None
    if not isinstance(code, str):
        return None
    return reply(state, started, 400, error(f"Scripted failure ({code}).", "invalid_request_error", code))


def drop(request: web.Request) -> web.Response:
    """Abort the connection: the client gets no HTTP response at all."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    # aiohttp discards this once it sees the transport is gone; the client gets no HTTP response.
    return web.Response(status=500)


class QuietDisconnects(logging.Filter):
    """Hide the server's complaints about connections we abort on purpose (`pdrop`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ConnectionError)
