"""The rate limits a server said, kept for the next run of the same key and model (`learnt_limits`).

A run given no --rpm/--tpm reads the limits in its replies' `x-ratelimit-limit-*` headers; the heartbeat keeps
them here by rate budget (the API endpoint and a salted hash of the key, as the fleet's shared budget is named:
runner/limits.py `budget_id`) and model. The next run of that budget reads them at its start and, when its first
request names a model found here, paces at them from its first request instead of a slow start.
"""

from __future__ import annotations

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.store.store import Store
from runner.store.tables import learnt_limits

__all__ = ["remember_limits", "remembered_limits"]

Limits = dict[str, tuple[int | None, int | None]]  # by model: (requests, tokens) per minute, None if not said


async def _now(conn: AsyncConnection, store: Store) -> float:
    """The store's "now" (the database's clock on PostgreSQL), as every fleet time is."""
    return float((await conn.execute(select(store.now_sql()))).scalar_one())


async def remembered_limits(store: Store, budget: str, max_age: float) -> Limits:
    """The limits (requests, tokens per minute) the budget's server said for each model within `max_age`
    seconds: what an earlier run read in its `x-ratelimit-limit-*` headers."""

    async def go(conn: AsyncConnection) -> Limits:
        t = await _now(conn, store)
        rows = await conn.execute(
            select(learnt_limits.c.model, learnt_limits.c.rpm, learnt_limits.c.tpm).where(
                learnt_limits.c.budget == budget, learnt_limits.c.learnt_at >= t - max_age
            )
        )
        return {r.model: (r.rpm, r.tpm) for r in rows}

    return await store.read(go)


async def remember_limits(store: Store, budget: str, limits: Limits) -> None:
    """Keep what the budget's server said its limits are for each model (the newest reading wins)."""

    async def go(conn: AsyncConnection) -> None:
        t = await _now(conn, store)
        for model, (rpm, tpm) in limits.items():
            key = (learnt_limits.c.budget == budget) & (learnt_limits.c.model == model)
            values = {"rpm": rpm, "tpm": tpm, "learnt_at": t}
            if (await conn.execute(update(learnt_limits).where(key).values(**values))).rowcount:
                continue
            try:
                # A savepoint, as for a new budget row (fleet.py): another runner may insert the same new row at
                # the same moment.
                async with conn.begin_nested():
                    await conn.execute(insert(learnt_limits).values(budget=budget, model=model, **values))
            except IntegrityError:
                await conn.execute(update(learnt_limits).where(key).values(**values))

    await store.write(go)
