"""Queries of structured-output checks (the `output_checks` table): writing each verdict, and reading them
back for `--repair`, the flat exports and the report.

Every function takes an open `Store` and goes through `store.read` / `store.write`, in portable SQLAlchemy
Core (no SQLite-only function), so the same code runs on PostgreSQL.

Over 400 lines on purpose: every query of the checks table and of the HTML report's aggregates beside it,
portable SQL kept together so that one reading shows what PostgreSQL and SQLite must both accept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    String,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.states import RequestState
from runner.store import Store, UsageCounts, bounded_total
from runner.store.tables import attempts, output_checks, requests

__all__ = [
    "CheckCounts",
    "CheckRecord",
    "RejectedUsage",
    "TimeBin",
    "Timeline",
    "check_counts",
    "checks_between",
    "has_checks",
    "record_checks",
    "repairs_done",
    "timeline",
]

_REJECTED = (
    output_checks.c.rejected_input_tokens,
    output_checks.c.rejected_cached_tokens,
    output_checks.c.rejected_output_tokens,
    output_checks.c.rejected_reasoning_tokens,
    output_checks.c.rejected_total_tokens,
)


@dataclass(frozen=True, slots=True)
class CheckRecord:
    """The check of one answer, written just before that answer's outcome (same lease, same runner).

    `rejected` is set when this answer failed its check and is asked again (`--repair`): its usage (it was
    paid for) is added to the request's rejected sums and its repair count goes up by one.
    """

    request_id: int
    job_id: str
    line_no: int
    status: str
    detail: str | None
    parsed: str | None
    rejected: UsageCounts | None = None
    model: str | None = None  # the model that billed the answer (for a rejected one's cost)


@dataclass(frozen=True, slots=True)
class RejectedUsage:
    """Usage of answers that failed their check and were asked again, by the model that billed them."""

    model: str | None
    answers: int
    usage: UsageCounts


@dataclass(frozen=True, slots=True)
class CheckCounts:
    """A job's structured-output checks: verdicts of the latest answers, and what the repairs cost."""

    by_status: dict[str, int]  # valid / invalid_json / schema_mismatch -> requests
    repaired: int  # requests whose answer was asked again at least once
    repairs: int  # answers rejected and asked again, in all
    rejected: list[RejectedUsage]


# One bound value per column ("p_<column>"), set per row: a whole group commit's checks take three
# statements (find, insert, update), whatever their number. Written only while this runner holds the
# request, as the outcome beside it will be.
_P = {c.name: bindparam(f"p_{c.name}", type_=c.type) for c in output_checks.c}
_LEASED = exists().where(
    requests.c.id == _P["request_id"],
    requests.c.lease_owner == bindparam("p_owner", type_=String),
    requests.c.state == RequestState.IN_PROGRESS.value,
)
_INSERT = insert(output_checks).from_select(list(output_checks.c), select(*_P.values()).where(_LEASED))
_ADDED = ("repairs", *(c.name for c in _REJECTED))  # sums over the answers; the other columns are the latest
_UPDATE = (
    update(output_checks)
    .where(output_checks.c.request_id == _P["request_id"], _LEASED)
    .values(
        {
            **{n: _P[n] for n in ("status", "detail", "parsed", "checked_at")},
            **{n: output_checks.c[n] + _P[n] for n in _ADDED},
            # the model of the latest rejected answer; an accepted one leaves it as it was
            "rejected_model": func.coalesce(_P["rejected_model"], output_checks.c.rejected_model),
        }
    )
)


def _params(r: CheckRecord, owner: str, now: float) -> dict[str, Any]:
    u = r.rejected or UsageCounts()
    row = {
        "request_id": r.request_id,
        "job_id": r.job_id,
        "line_no": r.line_no,
        "status": r.status,
        "detail": r.detail,
        "parsed": r.parsed,
        "repairs": 1 if r.rejected is not None else 0,
        "rejected_model": r.model if r.rejected is not None else None,
        **{f"rejected_{k}": v for k, v in u.as_dict().items()},
        "checked_at": now,
    }
    return {"p_owner": owner, **{f"p_{k}": v for k, v in row.items()}}


async def record_checks(store: Store, owner: str, records: Sequence[CheckRecord]) -> None:
    """Write the checks of answers whose outcome `owner` is about to commit (one transaction).

    Written before the outcome: a crash in between leaves the request in progress, to be sent again, and
    the usage of a rejected answer counted (it was paid for either way). A request `owner` no longer
    holds gets nothing written (its outcome will be refused too).
    """
    if not records:
        return
    now = store.clock()
    latest = {r.request_id: r for r in records}  # one check per request and commit (the last one)
    ids = list(latest)

    async def go(conn: AsyncConnection) -> None:
        found = await conn.execute(select(output_checks.c.request_id).where(output_checks.c.request_id.in_(ids)))
        known = {int(x) for x in found.scalars()}
        fresh = [_params(r, owner, now) for i, r in latest.items() if i not in known]
        again = [_params(r, owner, now) for i, r in latest.items() if i in known]
        if fresh:
            await conn.execute(_INSERT, fresh)
        if again:
            await conn.execute(_UPDATE, again)

    await store.write(go)


async def repairs_done(store: Store, request_id: int) -> int:
    """How many answers of this request were rejected and asked again so far."""

    async def go(conn: AsyncConnection) -> int:
        n = (
            await conn.execute(select(output_checks.c.repairs).where(output_checks.c.request_id == request_id))
        ).scalar_one_or_none()
        return int(n or 0)

    return await store.read(go)


# A reused line (`submit --reuse`) has no check of its own: its answer is its source's (store/answer.py), and
# so is its check, found the same way, by `reused_from`. The source's verdict is the line's: the same question
# (runner/reuse.py) includes `text`, so the same schema checked the same answer.
_SOURCE_CHECK = output_checks.alias("source_check")
_BORROWED = requests.join(_SOURCE_CHECK, _SOURCE_CHECK.c.request_id == requests.c.reused_from)


async def has_checks(store: Store, job_id: str) -> bool:
    """Whether any answer of the job was checked (a job of plain-text lines has none), here or, for a line
    answered from the store, where its answer came from."""

    async def go(conn: AsyncConnection) -> bool:
        hit = await conn.execute(select(output_checks.c.request_id).where(output_checks.c.job_id == job_id).limit(1))
        if hit.first() is not None:
            return True
        hit = await conn.execute(
            select(_SOURCE_CHECK.c.request_id)
            .select_from(_BORROWED)
            .where(requests.c.job_id == job_id, requests.c.reused_from.is_not(None))
            .limit(1)
        )
        return hit.first() is not None

    return await store.read(go)


async def checks_between(
    store: Store, job_id: str, first_line: int, last_line: int
) -> dict[int, tuple[str, str | None]]:
    """line -> (verdict, parsed JSON text) for the checked lines of `job_id` from first_line to last_line
    (a reused line's check is its source's)."""
    own = select(output_checks.c.line_no, output_checks.c.status, output_checks.c.parsed).where(
        and_(
            output_checks.c.job_id == job_id,
            output_checks.c.line_no >= first_line,
            output_checks.c.line_no <= last_line,
        )
    )
    borrowed = (
        select(requests.c.line_no, _SOURCE_CHECK.c.status, _SOURCE_CHECK.c.parsed)
        .select_from(_BORROWED)
        .where(
            requests.c.job_id == job_id,
            requests.c.line_no >= first_line,
            requests.c.line_no <= last_line,
            requests.c.reused_from.is_not(None),
        )
    )

    async def go(conn: AsyncConnection) -> dict[int, tuple[str, str | None]]:
        found = {int(r.line_no): (str(r.status), r.parsed) for r in await conn.execute(borrowed)}
        found.update((int(r.line_no), (str(r.status), r.parsed)) for r in await conn.execute(own))
        return found

    return await store.read(go)


async def check_counts(store: Store, job_id: str) -> CheckCounts:
    """Verdicts per status (reused lines' included), requests repaired, and the rejected answers' usage per
    model (all in SQL)."""
    by_status = (
        select(output_checks.c.status, func.count())
        .where(output_checks.c.job_id == job_id)
        .group_by(output_checks.c.status)
    )
    rejected = (
        select(
            output_checks.c.rejected_model,
            func.count(),
            func.sum(output_checks.c.repairs),
            *(func.sum(c) for c in _REJECTED),
        )
        .where(output_checks.c.job_id == job_id, output_checks.c.repairs > 0)
        .group_by(output_checks.c.rejected_model)
    )

    # The verdicts of the job's reused lines are their sources' (has_checks); what their repairs cost is not
    # this job's spending.
    borrowed = (
        select(_SOURCE_CHECK.c.status, func.count())
        .select_from(_BORROWED)
        .where(requests.c.job_id == job_id, requests.c.reused_from.is_not(None))
        .group_by(_SOURCE_CHECK.c.status)
    )

    async def go(conn: AsyncConnection) -> CheckCounts:
        counts = {str(s): int(n) for s, n in await conn.execute(by_status)}
        for s, n in await conn.execute(borrowed):
            counts[str(s)] = counts.get(str(s), 0) + int(n)
        models: list[RejectedUsage] = []
        repaired = repairs = 0
        for r in await conn.execute(rejected):
            repaired += int(r[1])
            repairs += int(r[2] or 0)
            models.append(
                RejectedUsage(
                    None if r[0] is None else str(r[0]),
                    int(r[2] or 0),
                    UsageCounts(*(bounded_total(x) for x in r[3:8])),
                )
            )
        models.sort(key=lambda m: (-m.usage.total_tokens, m.model or ""))
        return CheckCounts(counts, repaired, repairs, models)

    return await store.read(go)


# -- the HTML report's aggregates --------------------------------------------------------------------------
# Everything is grouped in SQL, so a million-request job gives the page a few hundred numbers, not a row per
# request. Portable: no floor()/ceil() (SQLite has them only when built with its math functions); a CAST to
# integer truncates in SQLite and rounds in PostgreSQL, and `_floor` corrects the rounding on both.

TIMELINE_BINS = 60
LATENCY_EDGES: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)  # seconds; the last bin is open
_QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True, slots=True)
class TimeBin:
    """One slice of the run: requests finished in it, and the attempts recorded in it."""

    start: float  # seconds after the run's first claim
    completed: int
    failed: int  # failed or cancelled
    latency: dict[float, float]  # nearest-rank percentiles of the requests finished in this slice
    attempts: int
    retried: int  # attempts whose outcome was "asked again"
    rate_limited: int  # attempts answered 429


@dataclass(frozen=True, slots=True)
class Timeline:
    """A job's run in TIMELINE_BINS slices of `width` seconds from `t0`, and its latency histogram."""

    t0: float | None
    width: float
    bins: list[TimeBin]
    histogram: list[int]  # requests per latency bucket: LATENCY_EDGES, then one open-ended bucket


def _floor(x: ColumnElement[Any]) -> ColumnElement[int]:
    whole = cast(x, Integer)
    return whole - case((cast(whole, Float) > x, 1), else_=0)


def _bin(t: ColumnElement[Any], t0: float, width: float, bins: int) -> ColumnElement[int]:
    """The slice `t` falls in, clamped to [0, bins - 1] (CASE: SQLite's max(a, b) is GREATEST in PostgreSQL)."""
    i = _floor((t - t0) / width)
    return case((i < 0, 0), (i > bins - 1, bins - 1), else_=i)


def _ceil(x: ColumnElement[Any]) -> ColumnElement[int]:
    whole = cast(x, Integer)
    return whole + case((cast(whole, Float) < x, 1), else_=0)


async def timeline(store: Store, job_id: str, bins: int = TIMELINE_BINS) -> Timeline:
    """Completions, failures, latency percentiles, attempts, retries and 429s per slice of the run."""
    lat = requests.c.finished_at - requests.c.submitted_at
    timed = and_(requests.c.job_id == job_id, requests.c.finished_at.is_not(None))

    async def go(conn: AsyncConnection) -> Timeline:
        span = (
            await conn.execute(
                select(func.min(requests.c.started_at), func.max(requests.c.finished_at)).where(
                    requests.c.job_id == job_id
                )
            )
        ).one()
        if span[0] is None or span[1] is None:
            return Timeline(None, 0.0, [], [0] * (len(LATENCY_EDGES) + 1))
        t0 = float(span[0])
        width = max((float(span[1]) - t0) / bins, 0.001)
        b = _bin(requests.c.finished_at, t0, width, bins).label("b")
        ok = requests.c.state.in_([RequestState.COMPLETED.value, RequestState.INCOMPLETE.value])
        # Requests per slice and the latency histogram in one pass: grouped by slice and latency bucket
        # (-1: no send time, so no latency).
        bucket = case(
            (requests.c.submitted_at.is_(None), -1),
            *((lat < edge, i) for i, edge in enumerate(LATENCY_EDGES)),
            else_=len(LATENCY_EDGES),
        ).label("k")
        per_bin = (
            select(
                b,
                bucket,
                func.sum(case((ok, 1), else_=0)),
                func.sum(case((ok, 0), else_=1)),
            )
            .where(timed)
            .group_by(b, bucket)
        )
        done: dict[int, tuple[int, int]] = {}
        hist = [0] * (len(LATENCY_EDGES) + 1)
        for r in await conn.execute(per_bin):
            c, f = done.get(int(r[0]), (0, 0))
            done[int(r[0])] = (c + int(r[2] or 0), f + int(r[3] or 0))
            if int(r[1]) >= 0:
                hist[int(r[1])] += int(r[2] or 0) + int(r[3] or 0)
        # Percentiles per slice: rank the latencies inside each slice, keep the nearest ranks.
        with_lat = and_(timed, requests.c.submitted_at.is_not(None))
        ranked = (
            select(
                b,
                lat.label("lat"),
                func.row_number().over(partition_by=b, order_by=lat).label("rn"),
                func.count().over(partition_by=b).label("n"),
            )
            .where(with_lat)
            .subquery()
        )
        ranks = [_ceil(literal(q, Float) * ranked.c.n) for q in _QUANTILES]
        picked = select(ranked.c.b, ranked.c.rn, ranked.c.n, ranked.c.lat).where(
            or_(*(ranked.c.rn == case((r < 1, 1), else_=r) for r in ranks))
        )
        pct: dict[int, dict[float, float]] = {}
        for r in await conn.execute(picked):
            n, rn = int(r.n), int(r.rn)
            for q in _QUANTILES:
                if max(math.ceil(Fraction(str(q)) * n), 1) == rn:
                    pct.setdefault(int(r.b), {})[q] = float(r.lat)
        # Attempts by when their outcome was recorded.
        ab = _bin(attempts.c.recorded_at, t0, width, bins).label("b")
        per_attempt = (
            select(
                ab,
                func.count(),
                func.sum(case((attempts.c.outcome == RequestState.QUEUED.value, 1), else_=0)),
                func.sum(case((attempts.c.http_status == 429, 1), else_=0)),
            )
            .select_from(attempts.join(requests, requests.c.id == attempts.c.request_id))
            .where(requests.c.job_id == job_id)
            .group_by(ab)
        )
        tries = {int(r[0]): (int(r[1]), int(r[2] or 0), int(r[3] or 0)) for r in await conn.execute(per_attempt)}
        out = [
            TimeBin(
                i * width,
                done.get(i, (0, 0))[0],
                done.get(i, (0, 0))[1],
                pct.get(i, {}),
                *tries.get(i, (0, 0, 0)),
            )
            for i in range(bins)
        ]
        return Timeline(t0, width, out, hist)

    return await store.read(go)
