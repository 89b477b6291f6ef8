from __future__ import annotations

import subprocess
import sys

import pytest

from runner.config import INITIAL_RETRY_DELAY, MAX_RETRY_DELAY
from runner.errors import TransientApiError
from runner.retry import SERVER_DOWN_AFTER, Outage, backoff_delay, exponential_backoff, outage_delay, should_retry


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


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_server_is_down_after_five_signs_in_a_row_from_more_than_one_line() -> None:
    clock = Clock()
    outage = Outage(clock)
    for line in (1, 2, 3, 4):
        clock.now += 1
        assert outage.failed(line) == clock.now - 101
        assert not outage.down
    clock.now += 1
    assert outage.failed(5) == 4.0
    assert outage.down and SERVER_DOWN_AFTER == 5


def test_one_line_failing_alone_is_not_an_outage() -> None:
    outage = Outage(Clock())
    for _ in range(50):
        outage.failed(7)
    assert not outage.down
    outage.failed(8)
    assert outage.down


def test_any_other_reply_ends_the_outage_and_the_next_one_is_timed_from_its_own_start() -> None:
    clock = Clock()
    outage = Outage(clock)
    for line in range(6):
        outage.failed(line)
    outage.told = True
    outage.clear()
    assert not outage.down
    clock.now += 60
    assert outage.failed(1) == 0.0
    assert not outage.told


def test_outage_delay_grows_with_the_outage_up_to_the_cap_and_keeps_to_retry_after() -> None:
    early = [outage_delay(1, 0.0) for _ in range(SAMPLES)]
    assert min(early) >= INITIAL_RETRY_DELAY and max(early) <= 2 * INITIAL_RETRY_DELAY
    assert min(outage_delay(1, 20.0) for _ in range(SAMPLES)) >= 5.0
    assert outage_delay(1, 10_000.0) == MAX_RETRY_DELAY
    asked = TransientApiError("loading", retry_after=120.0)
    assert outage_delay(1, 0.0, asked) == 120.0
    assert outage_delay(1, 10_000.0, TransientApiError("loading", retry_after=1.0)) == MAX_RETRY_DELAY
