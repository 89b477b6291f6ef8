"""A request's answer as every reader sees it, and the one rule that keeps it there.

A line answered from the store (`submit --reuse`, store/reuse.py) holds no copy of its answer: its
`response_body` is NULL and `reused_from` names the source, always an original answer (never a reused row).
So the disk writes each answer once, however often it is reused. Every query that reads an answer reads it
through `answer()`: the row's own body when it has one (every other row, and rows reused before answers were
referenced, which kept a copy), else its source's. Hand-written SQL (the SQLite export, sqlite/export.sql)
spells the same rule as a join: `COALESCE(r.response_body, a.response_body)` with `a` on `r.reused_from`.
A reused line's structured-output check is its source's too (store/outputs.py reads it the same way).

The invariant: a source's answer never changes or disappears while a row references it. Nothing moves a
`completed` row to another state (runner/states.py ALLOWED_FROM) and every hot write is guarded on
`in_progress`, so only deleting a job can take a source away; `keep_answers()` runs first, in the same
transaction, and hands each doomed source's answer to ONE of the rows that reference it, which becomes the
new original (and can be reused from); the others are pointed at it. A row is "reused" by its `reused_*`
usage (`REUSED`), not by its reference: a promoted row stays reused for its job (it cost that job nothing)
while it is now an original for everyone else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from sqlalchemy import ColumnElement, Select, and_, case, func, insert, literal, null, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.states import RequestState
from runner.store.dialect import json_field
from runner.store.tables import output_checks, requests

__all__ = ["REUSED", "SOURCE_DELETED", "answer", "keep_answers", "paid", "referencing_jobs"]

# `reused_from` of a row whose source was deleted by an older version, which copied the answer into every
# referencing row: still reused, and naming no request.
SOURCE_DELETED: Final = 0

# A row answered from the store at submit: only such rows carry the usage their answer was paid for elsewhere
# (set from the source's, never NULL there). Its reference may be gone (the source's job deleted and this row
# promoted to hold the answer), so the reference does not say it.
REUSED: Final[ColumnElement[bool]] = requests.c.reused_total_tokens.is_not(None)

_COMPLETED = RequestState.COMPLETED.value


def paid(source: ColumnElement[int], reused: ColumnElement[int]) -> ColumnElement[int]:
    """The usage an answer was paid for, from one usage column of its row and the matching `reused_*` one: a
    promoted row (see keep_answers) spent nothing itself and carries the usage in `reused_*`."""
    return func.coalesce(reused, source)


def answer(*keys: str) -> ColumnElement[str]:
    """The response body of the `requests` row in the query (with `keys`: the JSON value at them, as
    `dialect.json_field` reads it), following `reused_from` when the row holds no body of its own.

    A CASE, so the source is looked up (one primary-key probe) only for reused rows.
    """
    source = requests.alias("answer_source")
    own: ColumnElement[str] = json_field(requests.c.response_body, *keys) if keys else requests.c.response_body
    theirs = json_field(source.c.response_body, *keys) if keys else source.c.response_body
    borrowed = select(theirs).where(source.c.id == requests.c.reused_from).scalar_subquery()
    return case(
        (and_(requests.c.response_body.is_(None), requests.c.reused_from.is_not(None)), borrowed),
        else_=own,
    )


def _doomed_sources(job_ids: list[str]) -> Select[tuple[int]]:
    """The original answers among the rows of `job_ids`: what other rows may reference."""
    source = requests.alias("doomed_source")
    return select(source.c.id).where(
        source.c.job_id.in_(job_ids), source.c.state == _COMPLETED, source.c.reused_from.is_(None)
    )


def referencing_jobs(job_ids: Sequence[str]) -> Select[tuple[str]]:
    """The other jobs holding rows that reference an answer of `job_ids` (their rows change on the delete)."""
    ids = list(job_ids)
    ref = requests.alias("referencing")
    return (
        select(ref.c.job_id)
        .where(ref.c.reused_from.in_(_doomed_sources(ids)), ref.c.job_id.not_in(ids))
        .distinct()
        .order_by(ref.c.job_id)
    )


async def keep_answers(conn: AsyncConnection, job_ids: Sequence[str]) -> None:
    """Before the requests of `job_ids` are deleted (same transaction): for each of their answers that rows of
    other jobs reference, the first such row (lowest id) becomes the new original, holding the answer, its
    check and the source's finish time, and the other rows reference it instead.

    Three set-based statements; they find the rows by the index on reused_from, so they cost next to nothing
    when nothing was reused from these jobs. Each answer is then stored once, as before the delete: copying
    it into every referencing row took a store of a 403k-line job reused by others from 154 to 569 MB.
    Measured (SQLite, 100,000 answers of ~1.3 KB reused by two jobs, `runner delete` of their source, two
    interleaved runs each): the store went from 287.9 to 257.6 MB with 100,000 bodies left, where the copies
    took it to 420.8 MB with 200,000; 7.2-7.3 CPU-s against 5.8-6.2 (the moved answers enter the hash index).
    """
    ids = list(job_ids)
    doomed = _doomed_sources(ids)
    outside = (requests.c.reused_from.in_(doomed), requests.c.job_id.not_in(ids))
    # 1. Every row but the first of each answer points at the first. The first keeps pointing at the source
    #    until step 3, so the subquery finds the same row for each of them, in whatever order they are updated.
    #    (A probe of the index on reused_from per row, not `id NOT IN (the firsts)`: PostgreSQL hashes such a
    #    list only while it fits in work_mem, and past that compares each row with the whole list.)
    peer = requests.alias("peer")
    first_of = (
        select(func.min(peer.c.id))
        .where(peer.c.reused_from == requests.c.reused_from, peer.c.job_id.not_in(ids))
        .scalar_subquery()
    )
    await conn.execute(update(requests).where(*outside, requests.c.id > first_of).values(reused_from=first_of))
    # 2. Only the firsts reference a doomed answer now: each gets the source's check (its verdict and parsed
    #    value; the repairs were the source job's spending, not this one's), which the delete would cascade away.
    check = output_checks.alias("source_check")
    own = output_checks.alias("own_check")
    zero = literal(0)
    await conn.execute(
        insert(output_checks).from_select(
            [c.name for c in output_checks.c],
            select(
                requests.c.id,
                requests.c.job_id,
                requests.c.line_no,
                check.c.status,
                check.c.detail,
                check.c.parsed,
                zero,  # repairs
                null(),  # rejected_model
                zero,
                zero,
                zero,
                zero,
                zero,
                check.c.checked_at,
            )
            .select_from(requests.join(check, check.c.request_id == requests.c.reused_from))
            .where(*outside, ~select(own.c.request_id).where(own.c.request_id == requests.c.id).exists()),
        )
    )
    # 3. The firsts become originals: the answer, and its age (what `--reuse-max-age` goes by), move to them.
    source = requests.alias("kept_source")
    of_source = source.c.id == requests.c.reused_from
    await conn.execute(
        update(requests)
        .where(*outside)
        .values(
            response_body=func.coalesce(
                requests.c.response_body, select(source.c.response_body).where(of_source).scalar_subquery()
            ),
            finished_at=select(source.c.finished_at).where(of_source).scalar_subquery(),
            reused_from=None,
        )
    )
