"""The flex lane: every request goes out with `service_tier: "flex"`, capacity 429s wait patiently, and a
request still unanswered after `--flex-fallback` goes out on the default tier instead.

Flex costs what the Batch API costs but sheds load with 429 `resource_unavailable` (not billed). Those say
nothing about this account's rate, so they neither pause the pool nor shrink its concurrency (the sender
asks `is_capacity`); the request waits longer each time instead, without using up an attempt.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import orjson

FLEX_TIER = "flex"
FALLBACK_TIER = "default"  # the standard tier: what a request without service_tier would get on most projects
CAPACITY_FIRST_WAIT = 1.0  # seconds before the first retry of a capacity 429, doubling each time
CAPACITY_MAX_WAIT = 120.0


class FlexLane:
    """What one run on the flex lane remembers per request: when it first went out on flex, how often
    flex had no capacity for it."""

    def __init__(self, fallback_after: float | None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.fallback_after = fallback_after
        self._clock = clock
        self._since: dict[int, float] = {}  # request row id -> first flex send in this run
        self._capacity_hits: dict[int, int] = {}
        self.fallbacks = 0  # requests this run sent on the default tier after waiting on flex

    def prepare(self, row_id: int, body: str) -> tuple[bytes, float | None]:
        """The body to send for request `row_id`, and how long it may stay unanswered on flex (None: no limit).

        A line that names its own `service_tier` is sent as written, never moved to another tier.
        """
        parsed: Any = orjson.loads(body)
        if not isinstance(parsed, dict) or "service_tier" in parsed:
            return body.encode(), None
        if self.fallback_after is None:
            return orjson.dumps({**parsed, "service_tier": FLEX_TIER}), None
        now = self._clock()
        since = self._since.setdefault(row_id, now)
        left = since + self.fallback_after - now
        if left <= 0:
            return self.fallback_body(row_id, parsed), None
        return orjson.dumps({**parsed, "service_tier": FLEX_TIER}), left

    def fallback_body(self, row_id: int, parsed: dict[str, Any] | str) -> bytes:
        """The body on the default tier, for a request that waited on flex for `fallback_after` seconds."""
        body = orjson.loads(parsed) if isinstance(parsed, str) else parsed
        self.fallbacks += 1
        self._since.pop(row_id, None)
        return orjson.dumps({**body, "service_tier": FALLBACK_TIER})

    def forget(self, row_id: int) -> None:
        """Request `row_id` got an answer (or an error that is not flex's capacity): nothing to remember."""
        self._since.pop(row_id, None)
        self._capacity_hits.pop(row_id, None)

    def capacity_wait(self, row_id: int, retry_after: float | None) -> float:
        """Seconds before request `row_id` tries flex again after a capacity 429: doubling from
        CAPACITY_FIRST_WAIT up to CAPACITY_MAX_WAIT (with jitter), and never less than a Retry-After."""
        hits = self._capacity_hits.get(row_id, 0)
        self._capacity_hits[row_id] = hits + 1
        wait = min(CAPACITY_FIRST_WAIT * 2.0 ** min(hits, 16), CAPACITY_MAX_WAIT)
        wait *= 1.0 + 0.25 * random.random()  # a pool of requests refused together must not return together
        if self.fallback_after is not None:
            since = self._since.get(row_id)
            if since is not None:  # no point waiting past the moment the request moves to the default tier
                wait = min(wait, max(since + self.fallback_after - self._clock(), 0.0))
        return max(wait, retry_after or 0.0)
