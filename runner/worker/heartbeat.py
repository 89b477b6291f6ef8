"""A runner's life on its store: registered at the start, a heartbeat while it runs, gone at a clean exit.

The heartbeat says the runner is alive (its `runners` row), renews its leases, and corrects its clock to
the database's, and keeps the rate limits the server's headers said for the next run of the same key and
model (`learnt_limits`). It also feeds the shared rate budget: it watches how many runners are live (the limiter
shares the budget while there is more than one) and books blocks of send slots from the store when the
runner's own run low, publishing any pause the runner met to the others.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable

import anyio

from runner.limits import MAX_SHARED_BLOCK, REMEMBER_LIMITS_FOR, SHARED_BLOCK_SECONDS, RateLimiter, SharedSlots
from runner.owners import owner_is_dead, split_owner
from runner.store import Store, fleet, learnt

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = 5.0  # seconds between heartbeats (sooner when the lease is short: three per lease)
FIRST_BEAT = 1.0
LIVE_CHECK_EVERY = 0.5  # seconds between looks at how many runners are live, while a budget is paced
# A runner that joins others sends nothing until each of them books from the shared budget too (a runner
# still pacing alone notices within one LIVE_CHECK_EVERY), or this long has passed: a runner that paces
# nothing (no --rpm, no limit headers yet) never joins, and must not hold the others up for ever.
JOIN_WAIT = 5.0
JOIN_POLL = 0.1
PAUSE_EPSILON = 0.05  # a fleet pause this close to the one in force is the same pause


class Heartbeat:
    """Registers one run, keeps it alive and its leases renewed, and books its share of the fleet's budget."""

    def __init__(
        self,
        store: Store,
        owner: str,
        *,
        lease_seconds: float,
        limiter: RateLimiter,
        budget: str | None,
        in_flight: Callable[[], int],
    ) -> None:
        self.store = store
        self.owner = owner
        self.host, pid = split_owner(owner)
        self.pid = pid if pid is not None else os.getpid()
        self.ttl = lease_seconds  # alive as long as its leases would be
        self.every = min(HEARTBEAT_EVERY, lease_seconds / 3)
        # Leases taken in the last two beats are not renewed (they have most of their time), unless that would
        # leave under half a lease against a stalled heartbeat: then every lease is renewed at every beat.
        self.fresh_for = 2 * self.every if self.every <= lease_seconds / 4 else 0.0
        self.limiter = limiter
        self.budget = budget
        self._in_flight = in_flight
        self._clock = fleet.clock_of(store)
        self._joining = False  # started among others: wait for them to share before the first booking
        self._lo, self._hi = -math.inf, math.inf  # bounds of (this runner's clock - the store's): _clock_offset
        if budget is not None:
            limiter.shared = SharedSlots(limiter.clock)

    async def start(self) -> None:
        """Correct the clock, then register (before the run reclaims anything: its lease times must be right)."""
        if self._clock is not None:
            await fleet.calibrate(self.store, self._clock)
        await fleet.register(self.store, self.owner, self.host, self.pid, self.ttl, owner_is_dead)
        if self.budget is not None:
            self.limiter.remembered = await learnt.remembered_limits(self.store, self.budget, REMEMBER_LIMITS_FOR)
            live = await fleet.live_runner_count(self.store)
            self._joining = live > 1
            await self._share(live)

    async def stop(self) -> None:
        """Leave the fleet at a clean exit, keeping the limits learnt since the last beat."""
        await self._keep_learnt()
        await fleet.unregister(self.store, self.owner)

    async def _keep_learnt(self) -> None:
        """Store the limits the server's headers said (by model) for the next run of this budget."""
        limits = self.limiter.take_learnt()
        if limits and self.budget is not None:
            await learnt.remember_limits(self.store, self.budget, limits)

    async def run(self) -> None:
        """Beat until cancelled; book shared slots beside it."""
        async with anyio.create_task_group() as tg:
            if self.limiter.shared is not None:
                tg.start_soon(self._book)
            await self._beat()

    async def _beat(self) -> None:
        # The first beat comes soon, so that `runner status` shows the requests in flight, not the 0 of the start.
        next_beat = time.monotonic() + min(FIRST_BEAT, self.every)
        while True:
            await anyio.sleep(min(LIVE_CHECK_EVERY, max(next_beat - time.monotonic(), 0.0)))
            if time.monotonic() >= next_beat:
                if self._clock is not None:
                    await fleet.calibrate(self.store, self._clock)
                live = await fleet.heartbeat(self.store, self.owner, self.host, self.pid, self.ttl, self._in_flight())
                await self.store.renew_leases(self.owner, self.ttl, fresh_for=self.fresh_for)
                await self._share(live)
                await self._keep_learnt()
                next_beat = time.monotonic() + self.every
            elif self._paced():
                await self._share(await fleet.live_runner_count(self.store))

    async def _share(self, live: int) -> None:
        """Share the budget while others are live (or pace alone again), and say so in the store."""
        was = self.limiter.sharing
        self.limiter.share(live)
        if self.limiter.sharing != was and self.budget is not None:
            await fleet.set_sharing(self.store, self.owner, self.budget if self.limiter.sharing else None)

    def _paced(self) -> bool:
        lim = self.limiter
        return lim.shared is not None and (lim.requests is not None or lim.tokens is not None)

    async def _book(self) -> None:
        shared = self.limiter.shared
        assert shared is not None and self.budget is not None
        while True:
            await shared.wanted()
            requests = self.limiter.requests
            if shared.pause_to_publish:
                left = shared.pause_to_publish - self.limiter.clock()
                shared.pause_to_publish = 0.0
                if left > 0:
                    await fleet.publish_pause(self.store, self.budget, left, requests.rate if requests else 0.0)
            if not shared.wants_more:
                continue
            if requests is None:  # sharing tokens alone: nothing to book
                await anyio.sleep(LIVE_CHECK_EVERY)
                continue
            if self._joining:
                self._joining = False
                await self._wait_for_the_others(self.budget)
            rate = requests.rate
            count = max(1, min(MAX_SHARED_BLOCK, round(rate * SHARED_BLOCK_SECONDS)))
            offset = await self._clock_offset()
            delay = max(shared.not_before - self.limiter.clock(), 0.0)
            got = await fleet.reserve_slots(self.store, self.budget, rate, count, delay=delay)
            start = got.now + offset + got.start
            self._adopt_pause(got.pause_left)
            if shared.active:
                shared.add([start + i * got.interval for i in range(got.count)])

    async def _wait_for_the_others(self, budget: str) -> None:
        """Before a joining runner's first booking: until every other live runner books from the budget."""
        give_up = time.monotonic() + JOIN_WAIT
        # Polled: the others are other processes, and only the store can tell what they do.
        while time.monotonic() < give_up and await fleet.unconvinced(self.store, self.owner, budget):  # noqa: ASYNC110
            await anyio.sleep(JOIN_POLL)

    async def _clock_offset(self) -> float:
        """This runner's clock minus the store's, to a few milliseconds.

        The two differ by a constant. A short read of the store's "now" bounds it between the times on this
        clock before and after the read, and the bounds of all reads together pin it to about the fastest
        one. (The booking itself is no good for this: on SQLite its "now" is taken after it waited for the
        write lock, on PostgreSQL at its start, before any wait for the row.) Runners that map the same
        slots onto their clocks this way agree on them, so their sends interleave at the booked spacing.
        """
        before = self.limiter.clock()
        store_now = await fleet.store_now(self.store)
        after = self.limiter.clock()
        lo, hi = before - store_now, after - store_now
        if max(lo, self._lo) > min(hi, self._hi):  # a clock was stepped: start over
            self._lo, self._hi = lo, hi
        else:
            self._lo, self._hi = max(lo, self._lo), min(hi, self._hi)
        return (self._lo + self._hi) / 2

    def _adopt_pause(self, left: float) -> None:
        """Another runner met a 429 (or a dry window): this one pauses for what is left of it."""
        if left <= self.limiter.remaining_pause() + PAUSE_EPSILON:
            return
        shared = self.limiter.shared
        self.limiter.pause(left, why=f"another runner of this store was asked to wait; pausing {left:.0f} s")
        if shared is not None:
            shared.pause_to_publish = 0.0  # it came from the store: nothing to publish
