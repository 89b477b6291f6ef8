"""The retry policy: how long a transient failure waits before its next attempt.

Attempts are counted in the store (a restart does not reset them), so the loop itself is the store's
queue: a failed attempt goes back to `queued` with a not-before time computed here.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

from runner.config import INITIAL_RETRY_DELAY, MAX_RETRY_DELAY
from runner.errors import TransientApiError

_BACKOFF_BASE = 2.0  # each attempt waits twice as long as the one before, up to MAX_RETRY_DELAY
_BACKOFF_JITTER = INITIAL_RETRY_DELAY  # added, at most, on top of each backoff
_RETRY_AFTER_JITTER = 0.1  # fraction added on top of Retry-After so a pool does not wake in lockstep

# Signs in a row (failed connections, 502/503/504 replies) after which the server is taken to be down as a whole.
# Few, because each before it may use up a line's attempt; being wrong costs little: a pause of about a second,
# and a line of a server that then answers keeps its attempt.
SERVER_DOWN_AFTER = 5
# The statuses a server or gateway answers when it cannot serve anything at all: restarting behind an open port
# (llama.cpp's 503 "Loading model"), or a gateway whose upstream is down (502, 504). A 500 is left out: it is as
# often one request the server cannot handle, and a line that fails that way must fail after its attempts.
UNAVAILABLE = frozenset({502, 503, 504})


def exponential_backoff(attempt: int, *, jitter: float | None = None) -> float:
    """Capped exponential with additive jitter: 0.5, 1, 2, 4 ... 30 s, each plus up to 0.5 s (within the cap).

    `jitter` (0..1) picks the point in the jitter range; random when None. Attempt 0 counts as the first.
    """
    n = max(1, attempt)
    # Past the cap the power is not computed at all: 2 ** 1000 as a float overflows.
    steps = math.log(MAX_RETRY_DELAY / INITIAL_RETRY_DELAY, _BACKOFF_BASE) + 1
    base = MAX_RETRY_DELAY if n > steps else INITIAL_RETRY_DELAY * _BACKOFF_BASE ** (n - 1)
    extra = (random.random() if jitter is None else jitter) * _BACKOFF_JITTER
    return min(base + extra, MAX_RETRY_DELAY)


def backoff_delay(attempt: int, error: TransientApiError | None = None, *, jitter: float | None = None) -> float:
    """Seconds before attempt `attempt + 1`: Retry-After (plus a little jitter) as the minimum, else backoff."""
    retry_after = error.retry_after if error is not None else None
    if retry_after is not None and math.isfinite(retry_after) and retry_after >= 0:
        extra = (random.random() if jitter is None else jitter) * _RETRY_AFTER_JITTER * max(retry_after, 0.1)
        return retry_after + extra
    return exponential_backoff(attempt)


def should_retry(attempts_made: int, max_attempts: int) -> bool:
    """Whether a request that has made `attempts_made` attempts may make another."""
    return attempts_made < max_attempts


class Outage:
    """The signs, in a row across the whole pool, that the server is down: failed connections and 502/503/504
    replies with no other reply between them.

    Down (`down`) once SERVER_DOWN_AFTER of them came from more than one line: one line that keeps failing
    while nothing else is sent is that line's trouble, and fails after its attempts.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.count = 0
        self.since = 0.0  # when the first of them came
        self._line = 0  # the request of the first of them
        self._several = False  # they came from more than one request
        self.told = False  # the user was told of this outage

    def failed(self, request_id: int) -> float:
        """One more sign, from request `request_id`: seconds since the first of them."""
        now = self._clock()
        if self.count == 0:
            self.since, self._line, self._several, self.told = now, request_id, False, False
        elif request_id != self._line:
            self._several = True
        self.count += 1
        return now - self.since

    def clear(self) -> None:
        """The server answered something else: whatever failed before, it is up."""
        self.count = 0

    @property
    def down(self) -> bool:
        return self.count >= SERVER_DOWN_AFTER and self._several


def outage_delay(attempt: int, lasted: float, error: TransientApiError | None = None) -> float:
    """Seconds before a request tries a server that has been down for `lasted` seconds again: soon early in an
    outage, at most MAX_RETRY_DELAY apart as it goes on, never sooner than a Retry-After asks."""
    wait = min(exponential_backoff(attempt) + lasted / 4, MAX_RETRY_DELAY)
    retry_after = error.retry_after if error is not None else None
    return max(wait, retry_after) if retry_after is not None and math.isfinite(retry_after) else wait
