"""The fleet's queries: live runners and their heartbeats, stale leases, and the shared rate budget.

Several `runner run` processes on one store (one machine or many) each register a row in `runners`, push
its expiry out with every heartbeat and delete it at a clean exit; a row whose expiry has passed is a
runner that died. The shared rate budget is one GCRA row per API endpoint and key: a runner reserves a
block of send slots in one short transaction, so the fleet together keeps one even pace.

Every time here is "now" as the store sees it (`_db_now`, one place): the Store's clock on SQLite, the
database's own clock on PostgreSQL, so machines with skewed clocks agree on heartbeats. Slot times go back
to a runner as offsets from that "now", never as absolute times, so its own clock never has to agree.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import DateTime, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.states import RequestState
from runner.store.store import Store
from runner.store.tables import rate_budget, requests, runners

__all__ = [
    "CLOCK_SKEW_ENV",
    "FleetClock",
    "FleetView",
    "Reservation",
    "RunnerRow",
    "calibrate",
    "clock_of",
    "fleet_view",
    "heartbeat",
    "live_runner_count",
    "publish_pause",
    "register",
    "reserve_slots",
    "set_sharing",
    "store_now",
    "unconvinced",
    "unregister",
]

IP = RequestState.IN_PROGRESS.value
log = logging.getLogger(__name__)

# A test knob, not a setting: seconds added to this process's store clock, to play a machine whose clock
# is wrong (tests/e2e/test_fleet.py). Read here only, by the FleetClock.
CLOCK_SKEW_ENV = "RUNNER_CLOCK_SKEW_SECONDS"
# A machine clock further than this from the database's is corrected to it. Below it, the clock is left
# alone: SQLite's CURRENT_TIMESTAMP has whole seconds, and a single runner must behave exactly as before.
SKEW_TOLERANCE = 5.0
_MAX_SKEW = 86_400.0
MAX_BOOKED_AHEAD = 60.0


def _knob() -> float:
    try:
        v = float(os.environ.get(CLOCK_SKEW_ENV, "0"))
    except ValueError:
        return 0.0
    return v if math.isfinite(v) and abs(v) <= _MAX_SKEW else 0.0


class FleetClock:
    """The store clock of a runner: this machine's time, corrected to the database's when they disagree.

    Lease and heartbeat times are compared between runners, so a machine whose clock runs ahead would
    take live leases of the others for expired ones. `calibrate` measures the database's clock when the
    runner starts and every heartbeat; a difference beyond SKEW_TOLERANCE becomes this clock's offset.
    """

    def __init__(self) -> None:
        self.skew = _knob()
        self.offset = 0.0

    def machine(self) -> float:
        """This machine's own time (with the test knob's skew), before any correction."""
        return time.time() + self.skew

    def __call__(self) -> float:
        return self.machine() + self.offset


def clock_of(store: Store) -> FleetClock | None:
    """The store's clock when it is a FleetClock (a `runner run`'s), else None."""
    clock = store.clock
    return clock if isinstance(clock, FleetClock) else None


async def _db_now(conn: AsyncConnection, store: Store) -> float:
    """ "Now" in epoch seconds, as the store sees it (the clock every lease time comes from)."""
    return float((await conn.execute(select(store.now_sql()))).scalar_one())


async def store_now(store: Store) -> float:
    """ "Now" as the store sees it, in a short read (to set a runner's clock beside the store's)."""

    async def go(conn: AsyncConnection) -> float:
        return await _db_now(conn, store)

    return await store.read(go)


async def calibrate(store: Store, clock: FleetClock) -> float | None:
    """Compare `clock` with the database's clock and correct it when they differ by more than SKEW_TOLERANCE.

    Returns the correction newly made (seconds, None when none was needed or it did not change).
    """

    async def go(conn: AsyncConnection) -> tuple[float, datetime, float]:
        before = clock.machine()
        db = (await conn.execute(select(func.current_timestamp(type_=DateTime(timezone=True))))).scalar_one()
        return before, db, clock.machine()

    before, db, after = await store.read(go)
    if not isinstance(db, datetime):  # pragma: no cover - every dialect gives a datetime for DateTime
        return None
    at = db.replace(tzinfo=UTC) if db.tzinfo is None else db
    # SQLite's timestamp drops the fraction of its second: its middle is the best guess.
    db_epoch = at.timestamp() + (0.5 if at.microsecond == 0 else 0.0)
    diff = db_epoch - (before + after) / 2
    offset = diff if abs(diff) > SKEW_TOLERANCE else 0.0
    if abs(offset - clock.offset) <= SKEW_TOLERANCE / 2:
        return None
    clock.offset = offset
    if offset:
        log.warning(
            "this machine's clock is %.0f s %s the store's; lease and heartbeat times use the store's",
            abs(offset),
            "ahead of" if offset < 0 else "behind",
        )
    return offset


@dataclass(frozen=True, slots=True)
class RunnerRow:
    """One live runner as `runner status` shows it."""

    id: str
    host: str
    pid: int
    started_at: float
    heartbeat_age: float  # seconds since its last heartbeat
    in_flight: int


@dataclass(frozen=True, slots=True)
class FleetView:
    """The runners of a store and the leases nobody renews any more."""

    runners: list[RunnerRow]
    stale_leases: int  # in-progress requests whose lease expired (their runner died or hangs)
    oldest_stale_age: float | None  # seconds since the oldest of those expired


@dataclass(frozen=True, slots=True)
class Reservation:
    """A block of send slots: `count` of them, `interval` apart, the first `start` seconds from the store's now.

    Offsets, not times: the runner adds them to its own clock, which need not agree with the store's.
    """

    start: float
    interval: float
    count: int
    pause_left: float  # seconds left of the fleet's 429 pause (0 when none)
    now: float  # the store's "now" the offsets are from (epoch seconds, on its clock)

    def offsets(self) -> list[float]:
        """Seconds from now of each slot, in order."""
        return [self.start + i * self.interval for i in range(self.count)]


async def register(
    store: Store, owner: str, host: str, pid: int, ttl: float, is_dead: Callable[[str], bool] | None = None
) -> None:
    """Add this runner, alive for `ttl` seconds unless a heartbeat extends it; forget runners long dead, and
    those `is_dead` says are dead now (on this host, a process that is gone: see owners.owner_is_dead)."""

    async def go(conn: AsyncConnection) -> None:
        t = await _db_now(conn, store)
        gone = runners.c.expires_at < t
        if is_dead is not None:
            # A run killed on this host (SIGKILL, OOM, its store lost) left its row live until expiry: the run
            # started after it, the usual way to resume, counted it as a fleet of two, waited 5 s for it to
            # book from the shared budget, and paced its tokens at half --tpm for a lease's length.
            live = await conn.execute(select(runners.c.id).where(runners.c.expires_at >= t, runners.c.id != owner))
            dead = [r for (r,) in live if is_dead(r)]
            if dead:
                gone = gone | runners.c.id.in_(dead)
        await conn.execute(delete(runners).where((runners.c.id == owner) | gone))
        await conn.execute(
            insert(runners).values(
                id=owner, host=host, pid=pid, started_at=t, heartbeat_at=t, expires_at=t + ttl, in_flight=0
            )
        )

    await store.write(go)


async def heartbeat(store: Store, owner: str, host: str, pid: int, ttl: float, in_flight: int) -> int:
    """Say this runner is alive for `ttl` more seconds; returns how many runners are live (itself included).

    A row that is gone (deleted while this runner hung past its expiry) is added again.
    """

    async def go(conn: AsyncConnection) -> int:
        t = await _db_now(conn, store)
        r = await conn.execute(
            update(runners).where(runners.c.id == owner).values(heartbeat_at=t, expires_at=t + ttl, in_flight=in_flight)
        )
        if not r.rowcount:
            await conn.execute(
                insert(runners).values(
                    id=owner, host=host, pid=pid, started_at=t, heartbeat_at=t, expires_at=t + ttl, in_flight=in_flight
                )
            )
        return await _live(conn, t)

    return await store.write(go)


async def _live(conn: AsyncConnection, t: float) -> int:
    r = await conn.execute(select(func.count()).select_from(runners).where(runners.c.expires_at >= t))
    return int(r.scalar_one())


async def live_runner_count(store: Store) -> int:
    """How many runners of this store are alive now (a read: cheap to ask often)."""

    async def go(conn: AsyncConnection) -> int:
        return await _live(conn, await _db_now(conn, store))

    return await store.read(go)


async def set_sharing(store: Store, owner: str, budget: str | None) -> None:
    """Say which budget this runner now books from (None: it paces alone again)."""

    async def go(conn: AsyncConnection) -> None:
        await conn.execute(update(runners).where(runners.c.id == owner).values(sharing=budget))

    await store.write(go)


async def unconvinced(store: Store, owner: str, budget: str) -> int:
    """How many other live runners do not book from `budget` yet (they may still pace alone)."""

    async def go(conn: AsyncConnection) -> int:
        t = await _db_now(conn, store)
        r = await conn.execute(
            select(func.count())
            .select_from(runners)
            .where(
                runners.c.expires_at >= t,
                runners.c.id != owner,
                (runners.c.sharing.is_(None)) | (runners.c.sharing != budget),
            )
        )
        return int(r.scalar_one())

    return await store.read(go)


async def unregister(store: Store, owner: str) -> None:
    """Remove this runner at a clean exit."""

    async def go(conn: AsyncConnection) -> None:
        await conn.execute(delete(runners).where(runners.c.id == owner))

    await store.write(go)


async def fleet_view(store: Store, is_dead: Callable[[str], bool] | None = None) -> FleetView:
    """The live runners, oldest first, and the store's stale leases; without those `is_dead` says are dead now
    (on this host, a process that is gone: a SIGKILLed run is not live, though its row has not expired)."""

    async def go(conn: AsyncConnection) -> FleetView:
        t = await _db_now(conn, store)
        rows = await conn.execute(
            select(runners).where(runners.c.expires_at >= t).order_by(runners.c.started_at, runners.c.id)
        )
        live = [
            RunnerRow(r.id, r.host, r.pid, r.started_at, max(t - r.heartbeat_at, 0.0), r.in_flight)
            for r in rows
            if is_dead is None or not is_dead(r.id)
        ]
        stale = (
            await conn.execute(
                select(func.count(), func.min(requests.c.lease_expires_at)).where(
                    requests.c.state == IP,
                    requests.c.lease_owner.is_not(None),
                    requests.c.lease_expires_at < t,
                )
            )
        ).one()
        oldest = None if stale[1] is None else max(t - float(stale[1]), 0.0)
        return FleetView(live, int(stale[0]), oldest)

    return await store.read(go)


async def reserve_slots(store: Store, budget: str, rate: float, count: int, *, delay: float = 0.0) -> Reservation:
    """Book `count` send slots `1/rate` apart from the shared budget `budget`, after every slot booked before.

    GCRA over the whole fleet: the row holds the theoretical arrival time (the next free slot); a block
    starts there, or now if that has passed, or at the end of a 429 pause, or `delay` seconds from now (the
    runner's own pacing before it joined); the row moves to its end. The
    row is read FOR UPDATE (a row lock on PostgreSQL; SQLite's write transaction is already exclusive).
    """
    interval = 1.0 / max(rate, 1e-9)
    count = max(count, 1)

    async def go(conn: AsyncConnection) -> Reservation:
        t = await _db_now(conn, store)
        row = await _budget_row(conn, budget, t, rate)
        # A slot booked further ahead than any block can reach was booked by a clock that ran ahead: start
        # from now instead of stalling the fleet for the skew.
        tat = row.tat if row.tat <= t + MAX_BOOKED_AHEAD else t
        start = max(tat, t, row.paused_until, t + delay)
        await conn.execute(
            update(rate_budget)
            .where(rate_budget.c.id == budget)
            .values(tat=start + count * interval, rate=rate, updated_at=t)
        )
        return Reservation(start - t, interval, count, max(row.paused_until - t, 0.0), t)

    return await store.write(go)


async def publish_pause(store: Store, budget: str, seconds: float, rate: float) -> None:
    """Hold the whole fleet's budget for `seconds` from now (a 429's Retry-After).

    A later pause extends, an earlier one never shortens.
    """

    async def go(conn: AsyncConnection) -> None:
        t = await _db_now(conn, store)
        until = t + seconds
        row = await _budget_row(conn, budget, t, rate)
        if until > row.paused_until:
            await conn.execute(
                update(rate_budget).where(rate_budget.c.id == budget).values(paused_until=until, updated_at=t)
            )

    await store.write(go)


async def _budget_row(conn: AsyncConnection, budget: str, t: float, rate: float) -> _Budget:
    stmt = select(rate_budget.c.tat, rate_budget.c.paused_until).where(rate_budget.c.id == budget).with_for_update()
    row = (await conn.execute(stmt)).one_or_none()
    if row is None:
        try:
            # A savepoint: on PostgreSQL a second runner inserting the same new row at the same moment makes
            # this insert fail without spoiling the transaction; it then reads the winner's row.
            async with conn.begin_nested():
                await conn.execute(
                    insert(rate_budget).values(id=budget, tat=t, paused_until=0.0, rate=rate, updated_at=t)
                )
        except IntegrityError:
            pass
        row = (await conn.execute(stmt)).one()
    return _Budget(float(row.tat), float(row.paused_until))


@dataclass(frozen=True, slots=True)
class _Budget:
    tat: float
    paused_until: float
