"""The fleet's queries (runner/store/fleet.py) on each backend: runners come and go, two stores (two runners)
book one rate budget without overlapping slots, a pause reaches the others, a skewed clock is corrected."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator

import pytest

from runner.store import Store, fleet, learnt
from runner.store.fleet import FleetClock
from tests.integration.conftest import FakeClock

pytestmark = pytest.mark.anyio
BUDGET = "requests:" + "ab" * 16


@pytest.fixture
def db(store_db: str) -> str:
    return store_db


@pytest.fixture
async def other(db: str) -> AsyncIterator[Store]:
    """A second runner's store on the same database."""
    s = await Store.open(db)
    try:
        yield s
    finally:
        await s.aclose()


async def test_runners_are_listed_while_their_heartbeat_is_live(store: Store, other: Store, clock: FakeClock) -> None:
    await fleet.register(store, "host-a:11:aaaaaa", "host-a", 11, ttl=0.5)
    await fleet.register(other, "host-b:22:bbbbbb", "host-b", 22, ttl=60)
    assert await fleet.heartbeat(other, "host-b:22:bbbbbb", "host-b", 22, ttl=60, in_flight=7) == 2
    view = await fleet.fleet_view(store)
    assert [(r.host, r.pid) for r in view.runners] == [("host-a", 11), ("host-b", 22)]
    assert view.runners[1].in_flight == 7 and 0 <= view.runners[1].heartbeat_age < 5
    clock.advance(0.6)  # host-a misses its heartbeat: it is no longer live
    assert await fleet.live_runner_count(store) == 1
    assert [r.host for r in (await fleet.fleet_view(store)).runners] == ["host-b"]
    await fleet.unregister(other, "host-b:22:bbbbbb")
    assert await fleet.live_runner_count(store) == 0
    # A heartbeat after its row was removed (the runner hung past its expiry) puts it back.
    assert await fleet.heartbeat(store, "host-a:11:aaaaaa", "host-a", 11, ttl=60, in_flight=0) == 1


async def test_two_runners_book_one_budget_without_overlap(store: Store, other: Store) -> None:
    rate = 20.0
    got = [await fleet.reserve_slots(s, BUDGET, rate, 5) for s in (store, other, store, other)]
    # Each booking starts where the one before ended, on the store's clock: 20 slots, 0.05 s apart.
    times = [g.now + g.start + i * g.interval for g in got for i in range(g.count)]
    assert times == sorted(times)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.05 - 1e-6, gaps
    assert all(g.pause_left == 0 for g in got)


async def test_a_pause_one_runner_met_holds_the_others(store: Store, other: Store) -> None:
    await fleet.reserve_slots(store, BUDGET, 10.0, 2)
    await fleet.publish_pause(store, BUDGET, 30.0, 10.0)
    await fleet.publish_pause(store, BUDGET, 5.0, 10.0)  # a shorter one never shortens it
    got = await fleet.reserve_slots(other, BUDGET, 10.0, 3)
    assert 29 < got.pause_left <= 30
    assert got.start >= got.pause_left - 1e-6  # its first slot is after the pause


async def test_a_budget_booked_by_a_clock_far_ahead_does_not_stall_the_fleet(db: str, store: Store) -> None:
    ahead = await Store.open(db, clock=FakeClock())
    try:
        ahead_clock = FakeClock()
        ahead_clock.offset = 600.0
        ahead._clock = ahead_clock  # a runner whose store clock runs 10 minutes ahead books first
        await fleet.reserve_slots(ahead, BUDGET, 10.0, 5)
    finally:
        await ahead.aclose()
    got = await fleet.reserve_slots(store, BUDGET, 10.0, 5)
    assert got.start < 1.0, got


async def test_a_clock_far_from_the_databases_is_corrected(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fleet.CLOCK_SKEW_ENV, "600")
    clock = FleetClock()
    assert clock.skew == 600
    s = await Store.open(db, clock=clock)
    try:
        assert await fleet.calibrate(s, clock) == pytest.approx(-600, abs=2)
        assert abs(clock() - time.time()) < 2
        assert await fleet.calibrate(s, clock) is None  # measured again: nothing new to correct
    finally:
        await s.aclose()
    monkeypatch.setenv(fleet.CLOCK_SKEW_ENV, "2")  # within the tolerance: left alone, as a lone runner was
    small = FleetClock()
    s = await Store.open(db, clock=small)
    try:
        assert await fleet.calibrate(s, small) is None and small.offset == 0
    finally:
        await s.aclose()


async def test_limits_a_server_said_are_kept_per_budget_and_model_for_the_next_run(store: Store, other: Store) -> None:
    assert await learnt.remembered_limits(store, BUDGET, max_age=3600) == {}
    await learnt.remember_limits(store, BUDGET, {"gpt-a": (500, 200_000), "gpt-b": (10_000, None)})
    # Another runner of the store (the next night's, or a fleet member) reads them; a newer reading replaces.
    assert await learnt.remembered_limits(other, BUDGET, max_age=3600) == {
        "gpt-a": (500, 200_000),
        "gpt-b": (10_000, None),
    }
    await learnt.remember_limits(other, BUDGET, {"gpt-a": (5_000, 2_000_000_000)})  # beyond int4: kept whole
    assert (await learnt.remembered_limits(store, BUDGET, max_age=3600))["gpt-a"] == (5_000, 2_000_000_000)
    assert await learnt.remembered_limits(store, "requests:" + "cd" * 16, max_age=3600) == {}  # another key's
    assert await learnt.remembered_limits(store, BUDGET, max_age=-1.0) == {}  # none read recently enough


async def test_two_runners_keeping_the_same_new_limits_at_once_make_one_row(store: Store, other: Store) -> None:
    import anyio

    async with anyio.create_task_group() as tg:
        for s in (store, other) * 3:
            tg.start_soon(learnt.remember_limits, s, BUDGET, {"gpt-a": (500, None)})
    assert await learnt.remembered_limits(store, BUDGET, max_age=3600) == {"gpt-a": (500, None)}
