"""A request's answer as every reader sees it, and the one rule that keeps it there.

A line answered from the store (`submit --reuse`, store/reuse.py) holds no copy of its answer: its
`response_body` is NULL and `reused_from` names the source, always an original answer (never a reused row).
So the disk writes each answer once, however often it is reused. Every query that reads an answer reads it
through `answer()`: the row's own body when it has one (every other row, and rows reused before answers were
referenced, which kept a copy), else its source's. Hand-written SQL (the SQLite export, sqlite/export.sql)
spells the same rule as a join: `COALESCE(r.response_body, a.response_body)` with `a` on `r.reused_from`.

The invariant: a source's answer never changes or disappears while a row references it. Nothing moves a
`completed` row to another state (runner/states.py ALLOWED_FROM) and every hot write is guarded on
`in_progress`, so only deleting a job can take a source away; `keep_answers()` runs first, in the same
transaction, and copies each doomed source's answer into the rows that reference it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from sqlalchemy import ColumnElement, Update, and_, case, select, update

from runner.states import RequestState
from runner.store.dialect import json_field
from runner.store.tables import requests

__all__ = ["SOURCE_DELETED", "answer", "keep_answers"]

# `reused_from` of a row whose source was deleted (its answer copied in first): still reused, and naming no
# request, where the old id could one day name another row (SQLite may hand out a deleted rowid again).
SOURCE_DELETED: Final = 0

_COMPLETED = RequestState.COMPLETED.value


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


def keep_answers(job_ids: Sequence[str]) -> Update:
    """An UPDATE to run before deleting the requests of `job_ids`: every row of another job that references an
    answer among them gets a copy of that answer, and `reused_from` = SOURCE_DELETED.

    The sources are found by (job_id, state), the rows that reference them by the index on reused_from, so
    it costs next to nothing when nothing was reused from these jobs.
    """
    ids = list(job_ids)
    source = requests.alias("kept_source")
    doomed = select(source.c.id).where(
        source.c.job_id.in_(ids), source.c.state == _COMPLETED, source.c.reused_from.is_(None)
    )
    body = select(source.c.response_body).where(source.c.id == requests.c.reused_from).scalar_subquery()
    return (
        update(requests)
        .where(
            requests.c.reused_from.in_(doomed),
            requests.c.response_body.is_(None),
            requests.c.job_id.not_in(ids),
        )
        .values(response_body=body, reused_from=SOURCE_DELETED)
    )
