from __future__ import annotations

import subprocess
import sys

import pytest

from runner.config import INITIAL_RETRY_DELAY, MAX_RETRY_DELAY
from runner.errors import TransientApiError
from runner.retry import backoff_delay, exponential_backoff, should_retry


def test_retry_policy_builds_without_deprecation_warnings() -> None:
    # pyproject runs the suite with filterwarnings=error: a deprecated tenacity argument breaks every import.
    r = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", "import runner.retry"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


SAMPLES = 200
JITTER = INITIAL_RETRY_DELAY  # the backoff's additive jitter bound


def samples(attempt: int, error: TransientApiError | None = None) -> list[float]:
    return [backoff_delay(attempt, error) for _ in range(SAMPLES)]


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 6])
def test_backoff_is_exponential_with_bounded_jitter(attempt: int) -> None:
    base = INITIAL_RETRY_DELAY * 2 ** (attempt - 1)
    got = samples(attempt)
    assert min(got) >= base
    assert max(got) <= min(base + JITTER, MAX_RETRY_DELAY)
    assert len(set(got)) > 1  # jittered, so a pool of requests does not retry in lockstep


def test_backoff_grows_with_attempt() -> None:
    # Each attempt's smallest delay is at least the previous attempt's largest.
    for attempt in range(1, 6):
        assert min(samples(attempt + 1)) >= max(samples(attempt))


@pytest.mark.parametrize("attempt", [7, 10, 50, 1000])
def test_backoff_is_capped(attempt: int) -> None:
    got = samples(attempt)
    assert max(got) <= MAX_RETRY_DELAY + JITTER
    assert min(got) >= MAX_RETRY_DELAY - JITTER


def test_attempt_zero_behaves_like_first() -> None:
    got = samples(0)
    assert min(got) >= INITIAL_RETRY_DELAY
    assert max(got) <= INITIAL_RETRY_DELAY + JITTER


@pytest.mark.parametrize("attempt", [1, 2])
def test_retry_after_is_the_wait_plus_at_most_ten_percent(attempt: int) -> None:
    err = TransientApiError("slow down", status=429, retry_after=2.0)
    got = samples(attempt, err)
    assert min(got) >= 2.0
    assert max(got) <= 2.2 + 1e-9


def test_retry_after_jitter_bounds_are_exact() -> None:
    err = TransientApiError("slow down", status=429, retry_after=2.0)
    assert backoff_delay(1, err, jitter=0.0) == pytest.approx(2.0)
    assert backoff_delay(1, err, jitter=1.0) == pytest.approx(2.2)


def test_retry_after_zero_is_nearly_immediate() -> None:
    err = TransientApiError("locked", retry_after=0.0)
    got = samples(1, err)
    assert min(got) >= 0.0
    assert max(got) <= 0.01 + 1e-9


def test_error_without_retry_after_uses_backoff() -> None:
    err = TransientApiError("boom", status=500)
    got = samples(3, err)
    assert min(got) >= INITIAL_RETRY_DELAY * 4
    assert max(got) <= INITIAL_RETRY_DELAY * 4 + JITTER


@pytest.mark.parametrize(
    ("made", "max_attempts", "expected"),
    [
        (0, 1, True),
        (1, 1, False),
        (1, 6, True),
        (5, 6, True),
        (6, 6, False),
        (7, 6, False),
    ],
)
def test_should_retry_boundaries(made: int, max_attempts: int, expected: bool) -> None:
    assert should_retry(made, max_attempts) is expected


def test_backoff_jitter_ends_are_exact_and_capped() -> None:
    # The delay is a plain function of the attempt: the jitter's ends are exact, and the cap holds them.
    assert exponential_backoff(1, jitter=0.0) == pytest.approx(INITIAL_RETRY_DELAY)
    assert exponential_backoff(1, jitter=1.0) == pytest.approx(INITIAL_RETRY_DELAY + JITTER)
    assert exponential_backoff(3, jitter=0.0) == pytest.approx(INITIAL_RETRY_DELAY * 4)
    assert exponential_backoff(10_000, jitter=1.0) == pytest.approx(MAX_RETRY_DELAY)
