"""The store's side of lines that build on each other (runner/chains.py): parent links, the parent's response
id at send time, and failing the lines below a parent that ended without a response to continue.

`requests.parent_id` is set at submit, inside the staging job (all or nothing). The claim's gate (hot.sql)
sends a line only once its parent is `completed`; what is here runs only for jobs that have chains (or, at
submit, only for the lines that name a parent), in portable SQLAlchemy Core, so both backends share it.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from sqlalchemy import Select, bindparam, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from runner.chains import (
    PARENT_FAILED,
    ParentInfo,
    chain_ref,
    continuable_id,
    may_be_chained,
    parent_failed_message,
    substitute,
)
from runner.states import RequestState
from runner.store import Claimed, Store
from runner.store.answer import answer
from runner.store.tables import requests

__all__ = ["DEAD_ENDS", "fail_orphans", "has_chains", "link", "parents_of", "resolve_parents"]

# A parent in one of these states has no response its children could continue: they fail, unsent.
DEAD_ENDS = frozenset({RequestState.FAILED, RequestState.CANCELLED, RequestState.INCOMPLETE})
_DEAD_VALUES = sorted(s.value for s in DEAD_ENDS)
_Q = RequestState.QUEUED.value
_IN = 500  # ids or custom_ids per IN list: far below every backend's bound-parameter limit
_LINKS = 5_000  # parent links written per statement batch


async def parents_of(store: Store, job_id: str, custom_ids: Sequence[str]) -> dict[str, ParentInfo]:
    """custom_id -> its row, line and whether its body sets `store: false`, for those of `custom_ids` in the job.

    Read a slice at a time, each body judged and dropped at once: memory follows the chained lines only.
    """
    found: dict[str, ParentInfo] = {}

    async def go(conn: AsyncConnection) -> None:
        for i in range(0, len(custom_ids), _IN):
            rows = await conn.execute(
                select(requests.c.custom_id, requests.c.id, requests.c.line_no, requests.c.body).where(
                    requests.c.job_id == job_id, requests.c.custom_id.in_(list(custom_ids[i : i + _IN]))
                )
            )
            for r in rows:
                found[r.custom_id] = ParentInfo(r.id, r.line_no, _sets_store_false(r.body))

    await store.read(go)
    return found


def _sets_store_false(body: str) -> bool:
    if '"store":false' not in body:  # orjson writes compact JSON; most bodies stop here
        return False
    parsed = orjson.loads(body)
    return isinstance(parsed, dict) and parsed.get("store") is False


async def link(store: Store, job_id: str, links: Sequence[tuple[int, int]]) -> None:
    """Set `parent_id` of each (line number, parent's request id) of a staging job."""
    stmt = (
        update(requests)
        .where(requests.c.job_id == job_id, requests.c.line_no == bindparam("line"))
        .values(parent_id=bindparam("parent"))
    )

    async def go(conn: AsyncConnection) -> None:
        for i in range(0, len(links), _LINKS):
            await conn.execute(stmt, [{"line": line, "parent": parent} for line, parent in links[i : i + _LINKS]])

    if links:
        await store.write(go)


async def has_chains(store: Store, job_ids: Sequence[str]) -> bool:
    """Whether any line of these jobs continues another (the partial index on parent_id answers at once)."""
    stmt = select(literal(1)).where(requests.c.job_id.in_(list(job_ids)), requests.c.parent_id.is_not(None)).limit(1)

    async def go(conn: AsyncConnection) -> bool:
        return (await conn.execute(stmt)).first() is not None

    return await store.read(go)


async def resolve_parents(store: Store, claimed: Sequence[Claimed]) -> tuple[list[Claimed], list[tuple[Claimed, str]]]:
    """Put each parent's real response id into the claimed lines that continue one.

    Returns the lines to send (bodies rewritten where they named a parent) and those that cannot be sent,
    with the message to fail them with: their parent completed without a response that can be continued.
    Lines without a reference pass through untouched, after one substring test.
    """
    wanted: dict[tuple[str, str], list[Claimed]] = {}
    for c in claimed:
        if may_be_chained(c.body):
            body = orjson.loads(c.body)
            ref = chain_ref(body) if isinstance(body, dict) else None
            if ref is not None:
                wanted.setdefault((c.job_id, ref), []).append(c)
    if not wanted:
        return list(claimed), []
    keys = list(wanted)

    async def go(conn: AsyncConnection) -> dict[tuple[str, str], tuple[str, str | None]]:
        got: dict[tuple[str, str], tuple[str, str | None]] = {}
        for job_id in {j for j, _ in keys}:
            refs = [ref for j, ref in keys if j == job_id]
            for i in range(0, len(refs), _IN):
                rows = await conn.execute(
                    select(requests.c.custom_id, requests.c.state, answer().label("answer")).where(
                        requests.c.job_id == job_id, requests.c.custom_id.in_(refs[i : i + _IN])
                    )
                )
                got.update({(job_id, r.custom_id): (r.state, r.answer) for r in rows})
        return got

    parents = await store.read(go)
    bad: dict[int, str] = {}
    for key, children in wanted.items():
        found = parents.get(key)
        if found is None:
            rid, why = None, "is not in the job"
        elif found[0] != RequestState.COMPLETED.value:
            rid, why = None, f"ended {found[0]}"
        else:
            rid, why = continuable_id(found[1])
        for c in children:
            if rid is None:
                bad[c.id] = parent_failed_message(key[1], why)
            else:
                c.body = substitute(c.body, rid)
    return [c for c in claimed if c.id not in bad], [(c, bad[c.id]) for c in claimed if c.id in bad]


async def fail_orphans(store: Store, job_ids: Sequence[str] = (), parent_ids: Sequence[int] = ()) -> int:
    """Fail, unsent, the queued lines below a parent that ended failed, cancelled or incomplete: the children of
    `parent_ids`, or every such line of `job_ids`; then their children, down to the leaves. Returns how many.

    Each gets `parent_failed` and a message naming its own parent and how that one ended.
    """
    parent = requests.alias("parent")
    now = store.now_sql()
    fail = (
        update(requests)
        .where(requests.c.id == bindparam("rid"), requests.c.state == _Q)
        .values(
            state=RequestState.FAILED.value,
            error_code=PARENT_FAILED,
            error_message=bindparam("msg"),
            finished_at=now,
            updated_at=now,
        )
    )

    def orphans(scope: ColumnElement[bool]) -> Select[tuple[int, str, str, str | None]]:
        return (
            select(requests.c.id, parent.c.custom_id, parent.c.state, parent.c.error_code)
            .join(parent, parent.c.id == requests.c.parent_id)
            .where(requests.c.parent_id.is_not(None), requests.c.state == _Q, parent.c.state.in_(_DEAD_VALUES), scope)
        )

    async def go(conn: AsyncConnection) -> int:
        total = 0
        scopes: list[ColumnElement[bool]] = []
        if job_ids:
            scopes.append(requests.c.job_id.in_(list(job_ids)))
        scopes += [requests.c.parent_id.in_(list(parent_ids[i : i + _IN])) for i in range(0, len(parent_ids), _IN)]
        while scopes:
            failed: list[int] = []
            for scope in scopes:
                rows = (await conn.execute(orphans(scope))).all()
                params = []
                for r in rows:
                    code = r.error_code if r.error_code and r.error_code != r.state else None
                    why = f"ended {r.state}" + (f" ({code})" if code else "")
                    params.append({"rid": r.id, "msg": parent_failed_message(r.custom_id, why)})
                if params:
                    await conn.execute(fail, params)
                    failed += [p["rid"] for p in params]
            total += len(failed)
            # One level down: the children of the lines just failed (they are failed now too).
            scopes = [requests.c.parent_id.in_(failed[i : i + _IN]) for i in range(0, len(failed), _IN)]
        return total

    if not job_ids and not parent_ids:
        return 0
    return await store.write(go)
