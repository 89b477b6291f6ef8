"""Read-only queries for reports and the flat export formats, over one job's requests.

Each function takes an open `Store` and reads through its read-only connections; nothing here writes.
Counts per state and usage totals come from `Store.job_stats`.
Latencies are `finished_at - submitted_at`: from the last POST of a request to its final state (for a
background request that includes the polling, i.e. the generation time).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from sqlalchemy import ColumnElement, and_, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.states import RequestState
from runner.store import Store, UsageCounts, bounded_total
from runner.store.answer import answer
from runner.store.dialect import big_sum, json_field
from runner.store.tables import requests

__all__ = [
    "AttemptTotals",
    "ErrorExample",
    "ErrorGroup",
    "Latency",
    "ModelUsage",
    "SlowRequest",
    "attempt_totals",
    "errors_by_code",
    "latency",
    "slowest",
    "usage_by_model",
]

_USAGE_COLS = (
    requests.c.input_tokens,
    requests.c.cached_tokens,
    requests.c.output_tokens,
    requests.c.reasoning_tokens,
    requests.c.total_tokens,
)
DEFAULT_QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """Token sums of the requests billed to one model."""

    model: str | None  # the response's model when there is one (what was billed), else the request's
    requests: int
    usage: UsageCounts


@dataclass(frozen=True, slots=True)
class Latency:
    """Seconds from the last POST to the final state, over the `count` requests that have both times.

    Percentiles use the nearest-rank method: the value at rank ceil(q * count) in ascending order.
    """

    count: int
    percentiles: dict[float, float]  # quantile (0.5, 0.95, ...) -> seconds
    mean: float | None
    max: float | None


@dataclass(frozen=True, slots=True)
class AttemptTotals:
    """Attempts made, attempts beyond each request's first, and 429s met, over a job's requests."""

    attempts: int
    retries: int
    rate_limited: int


@dataclass(frozen=True, slots=True)
class ErrorExample:
    """One failed request, as an example of its error code."""

    custom_id: str
    line_no: int
    http_status: int | None
    message: str | None


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    """Failed requests that share an error code (a missing code counts as "failed")."""

    code: str
    count: int
    examples: list[ErrorExample]


@dataclass(frozen=True, slots=True)
class SlowRequest:
    """One of the slowest requests."""

    custom_id: str
    line_no: int
    seconds: float
    attempts: int


def _latency_expr() -> ColumnElement[float]:
    return requests.c.finished_at - requests.c.submitted_at


def _timed(job_id: str) -> ColumnElement[bool]:
    return and_(
        requests.c.job_id == job_id,
        requests.c.submitted_at.is_not(None),
        requests.c.finished_at.is_not(None),
    )


async def usage_by_model(store: Store, job_id: str) -> list[ModelUsage]:
    """Token sums per billed model, over the requests that used any tokens; most total tokens first."""
    # A stored body that is not JSON gives no model, never an error (dialect.json_field).
    model = func.coalesce(answer("model"), json_field(requests.c.body, "model"))
    stmt = (
        select(model.label("model"), func.count(), *(big_sum(c) for c in _USAGE_COLS))
        .where(
            requests.c.job_id == job_id,
            or_(requests.c.input_tokens > 0, requests.c.output_tokens > 0, requests.c.total_tokens > 0),
        )
        .group_by(model)
    )

    async def go(conn: AsyncConnection) -> list[ModelUsage]:
        rows = await conn.execute(stmt)
        out = [
            ModelUsage(
                None if r[0] is None else str(r[0]),
                int(r[1]),
                UsageCounts(*(bounded_total(x) for x in r[2:7])),
            )
            for r in rows
        ]
        return sorted(out, key=lambda m: (-m.usage.total_tokens, m.model or ""))

    return await store.read(go)


async def latency(store: Store, job_id: str, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> Latency:
    """Latency percentiles, mean and max; the latency column is streamed in order once, so memory stays flat."""

    async def go(conn: AsyncConnection) -> Latency:
        lat = _latency_expr()
        head = (await conn.execute(select(func.count(), func.avg(lat), func.max(lat)).where(_timed(job_id)))).one()
        n = int(head[0])
        if n == 0:
            return Latency(0, {}, None, None)
        # nearest rank: the value at 1-based rank ceil(q * n), clamped to [1, n]
        wanted: dict[int, list[float]] = {}
        for q in quantiles:
            rank = min(max(math.ceil(Fraction(str(q)) * n), 1), n)  # exact: 0.95 * 100 is not 95 in floats
            wanted.setdefault(rank - 1, []).append(q)
        found: dict[float, float] = {}
        last = max(wanted)
        result = await conn.stream(
            select(lat).where(_timed(job_id)).order_by(lat).limit(last + 1).execution_options(yield_per=5000)
        )
        i = 0
        async for (value,) in result:
            for q in wanted.get(i, ()):
                found[q] = float(value)
            i += 1
        return Latency(n, {q: found[q] for q in quantiles}, float(head[1]), float(head[2]))

    return await store.read(go)


async def attempt_totals(store: Store, job_id: str) -> AttemptTotals:
    """Sums of attempts, retries (attempts after a request's first) and 429s over a job's requests."""
    retries = case((requests.c.attempts > 1, requests.c.attempts - 1), else_=0)
    stmt = select(func.sum(requests.c.attempts), func.sum(retries), func.sum(requests.c.rate_limited)).where(
        requests.c.job_id == job_id
    )

    async def go(conn: AsyncConnection) -> AttemptTotals:
        r = (await conn.execute(stmt)).one()
        return AttemptTotals(int(r[0] or 0), int(r[1] or 0), int(r[2] or 0))

    return await store.read(go)


async def errors_by_code(store: Store, job_id: str, *, examples: int = 3, limit: int = 20) -> list[ErrorGroup]:
    """Failed requests grouped by error code, most frequent first, each with up to `examples` in file order."""
    code = func.coalesce(requests.c.error_code, "failed")
    failed = and_(requests.c.job_id == job_id, requests.c.state == RequestState.FAILED.value)
    counts_stmt = (
        select(code.label("code"), func.count().label("n"))
        .where(failed)
        .group_by(code)
        .order_by(func.count().desc(), code)
        .limit(limit)
    )
    ranked = (
        select(
            code.label("code"),
            requests.c.custom_id,
            requests.c.line_no,
            requests.c.http_status,
            requests.c.error_message,
            func.row_number().over(partition_by=code, order_by=requests.c.line_no).label("rn"),
        )
        .where(failed)
        .subquery()
    )
    examples_stmt = select(ranked).where(ranked.c.rn <= examples).order_by(ranked.c.code, ranked.c.rn)

    async def go(conn: AsyncConnection) -> list[ErrorGroup]:
        groups = [(str(r.code), int(r.n)) for r in await conn.execute(counts_stmt)]
        if not groups:
            return []
        by_code: dict[str, list[ErrorExample]] = {c: [] for c, _ in groups}
        for r in await conn.execute(examples_stmt):
            if r.code in by_code:
                by_code[r.code].append(ErrorExample(r.custom_id, r.line_no, r.http_status, r.error_message))
        return [ErrorGroup(c, n, by_code[c]) for c, n in groups]

    return await store.read(go)


async def slowest(store: Store, job_id: str, n: int = 5) -> list[SlowRequest]:
    """The `n` requests with the longest latency, slowest first."""
    lat = _latency_expr()
    stmt = (
        select(requests.c.custom_id, requests.c.line_no, lat.label("seconds"), requests.c.attempts)
        .where(_timed(job_id))
        .order_by(lat.desc(), requests.c.line_no)
        .limit(n)
    )

    async def go(conn: AsyncConnection) -> list[SlowRequest]:
        return [
            SlowRequest(r.custom_id, r.line_no, float(r.seconds), int(r.attempts)) for r in await conn.execute(stmt)
        ]

    return await store.read(go)
