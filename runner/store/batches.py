"""The batch lane's queries: chunks of queued requests leased to a Batch API batch, and the batches table.

A chunk's requests are `in_progress` under the lease owner `batch:<id>` with a lease that never runs out
(`BATCH_LEASE_UNTIL`): no other runner claims, reclaims or re-sends them while the batch is open, and the
merge writes their outcomes through the ordinary guarded write-back as that owner. Each step of a batch
(file uploaded, batch created, results merged) is committed here before the next one starts.

Over 400 lines on purpose: every query of the batches table and of the requests a batch holds is here, so
that the rule above (each step committed before the next) is kept, and read, in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, case, delete, exists, func, insert, literal, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.states import RequestState
from runner.store.answer import REUSED, answer
from runner.store.dialect import big_sum, json_field
from runner.store.store import Store, bounded_total
from runner.store.tables import batches, requests
from runner.usage import UsageCounts

__all__ = [
    "BATCH_LEASE_UNTIL",
    "BatchRow",
    "LaneUsage",
    "Member",
    "QueuePosition",
    "batch_user",
    "batches_of",
    "chunk_lines",
    "clear_lane",
    "file_user",
    "leftovers",
    "members",
    "next_due",
    "open_batches",
    "owner_of",
    "pack",
    "queued_in_conversations",
    "queued_page",
    "set_batch",
    "take_over",
    "usage_by_model_and_lane",
]

Q = RequestState.QUEUED.value
IP = RequestState.IN_PROGRESS.value
BATCH_LEASE_UNTIL = 4_102_444_800.0  # 2100-01-01: the batch, not a clock, ends this lease
_IN_CHUNK = 2_000  # ids per IN (...) list: well under SQLite's and PostgreSQL's bound-parameter limits

PACKED, UPLOADED, CREATED, MERGED = "packed", "uploaded", "created", "merged"


def _now(store: Store) -> float:
    # The store's clock (tests move it on) when this Store has one to lend; the wall clock otherwise.
    clock: Callable[[], float] = store.clock
    return clock()


def owner_of(batch_row: int) -> str:
    """The lease owner of the requests packed into batch row `batch_row`."""
    return f"batch:{batch_row}"


@dataclass(frozen=True, slots=True)
class BatchRow:
    """One input file and its batch, as far as the runner got with them."""

    id: int
    job_id: str
    model: str
    lines: int
    bytes: int
    step: str  # packed, uploaded, created, merged
    owner: str | None  # the run that uploads and creates it; another run takes it over only once that one is gone
    input_file_id: str | None
    batch_id: str | None
    status: str | None
    done_count: int
    failed_count: int
    output_file_id: str | None
    error_file_id: str | None
    errors: str | None
    created_at: float
    updated_at: float
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class Member:
    """A request of a chunk, as the merge needs it."""

    id: int
    job_id: str
    line_no: int
    attempts: int


def _row(r: Any) -> BatchRow:
    return BatchRow(**{c.name: getattr(r, c.name) for c in batches.c})


# Where the batch lane's walk of the queue is: (job_id, sched, id) of the last row it read; None at the start.
QueuePosition = tuple[str, int, int] | None
_BEFORE_ALL = -1  # below every sched (a line number) and id


def _continued() -> ColumnElement[bool]:
    """The request is the parent of another line (`previous_response_id: "@id"`). A Batch API answer cannot be
    continued (the mock, like the API, keeps no batch response to continue), so a parent is left to the sync
    lane with its children: sent by the batch lane, its children failed `previous_response_not_found`."""
    child = requests.alias("child")
    return exists(select(child.c.id).where(child.c.parent_id == requests.c.id))


async def queued_page(
    store: Store, job_ids: Sequence[str], after: QueuePosition, limit: int
) -> tuple[list[tuple[int, str, str, str]], QueuePosition]:
    """Due queued requests after `after`: (id, job_id, custom_id, body), and where the page ends. Job by job (in
    job id order), each job's in claim order (sched, id: a prompt-cache group's lines together), which is a
    walk of ix_requests_queued_sched; the batch lane needs each queued row once, in no particular order, and
    a submit's rows then enter one index fewer (migration 0014 dropped PostgreSQL's queued rows by id).
    Requests that share a conversation, or continue another line's response, are left out: they must run one
    at a time, in order, which a batch cannot promise. So are the lines others continue (see _continued)."""
    now = _now(store)
    todo = sorted(j for j in set(job_ids) if after is None or j >= after[0])
    # Written out, not bound: the partial index's WHERE must be provable from the statement on both backends.
    queued = requests.c.state == literal(Q, literal_execute=True)
    cols = (requests.c.id, requests.c.job_id, requests.c.custom_id, requests.c.body, requests.c.sched)
    whole_key = store.engine.dialect.name == "postgresql"

    async def go(conn: AsyncConnection) -> tuple[list[tuple[int, str, str, str]], QueuePosition]:
        page: list[tuple[int, str, str, str]] = []
        end = after
        for job in todo:
            stmt = select(*cols).where(
                requests.c.job_id == job,
                queued,
                requests.c.next_attempt_at <= now,
                requests.c.conversation.is_(None),
                requests.c.parent_id.is_(None),
                ~_continued(),
            )
            # A seek into ix_requests_queued_sched, even from a job's start. PostgreSQL, given (sched, id) only,
            # chose the (job_id, state) index and sorted the job's queued rows for every page; given the whole
            # key it walks the index. SQLite seeks with (sched, id) only, and walks the whole job with the key.
            start = after if after is not None and job == after[0] else (job, _BEFORE_ALL, _BEFORE_ALL)
            if whole_key:
                stmt = stmt.where(tuple_(requests.c.job_id, requests.c.sched, requests.c.id) > tuple_(*start))
            else:
                stmt = stmt.where(tuple_(requests.c.sched, requests.c.id) > tuple_(*start[1:]))
            for r in await conn.execute(stmt.order_by(requests.c.sched, requests.c.id).limit(limit - len(page))):
                page.append((r.id, r.job_id, r.custom_id, r.body))
                end = (r.job_id, r.sched, r.id)
            if len(page) >= limit:
                break
        return page, end

    return await store.read(go)


async def next_due(store: Store, job_ids: Sequence[str]) -> tuple[int, float | None]:
    """Queued requests (not sharing a conversation nor continuing a line) and the earliest time one is due."""
    stmt = select(func.count(), func.min(requests.c.next_attempt_at)).where(
        requests.c.job_id.in_(list(job_ids)),
        requests.c.state == Q,
        requests.c.conversation.is_(None),
        requests.c.parent_id.is_(None),
        ~_continued(),
    )

    async def go(conn: AsyncConnection) -> tuple[int, float | None]:
        n, due = (await conn.execute(stmt)).one()
        return int(n), due

    return await store.read(go)


async def take_over(store: Store, batch_row: int, was: str | None, owner: str) -> bool:
    """Make `owner` the run that finishes uploading and creating `batch_row`, if it is still `was`'s."""
    now = _now(store)
    same = batches.c.owner.is_(None) if was is None else batches.c.owner == was

    async def go(conn: AsyncConnection) -> bool:
        r = await conn.execute(
            update(batches).where(batches.c.id == batch_row, same).values(owner=owner, updated_at=now)
        )
        return bool(r.rowcount)

    return await store.write(go)


async def queued_in_conversations(store: Store, job_ids: Sequence[str]) -> int:
    """Queued requests that share a conversation or continue another line (the batch lane leaves them to the
    sync lane)."""
    stmt = select(func.count()).where(
        requests.c.job_id.in_(list(job_ids)),
        requests.c.state == Q,
        or_(requests.c.conversation.is_not(None), requests.c.parent_id.is_not(None), _continued()),
    )

    async def go(conn: AsyncConnection) -> int:
        return int((await conn.execute(stmt)).scalar_one())

    return await store.read(go)


async def pack(
    store: Store, job_id: str, model: str, row_ids: Sequence[int], nbytes: int, owner: str
) -> BatchRow | None:
    """Lease `row_ids` (those still queued) to a new batch row in one transaction, counting their attempt.

    None when none of them was still queued (another runner took them meanwhile).
    """
    now = _now(store)

    async def go(conn: AsyncConnection) -> BatchRow | None:
        values = {"job_id": job_id, "model": model, "lines": 0, "bytes": nbytes, "step": PACKED, "owner": owner}
        new = insert(batches).values(**values, done_count=0, failed_count=0, created_at=now, updated_at=now)
        bid = int((await conn.execute(new.returning(batches.c.id))).scalar_one())
        taken = 0
        for i in range(0, len(row_ids), _IN_CHUNK):
            u = await conn.execute(
                update(requests)
                .where(requests.c.id.in_(list(row_ids[i : i + _IN_CHUNK])), requests.c.state == Q)
                .values(
                    state=IP,
                    lease_owner=owner_of(bid),
                    lease_expires_at=BATCH_LEASE_UNTIL,
                    attempts=requests.c.attempts + 1,
                    started_at=func.coalesce(requests.c.started_at, now),
                    submitted_at=now,
                    updated_at=now,
                    lane="batch",
                )
            )
            taken += int(u.rowcount)
        if taken == 0:
            await conn.execute(delete(batches).where(batches.c.id == bid))
            return None
        await conn.execute(update(batches).where(batches.c.id == bid).values(lines=taken))
        row = (await conn.execute(select(batches).where(batches.c.id == bid))).one()
        return _row(row)

    return await store.write(go)


async def chunk_lines(store: Store, batch_row: int) -> list[tuple[str, str]]:
    """(custom_id, body) of the requests still leased to `batch_row`, in id order: the input file's lines."""
    stmt = (
        select(requests.c.custom_id, requests.c.body)
        .where(requests.c.lease_owner == owner_of(batch_row), requests.c.state == IP)
        .order_by(requests.c.id)
    )

    async def go(conn: AsyncConnection) -> list[tuple[str, str]]:
        return [(r.custom_id, r.body) for r in await conn.execute(stmt)]

    return await store.read(go)


async def members(store: Store, batch_row: int) -> dict[str, Member]:
    """custom_id -> the request, for the requests still leased to `batch_row` (those not merged yet)."""
    stmt = select(
        requests.c.id, requests.c.job_id, requests.c.line_no, requests.c.custom_id, requests.c.attempts
    ).where(requests.c.lease_owner == owner_of(batch_row), requests.c.state == IP)

    async def go(conn: AsyncConnection) -> dict[str, Member]:
        return {r.custom_id: Member(r.id, r.job_id, r.line_no, r.attempts) for r in await conn.execute(stmt)}

    return await store.read(go)


async def member_bodies(store: Store, batch_row: int) -> list[tuple[int, str]]:
    """(id, body) of the requests still leased to `batch_row`: what an open batch may yet cost."""
    stmt = select(requests.c.id, requests.c.body).where(
        requests.c.lease_owner == owner_of(batch_row), requests.c.state == IP
    )

    async def go(conn: AsyncConnection) -> list[tuple[int, str]]:
        return [(r.id, r.body) for r in await conn.execute(stmt)]

    return await store.read(go)


async def leftovers(store: Store, batch_row: int) -> list[Member]:
    """The requests of `batch_row` that its output and error files did not settle."""
    return list((await members(store, batch_row)).values())


async def file_user(store: Store, file_id: str, batch_row: int) -> BatchRow | None:
    """The batch row, other than `batch_row`, whose input, output or error file is `file_id` (None when there is
    none): a file id the API gives for one batch is never another's."""
    named = or_(
        batches.c.input_file_id == file_id, batches.c.output_file_id == file_id, batches.c.error_file_id == file_id
    )
    stmt = select(batches).where(named, batches.c.id != batch_row).limit(1)

    async def go(conn: AsyncConnection) -> BatchRow | None:
        r = (await conn.execute(stmt)).first()
        return None if r is None else _row(r)

    return await store.read(go)


async def batch_user(store: Store, batch_id: str, batch_row: int) -> BatchRow | None:
    """The batch row, other than `batch_row`, that batch `batch_id` already is (None when there is none)."""
    stmt = select(batches).where(batches.c.batch_id == batch_id, batches.c.id != batch_row).limit(1)

    async def go(conn: AsyncConnection) -> BatchRow | None:
        r = (await conn.execute(stmt)).first()
        return None if r is None else _row(r)

    return await store.read(go)


async def unpack(store: Store, batch_row: int) -> int:
    """Undo `pack` for a chunk from which no batch was created: its requests back to the queue, the attempt
    given back and the lane forgotten, and the chunk row gone (nothing of it can be billed). How many went back."""
    now = _now(store)

    async def go(conn: AsyncConnection) -> int:
        gone = await conn.execute(
            delete(batches).where(batches.c.id == batch_row, batches.c.step.in_([PACKED, UPLOADED]))
        )
        if not gone.rowcount:
            return 0
        back = await conn.execute(
            update(requests)
            .where(requests.c.lease_owner == owner_of(batch_row), requests.c.state == IP)
            .values(
                state=Q,
                attempts=requests.c.attempts - 1,
                lease_owner=None,
                lease_expires_at=None,
                lane=None,
                updated_at=now,
            )
        )
        return int(back.rowcount)

    return await store.write(go)


async def clear_lane(store: Store, row_ids: Sequence[int]) -> None:
    """Forget the batch lane of requests that went back to the queue (a later lane finishes them)."""
    if not row_ids:
        return

    async def go(conn: AsyncConnection) -> None:
        for i in range(0, len(row_ids), _IN_CHUNK):
            await conn.execute(
                update(requests)
                .where(requests.c.id.in_(list(row_ids[i : i + _IN_CHUNK])), requests.c.state != IP)
                .values(lane=None)
            )

    await store.write(go)


async def set_batch(store: Store, batch_row: int, **values: Any) -> None:
    """Record what the runner learned of one batch (a step, an id, its status and counts)."""
    now = _now(store)
    if values.get("step") == MERGED:
        values.setdefault("finished_at", now)

    async def go(conn: AsyncConnection) -> None:
        await conn.execute(update(batches).where(batches.c.id == batch_row).values(**values, updated_at=now))

    await store.write(go)


async def open_batches(store: Store, job_ids: Sequence[str]) -> list[BatchRow]:
    """The batches of `job_ids` whose results are not merged yet, oldest first."""
    stmt = select(batches).where(batches.c.job_id.in_(list(job_ids)), batches.c.step != MERGED).order_by(batches.c.id)

    async def go(conn: AsyncConnection) -> list[BatchRow]:
        return [_row(r) for r in await conn.execute(stmt)]

    return await store.read(go)


async def batches_of(store: Store, job_id: str) -> list[BatchRow]:
    """Every batch of one job, oldest first."""
    stmt = select(batches).where(batches.c.job_id == job_id).order_by(batches.c.id)

    async def go(conn: AsyncConnection) -> list[BatchRow]:
        return [_row(r) for r in await conn.execute(stmt)]

    return await store.read(go)


@dataclass(frozen=True, slots=True)
class LaneUsage:
    """Token sums of the requests of one model that one lane finished (sync, flex or batch)."""

    model: str | None
    lane: str
    requests: int
    usage: UsageCounts


async def usage_by_model_and_lane(store: Store, job_id: str) -> list[LaneUsage]:
    """Token sums per billed model and lane: `batch` when the Batch API answered, `flex` when the response
    reports the flex tier (the tier that ran it, which may differ from the one asked for), else `sync`."""
    # The same field readers as the report's usage by model, so both agree on what a row's model is.
    model = func.coalesce(answer("model"), json_field(requests.c.body, "model"))
    lane = case(
        (requests.c.lane == "batch", "batch"),
        (answer("service_tier") == "flex", "flex"),
        else_="sync",
    )
    sums = [big_sum(c) for c in _USAGE]  # never an overflow (see dialect.big_sum)
    stmt = (
        select(model.label("model"), lane.label("lane"), func.count(), *sums)
        .where(
            requests.c.job_id == job_id,
            or_(
                requests.c.input_tokens > 0,
                requests.c.output_tokens > 0,
                requests.c.total_tokens > 0,
                # An answer without usage (a self-hosted server may send none) was still sent to this model:
                # left out, an unpriced model vanished and the report said a complete "$0.0000". A reused
                # answer was not sent (the report counts it apart).
                and_(requests.c.state.in_(_ANSWERED), ~REUSED),
            ),
        )
        .group_by(model, lane)
    )

    async def go(conn: AsyncConnection) -> list[LaneUsage]:
        return [
            LaneUsage(
                None if r[0] is None else str(r[0]),
                str(r[1]),
                int(r[2]),
                UsageCounts(*(bounded_total(x) for x in r[3:8])),
            )
            for r in await conn.execute(stmt)
        ]

    return await store.read(go)


_ANSWERED = (RequestState.COMPLETED.value, RequestState.INCOMPLETE.value)
_USAGE = (
    requests.c.input_tokens,
    requests.c.cached_tokens,
    requests.c.output_tokens,
    requests.c.reasoning_tokens,
    requests.c.total_tokens,
)
