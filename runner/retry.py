"""The retry policy: how long a transient failure waits before its next attempt.

Attempts are counted in the store (a restart does not reset them), so the loop itself is the store's
queue: a failed attempt goes back to `queued` with a not-before time computed here.
"""

from __future__ import annotations

import math
import random

from runner.config import INITIAL_RETRY_DELAY, MAX_RETRY_DELAY
from runner.errors import TransientApiError

_BACKOFF_BASE = 2.0  # each attempt waits twice as long as the one before, up to MAX_RETRY_DELAY
_BACKOFF_JITTER = INITIAL_RETRY_DELAY  # added, at most, on top of each backoff
_RETRY_AFTER_JITTER = 0.1  # fraction added on top of Retry-After so a pool does not wake in lockstep


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
