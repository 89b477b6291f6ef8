"""Free slots opened at once after the pool has run are spread over a round trip, not sent in one burst."""

from __future__ import annotations

import pytest

from runner.worker.ramp import RAMP_BURST, RAMP_OVER_MAX, SlotRamp


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def open_all(ramp: SlotRamp, clock: Clock, limit: int, latency: float | None, tick: float = 0.01) -> list[int]:
    """Open `limit` slots as the pool does (whatever is allowed, every tick); the slots opened per tick."""
    opened: list[int] = []
    left = limit
    while left > 0:
        n = min(left, ramp.allow(limit, latency))
        ramp.took(n)
        opened.append(n)
        left -= n
        clock.now += tick
    return opened


def test_before_any_round_trip_every_free_slot_opens_at_once() -> None:
    clock = Clock()
    assert open_all(SlotRamp(clock), clock, 1000, None) == [1000]


@pytest.mark.parametrize(("limit", "latency", "ticks"), [(1000, 1.0, 100), (200, 0.2, 20), (1000, 30.0, 100)])
def test_a_whole_concurrency_opens_evenly_over_one_round_trip_at_most_a_second(
    limit: int, latency: float, ticks: int
) -> None:
    clock = Clock()
    opened = open_all(SlotRamp(clock), clock, limit, latency)
    # Spread: never more than a burst at once, and every slot open after about one round trip (<= 1 s).
    assert max(opened) <= RAMP_BURST
    assert ticks - 2 <= len(opened) <= ticks + 2, len(opened)
    assert len(opened) * 0.01 <= min(latency, RAMP_OVER_MAX) + 0.03
    # Evenly: after the first burst, each 10 ms opens the same share.
    assert set(opened[1:-1]) == {limit * 0.01 / min(latency, RAMP_OVER_MAX)}


def test_a_few_slots_open_at_once_and_an_idle_bucket_holds_no_more_than_a_burst() -> None:
    clock = Clock()
    ramp = SlotRamp(clock)
    assert ramp.allow(1000, 1.0) == RAMP_BURST  # an AIMD step of one slot is never held back
    clock.now += 3600.0
    assert ramp.allow(1000, 1.0) == RAMP_BURST


def test_a_ramp_whose_looks_come_late_still_opens_every_slot_within_a_round_trip() -> None:
    # A busy event loop looks every 30 ms instead of 10: the slots a late look earned still open then.
    clock = Clock()
    opened = open_all(SlotRamp(clock), clock, 1000, 1.0, tick=0.03)
    assert len(opened) * 0.03 <= 1.0 + 0.06, len(opened)
    assert max(opened[1:]) <= 1000 * 0.03 + 1  # no more than the late look's share at once
    # ... but an idle bucket, or one just out of the slow start (no round trip known), holds only a burst.
    ramp = SlotRamp(clock)
    assert ramp.allow(1000, None) == 1000
    ramp.took(8)
    clock.now += 0.05
    assert ramp.allow(1000, 1.0) == RAMP_BURST
