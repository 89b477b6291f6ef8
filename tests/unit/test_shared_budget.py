"""The limiter's side of the fleet's shared budget (runner/limits.py): untouched alone, slots when shared."""

from __future__ import annotations

import anyio
import pytest

from runner.limits import BURST, RateLimiter, SharedSlots, budget_id

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_lone_runner_paces_exactly_as_without_a_shared_budget() -> None:
    plain_clock, shared_clock = Clock(), Clock()
    plain = RateLimiter(rpm=600, tpm=60_000, clock=plain_clock)
    lone = RateLimiter(rpm=600, tpm=60_000, clock=shared_clock)
    lone.shared = SharedSlots(shared_clock)
    lone.share(1)
    waits = []
    for _ in range(30):
        waits.append((plain.delay_for(50), lone.delay_for(50)))
        plain_clock.t += 0.03
        shared_clock.t += 0.03
    assert all(a == b for a, b in waits) and max(a for a, _ in waits) > 0
    assert not lone.sharing


def test_the_budget_is_named_by_a_salted_hash_never_the_key() -> None:
    key = "sk-secret-key-123"
    name = budget_id("https://api.openai.com/v1", key)
    assert key not in name and "secret" not in name and name.startswith("requests:")
    assert name == budget_id("https://api.openai.com/v1/", key)  # one endpoint, however spelt
    assert name != budget_id("https://api.openai.com/v1", "sk-other")
    assert name != budget_id("https://example.test/v1", key)


async def test_shared_requests_wait_for_booked_slots_in_order() -> None:
    lim = RateLimiter(rpm=600)
    lim.shared = shared = SharedSlots(lim.clock)
    lim.share(3)
    assert lim.sharing and shared.runners == 3
    assert lim.delay_for(0) == 0  # requests are not booked on the local pacer while shared ...
    sent: list[float] = []

    async def one() -> None:
        while not await lim.shared_turn(booked_alone=False):
            pass
        sent.append(lim.clock())

    async with anyio.create_task_group() as tg:
        tg.start_soon(one)
        tg.start_soon(one)
        await shared.wanted()  # ... but wait for the booking task
        assert shared.wants_more
        now = lim.clock()
        shared.add([now + 0.05, now + 0.15])
    assert len(sent) == 2 and sent[1] - sent[0] >= 0.09
    assert sent[0] >= now + 0.05


async def test_sharing_ends_waiters_book_alone_and_the_local_pacer_starts_after_the_last_slot() -> None:
    lim = RateLimiter(rpm=600)
    lim.shared = shared = SharedSlots(lim.clock)
    lim.share(2)
    results: list[bool] = []

    async def waiter() -> None:
        results.append(await lim.shared_turn(booked_alone=False))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(0.01)
        last = lim.clock() + 0.3
        shared.last_slot = last
        lim.share(1)
    assert results == [False]  # left to the shared budget, it must book again on the local pacer
    assert not lim.sharing
    assert await lim.shared_turn(booked_alone=True)
    first = lim.delay_for(0)
    assert first >= last - lim.clock() + 0.1 - 0.02  # no burst: one interval after the last shared slot


def test_a_pause_is_published_to_the_fleet_only_while_shared() -> None:
    clock = Clock()
    lim = RateLimiter(rpm=600, clock=clock)
    lim.shared = shared = SharedSlots(clock)
    lim.pause(10)
    assert shared.pause_to_publish == 0
    lim.share(2)
    lim.pause(20)
    assert shared.pause_to_publish == pytest.approx(clock.t + 20)
    assert lim.remaining_pause() == pytest.approx(20)


def test_while_shared_tokens_are_paced_at_this_runners_share() -> None:
    alone_clock, shared_clock = Clock(), Clock()
    alone = RateLimiter(tpm=60_000, clock=alone_clock)  # 1,000 tokens a second
    three = RateLimiter(tpm=60_000, clock=shared_clock)
    three.shared = SharedSlots(shared_clock)
    three.share(3)
    for _ in range(5):
        alone.delay_for(500)
        three.delay_for(500)
    # Five requests of 500 tokens: 2 s of budget alone, 6 s as one of three runners.
    # (Less what the pacer lets go early: half of BURST, less one token's time; see Pacer.rate.)
    assert alone.delay_for(500) == pytest.approx(2.5 - (BURST / 2 - 1 / 1000))
    assert three.delay_for(500) == pytest.approx(7.5 - (BURST / 2 - 1 / 1000))
