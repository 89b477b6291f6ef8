"""The Store's claims and leases: who holds which request, until when, and taking back a dead runner's work."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.store.core import _CLAIMED_COLUMNS, IP, Q, StoreCore
from runner.store.models import Claimed
from runner.store.tables import requests

__all__ = ["LeasesPart"]


class LeasesPart(StoreCore):
    """The Store's claims and leases: who holds which request, until when, and taking back a dead runner's work."""

    # -- claiming and leases ----------------------------------------------------------------------

    async def claim(self, owner: str, job_ids: Sequence[str], n: int, lease_seconds: float) -> list[Claimed]:
        """Lease up to `n` due, queued requests of `job_ids` in claim order, counting the attempt now: the jobs
        one after the other, each by `sched` (a prompt-cache group's lines together, runner/cachekeys.py),
        then file order.

        A request whose conversation has an earlier unfinished request is skipped: one at a time, in order.
        """
        ids = list(job_ids)
        return await self._hot(lambda: self._backend.claim(owner, ids, n, lease_seconds, self._clock()))

    async def claim_polls(self, owner: str, job_ids: Sequence[str], lease_seconds: float) -> list[Claimed]:
        """Lease background requests that have a response id and no live owner: they are polled, never re-sent."""
        now = self._now()
        stmt = (
            update(requests)
            .where(
                requests.c.job_id.in_(job_ids),
                requests.c.state == IP,
                requests.c.response_id.is_not(None),
                or_(requests.c.lease_owner.is_(None), requests.c.lease_expires_at < now),
            )
            .values(lease_owner=owner, lease_expires_at=now + lease_seconds, updated_at=now)
            .returning(*_CLAIMED_COLUMNS, requests.c.response_id)
        )

        async def go(conn: AsyncConnection) -> list[Claimed]:
            rows = (await conn.execute(stmt)).all()
            return [
                Claimed(r.id, r.job_id, r.line_no, r.custom_id, r.body, r.attempts, r.response_id, True) for r in rows
            ]

        return await self.write(go)

    async def reclaim_expired(
        self, job_ids: Sequence[str], owner_is_dead: Callable[[str | None], bool] | None = None
    ) -> int:
        """Free the work of runners that are gone: lease expired, or (same host) their process is dead.

        Requests without a response id go back to `queued` (their attempt still counts); those with one
        stay `in_progress` with no owner, for the next poller: they are never sent again.
        """
        now = self._now()

        async def go(conn: AsyncConnection) -> int:
            held = and_(requests.c.job_id.in_(job_ids), requests.c.state == IP)
            owners = await conn.execute(
                select(requests.c.lease_owner).where(held, requests.c.lease_owner.is_not(None)).distinct()
            )
            dead = [o for (o,) in owners if owner_is_dead is not None and owner_is_dead(o)]
            gone = or_(requests.c.lease_expires_at < now, requests.c.lease_owner.in_(dead))
            r = await conn.execute(
                update(requests)
                .where(held, gone, requests.c.response_id.is_(None))
                .values(state=Q, lease_owner=None, lease_expires_at=None, next_attempt_at=now, updated_at=now)
            )
            await conn.execute(
                update(requests)
                .where(held, gone, requests.c.response_id.is_not(None))
                .values(lease_owner=None, lease_expires_at=None, updated_at=now)
            )
            return int(r.rowcount)

        return await self.write(go)

    async def renew_leases(self, owner: str, lease_seconds: float, *, fresh_for: float = 0.0) -> int:
        """Push out the lease of everything this owner holds, except leases taken or renewed in the last
        `fresh_for` seconds.

        Requests claimed since the last beats, at a second's latency nearly all of them, need not be written
        again: renewing every held row at every beat rewrote 1,000-2,000 rows each 5 s at concurrency 1,000
        and held their row locks against the group commits of the same rows. The heartbeat passes two beats
        (10 s of a 60 s lease), so a live runner's leases keep at least lease - 3 beats (45 s) against a
        stalled heartbeat; a lease too short for that is renewed whole at every beat, as it always was.
        """
        now = self._now()

        async def go(conn: AsyncConnection) -> int:
            r = await conn.execute(
                update(requests)
                .where(
                    requests.c.lease_owner == owner,
                    requests.c.state == IP,
                    requests.c.lease_expires_at < now + lease_seconds - fresh_for,
                )
                .values(lease_expires_at=now + lease_seconds)
            )
            return int(r.rowcount)

        return await self.write(go)

    async def release(self, owner: str, *, refund: bool) -> int:
        """Give back everything this owner holds: unsent work to `queued`, background work to any poller."""
        now = self._now()

        async def go(conn: AsyncConnection) -> int:
            r = await conn.execute(
                update(requests)
                .where(requests.c.lease_owner == owner, requests.c.state == IP, requests.c.response_id.is_(None))
                .values(
                    state=Q,
                    lease_owner=None,
                    lease_expires_at=None,
                    next_attempt_at=now,
                    attempts=requests.c.attempts - (1 if refund else 0),
                    updated_at=now,
                )
            )
            await conn.execute(
                update(requests)
                .where(requests.c.lease_owner == owner, requests.c.state == IP)
                .values(lease_owner=None, lease_expires_at=None, updated_at=now)
            )
            await self._backend.cancel_requeued(conn, self._clock())
            return int(r.rowcount)

        return await self.write(go)

    async def repair_unowned(self) -> int:
        """In-progress rows with neither an owner nor a response id cannot make progress: queue them again."""
        now = self._now()

        async def go(conn: AsyncConnection) -> int:
            r = await conn.execute(
                update(requests)
                .where(requests.c.state == IP, requests.c.lease_owner.is_(None), requests.c.response_id.is_(None))
                .values(state=Q, next_attempt_at=now, updated_at=now)
            )
            return int(r.rowcount)

        return await self.write(go)
