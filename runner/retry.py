"""The retry policy, built once: how long a transient failure waits before its next attempt.

Attempts are counted in the store (a restart does not reset them), so the loop itself is the store's
queue: a failed attempt goes back to `queued` with a not-before time computed here by tenacity's waits.
"""

from __future__ import annotations

from tenacity import RetryCallState, wait_exponential_jitter

from runner.config import INITIAL_RETRY_DELAY, MAX_RETRY_DELAY
from runner.errors import TransientApiError

# Capped exponential with additive jitter: 0.5, 1, 2, 4 ... 30 s, each plus up to 0.5 s.
_BACKOFF = wait_exponential_jitter(initial=INITIAL_RETRY_DELAY, max=MAX_RETRY_DELAY, jitter=INITIAL_RETRY_DELAY)
_RETRY_AFTER_JITTER = 0.1  # fraction added on top of Retry-After so a pool does not wake in lockstep


def _state(attempt: int) -> RetryCallState:
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(1, attempt)
    return state


def backoff_delay(attempt: int, error: TransientApiError | None = None, *, jitter: float | None = None) -> float:
    """Seconds before attempt `attempt + 1`: Retry-After (plus a little jitter) as the minimum, else backoff."""
    backoff = _BACKOFF(_state(attempt))
    if error is not None and error.retry_after is not None:
        extra = (jitter if jitter is not None else _jitter()) * _RETRY_AFTER_JITTER * max(error.retry_after, 0.1)
        return error.retry_after + extra
    return float(backoff)


def _jitter() -> float:
    import random

    return random.random()


def should_retry(attempts_made: int, max_attempts: int) -> bool:
    """Whether a request that has made `attempts_made` attempts may make another."""
    return attempts_made < max_attempts
