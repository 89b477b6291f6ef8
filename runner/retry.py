"""The retry policy, built once: how long a transient failure waits before its next attempt.

Attempts are counted in the store (a restart does not reset them), so the loop itself is the store's
queue: a failed attempt goes back to `queued` with a not-before time computed here by tenacity's waits.
"""

from __future__ import annotations

import math
import random

from tenacity import RetryCallState, wait_exponential_jitter

from runner.config import INITIAL_RETRY_DELAY, MAX_RETRY_DELAY
from runner.errors import TransientApiError

# Capped exponential with additive jitter: 0.5, 1, 2, 4 ... 30 s, each plus up to 0.5 s.
_BACKOFF = wait_exponential_jitter(multiplier=INITIAL_RETRY_DELAY, max=MAX_RETRY_DELAY, jitter=INITIAL_RETRY_DELAY)
_RETRY_AFTER_JITTER = 0.1  # fraction added on top of Retry-After so a pool does not wake in lockstep


def _state(attempt: int) -> RetryCallState:
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(1, attempt)
    return state


def backoff_delay(attempt: int, error: TransientApiError | None = None, *, jitter: float | None = None) -> float:
    """Seconds before attempt `attempt + 1`: Retry-After (plus a little jitter) as the minimum, else backoff."""
    retry_after = error.retry_after if error is not None else None
    if retry_after is not None and math.isfinite(retry_after) and retry_after >= 0:
        extra = (random.random() if jitter is None else jitter) * _RETRY_AFTER_JITTER * max(retry_after, 0.1)
        return retry_after + extra
    return float(_BACKOFF(_state(attempt)))


def should_retry(attempts_made: int, max_attempts: int) -> bool:
    """Whether a request that has made `attempts_made` attempts may make another."""
    return attempts_made < max_attempts
