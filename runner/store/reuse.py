"""The store's side of `--reuse`, `runner estimate` and the budget: queries as functions over a `Store`.

Portable SQLAlchemy Core (SQLite and PostgreSQL): no JSON functions; request bodies are parsed by the
caller where a model name is needed.

A reused row is `completed`, and `reused_from` names the source request, always an original answer; it holds
no copy of the source's response body (NULL): every reader follows the reference (store/answer.py), and
deleting the source's job hands the answer to one referencing row first. Its own usage columns stay 0 (the job
spent nothing on it); the usage the answer was paid for is kept in the `reused_*` columns, so "tokens reused"
survives the deletion of the job it came from, and those columns (answer.REUSED) say that a row was reused.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Select,
    String,
    and_,
    bindparam,
    exists,
    func,
    literal_column,
    select,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.states import RequestState
from runner.store.answer import REUSED, paid
from runner.store.models import NewRequest
from runner.store.store import Store, bounded_total
from runner.store.tables import REUSED_USAGE, jobs, requests
from runner.usage import UsageCounts

__all__ = [
    "ReusedRow",
    "add_reusing",
    "completed_outputs",
    "reusable_hashes",
    "reuse_answers",
    "reused_count",
    "reused_line_numbers",
    "reused_rows",
    "unfinished_bodies",
]

COMPLETED = RequestState.COMPLETED.value
# Written as a literal, not a bound parameter: only then can SQLite use the partial hash index (tables.py).
_IS_COMPLETED: ColumnElement[str] = literal_column(f"'{COMPLETED}'")
QUEUED = RequestState.QUEUED.value
HASH_BATCH = 400  # hashes per lookup: SQLite joins at most 500 SELECTs in one UNION ALL
HISTORY_ROWS = 2000  # recent completed answers read to learn a model's typical output


def _source_id(job_id: str, newer_than: float | None) -> Any:
    """The newest original answer (not itself reused) to the same question, outside `job_id`."""
    src = requests.alias("source")
    cond = [
        src.c.body_hash == requests.c.body_hash,
        src.c.state == _IS_COMPLETED,
        src.c.reused_from.is_(None),
        src.c.response_body.is_not(None),
        src.c.job_id != job_id,
    ]
    if newer_than is not None:
        cond.append(src.c.finished_at >= newer_than)
    return select(func.max(src.c.id)).where(*cond).scalar_subquery()


async def reuse_answers(
    store: Store, job_id: str, first_line: int, last_line: int, *, newer_than: float | None = None
) -> int:
    """Complete the queued lines `first_line..last_line` of `job_id` whose question was answered before
    (`completed` in another job, finished at or after `newer_than` if given) from that stored answer; how many.

    One UPDATE ... FROM, a hash-index probe per line: a chunk of a submit at a time, so the write lock is
    held for milliseconds.
    """
    src = requests.alias("src")
    now = store.clock()
    stmt = (
        update(requests)
        .where(
            requests.c.job_id == job_id,
            requests.c.line_no >= first_line,
            requests.c.line_no <= last_line,
            requests.c.state == QUEUED,
            requests.c.body_hash.is_not(None),
            src.c.body_hash == requests.c.body_hash,  # implied by the next line; says the join to SQLAlchemy
            src.c.id == _source_id(job_id, newer_than),
        )
        .values(
            state=COMPLETED,
            reused_from=src.c.id,
            http_status=src.c.http_status,
            request_id=src.c.request_id,
            finished_at=now,
            updated_at=now,
            # What the answer was paid for: a promoted source (store/answer.py) carries it in its reused_*.
            **{f"reused_{c}": paid(getattr(src.c, c), getattr(src.c, f"reused_{c}")) for c in REUSED_USAGE},
        )
    )

    async def go(conn: AsyncConnection) -> int:
        await _wait_for_deletes(conn, job_id)
        return int((await conn.execute(stmt)).rowcount)

    return await store.write(go)


async def _wait_for_deletes(conn: AsyncConnection, job_id: str) -> None:
    """PostgreSQL: take a key-share lock on every other published job's row before referencing its answers.

    A job being deleted copies its answers into the rows that reference them, then deletes its own (store/
    answer.py), holding its job row FOR UPDATE. Under READ COMMITTED a reference made in between would miss
    the copy, so this waits for any such delete first: afterwards its rows are gone from the next statement's
    snapshot, and a later delete waits for this commit and sees the references. (SQLite runs one write
    transaction at a time, so there nothing can come in between.) A reuse submit's chunk takes the same locks
    first (postgres/hot.sql `reuse_wait_for_deletes`).
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(
            select(jobs.c.id)
            .where(jobs.c.phase == "ready", jobs.c.id != job_id)
            .order_by(jobs.c.id)  # the order delete_jobs locks in: neither waits on the other in a cycle
            .with_for_update(read=True, key_share=True)
        )


# `submit --reuse`: a chunk inserted already answered where it can be (one INSERT ... SELECT, `insert_answered`
# in each backend's hot.sql), so each row is written once. Inserting the rows queued and then completing them
# (`reuse_answers`) wrote every page twice and moved every row between three indexes: on SQLite 1,000,000
# reused lines took 11.6 CPU-s of SQLite that way and 9.7 this way, and wrote 600 MB less; as rows of VALUES
# on SQLite's own connection beside the parsing (sqlite/hot.py), 49,980 -> 71,190 lines/s. On PostgreSQL the
# chunk goes in by COPY to a temporary table that the statement reads (postgres/__init__.py `insert_answered`).
async def add_reusing(
    store: Store, job_id: str, rows: Sequence[NewRequest], *, newer_than: float | None = None
) -> int | None:
    """Insert a chunk of a staging job's lines, each line whose question was answered before (as
    `reuse_answers` finds it) already completed from that answer; how many were. None, with nothing
    inserted, when a custom_id is used twice: the caller inserts the chunk its usual way (which names the
    duplicates) and then calls `reuse_answers`.
    """
    if not rows:
        return None
    return await store.add_answered_requests(job_id, rows, newer_than)


@functools.cache
def _known_hashes(n: int, aged: bool) -> Select[str]:
    """SELECT those of n hashes (:h0 ...) that an original answer has (finished at or after :newer_than if aged).

    The hashes are a derived table probed one by one (a correlated EXISTS), not `body_hash IN (...)`: for an
    IN list SQLite prefers the index on state, which walks every completed row. Made once per shape, so
    SQLAlchemy compiles it once.
    """
    wanted = union_all(*(select(bindparam(f"h{i}", type_=String).label("h")) for i in range(n))).subquery("wanted")
    src = requests.alias("src")
    cond = [
        src.c.body_hash == wanted.c.h,
        src.c.state == _IS_COMPLETED,
        src.c.reused_from.is_(None),
        src.c.response_body.is_not(None),
    ]
    if aged:
        cond.append(src.c.finished_at >= bindparam("newer_than", type_=Float))
    return select(wanted.c.h).where(exists().where(*cond))


async def reusable_hashes(store: Store, hashes: Sequence[str], *, newer_than: float | None = None) -> set[str]:
    """Those of `hashes` that an original `completed` answer in the store has (for `runner estimate --reuse`)."""
    wanted = list(dict.fromkeys(hashes))
    found: set[str] = set()

    async def go(conn: AsyncConnection) -> None:
        for i in range(0, len(wanted), HASH_BATCH):
            part = wanted[i : i + HASH_BATCH]
            params: dict[str, Any] = {f"h{j}": h for j, h in enumerate(part)}
            if newer_than is not None:
                params["newer_than"] = newer_than
            rows = await conn.execute(_known_hashes(len(part), newer_than is not None), params)
            found.update(r[0] for r in rows)

    await store.read(go)
    return found


@dataclass(frozen=True, slots=True)
class ReusedRow:
    """A reused line's request body (for its model) and the usage its answer was paid for elsewhere."""

    body: str
    usage: UsageCounts


async def reused_rows(store: Store, job_id: str) -> list[ReusedRow]:
    """Every reused line of a job, with the usage its answer carried over."""

    async def go(conn: AsyncConnection) -> list[ReusedRow]:
        rows = await conn.execute(
            select(requests.c.body, *(getattr(requests.c, f"reused_{c}") for c in REUSED_USAGE)).where(
                requests.c.job_id == job_id, REUSED
            )
        )
        return [ReusedRow(r[0], UsageCounts(*(bounded_total(v or 0) for v in r[1:]))) for r in rows]

    return await store.read(go)


async def reused_count(store: Store, job_id: str) -> int:
    """How many lines of a job were answered from the store."""

    async def go(conn: AsyncConnection) -> int:
        r = await conn.execute(select(func.count()).where(requests.c.job_id == job_id, REUSED))
        return int(r.scalar_one())

    return await store.read(go)


async def reused_line_numbers(store: Store, job_id: str, chunk: int = 100_000) -> bytearray:
    """A flag per line number (1 = reused), for the flat exports' `reused` column: a byte per line, not a set,
    read a slice of lines at a time (a million reused lines read as one list took 150 MB)."""
    reused = and_(requests.c.job_id == job_id, REUSED)

    async def go(conn: AsyncConnection) -> bytearray:
        last = (await conn.execute(select(func.max(requests.c.line_no)).where(reused))).scalar_one_or_none()
        flags = bytearray(0 if last is None else int(last) + 1)
        after = 0
        while after < len(flags) - 1:
            lines = (
                await conn.execute(
                    select(requests.c.line_no).where(
                        reused, requests.c.line_no > after, requests.c.line_no <= after + chunk
                    )
                )
            ).scalars()
            for line in lines:
                flags[line] = 1
            after += chunk
        return flags

    return await store.read(go)


async def completed_outputs(store: Store) -> list[tuple[str, int]]:
    """(request body, output tokens) of the most recent original answers in the store (HISTORY_ROWS at most):
    what `runner estimate` learns a model's typical output from."""

    async def go(conn: AsyncConnection) -> list[tuple[str, int]]:
        rows = await conn.execute(
            select(requests.c.body, requests.c.output_tokens)
            .where(and_(requests.c.state == COMPLETED, ~REUSED))
            .order_by(requests.c.id.desc())
            .limit(HISTORY_ROWS)
        )
        return [(r[0], int(r[1] or 0)) for r in rows]

    return await store.read(go)


async def unfinished_bodies(store: Store, job_id: str, chunk: int = 5000) -> AsyncIterator[list[str]]:
    """The bodies of a job's queued and in-progress requests, in file order, a chunk at a time."""
    await store.get_job(job_id)
    after = 0
    while True:

        async def go(conn: AsyncConnection, after: int = after) -> list[tuple[int, str]]:
            rows = await conn.execute(
                select(requests.c.line_no, requests.c.body)
                .where(
                    requests.c.job_id == job_id,
                    requests.c.line_no > after,
                    requests.c.state.in_([QUEUED, RequestState.IN_PROGRESS.value]),
                )
                .order_by(requests.c.line_no)
                .limit(chunk)
            )
            return [(int(r[0]), str(r[1])) for r in rows]

        part = await store.read(go)
        if not part:
            return
        after = part[-1][0]
        yield [b for _, b in part]
