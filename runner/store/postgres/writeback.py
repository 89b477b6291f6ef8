"""A group commit on PostgreSQL: results, requeues, response ids and attempt rows written back for one runner.

Two ways, one result: `at_once` is the whole group as one statement (hot.sql `apply`), one round trip with no
BEGIN/COMMIT around it; `carefully` is the statement-by-statement path, in savepoints, that a group takes when
`at_once` is refused a value (a NUL character), so one bad reply fails only its own request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from runner.errors import StoreError
from runner.states import TERMINAL, RequestState
from runner.store.models import RESPONSE_ID_TAKEN, Outcome, Refused, ResponseIdRecord, response_id_taken

__all__ = ["at_once", "carefully"]

log = logging.getLogger(__name__)


def _reply_columns(group: Sequence[Outcome]) -> list[list[Any]]:
    """What every outcome records of its reply, a column each, in the order `finish` and `requeue` take them."""
    return [
        [o.http_status for o in group],
        [o.api_request_id for o in group],
        [o.error_code for o in group],
        [o.error_message for o in group],
        [1 if o.rate_limited else 0 for o in group],
        [o.sent_at for o in group],
    ]


def _outcome_columns(group: Sequence[Outcome]) -> list[list[Any]]:
    """An outcome's id, state, answer and usage, then its reply's columns: what `apply` and `finish` take first."""
    return [
        [o.request_id for o in group],
        [o.to.value for o in group],
        [o.response_body for o in group],
        [o.usage.input_tokens for o in group],
        [o.usage.cached_tokens for o in group],
        [o.usage.output_tokens for o in group],
        [o.usage.reasoning_tokens for o in group],
        [o.usage.total_tokens for o in group],
        *_reply_columns(group),
    ]


async def at_once(
    c: Any, sql: Mapping[str, str], owner: str, outcomes: Sequence[Outcome], response_ids: Sequence[ResponseIdRecord]
) -> Refused:
    """The group commit as one statement on its own (hot.sql `apply`); the request ids refused."""
    firsts = _first_of_each_id(response_ids)
    rows = await c.fetch(
        sql["apply"],
        *_outcome_columns(outcomes),
        [float(o.next_attempt_at) for o in outcomes],
        [1 if o.refund_attempt else 0 for o in outcomes],
        [o.clear_response_id for o in outcomes],
        owner,
        [x.request_id for x in firsts],
        [x.response_id for x in firsts],
        [x.api_request_id for x in firsts],
        [x.sent_at for x in firsts],
    )
    done = {r[0] for r in rows}
    refused = Refused(o.request_id for o in outcomes if o.request_id not in done)
    await _missed(c, sql, owner, [x for x in response_ids if x.request_id not in done], refused)
    return refused


def _first_of_each_id(response_ids: Sequence[ResponseIdRecord]) -> list[ResponseIdRecord]:
    """The records whose response id no earlier record of the group has: one statement sees the rows as they
    were before it, so two lines of one commit given the same id would both pass its guard."""
    seen: set[str] = set()
    firsts = []
    for x in response_ids:
        if x.response_id not in seen:
            seen.add(x.response_id)
            firsts.append(x)
    return firsts


async def _missed(
    c: Any, sql: Mapping[str, str], owner: str, missed: Sequence[ResponseIdRecord], refused: Refused
) -> None:
    """Sort the response ids not written into `refused`: written already, taken by another request, or lost."""
    if not missed:
        return
    have = {r[0]: (r[1], r[2]) for r in await c.fetch(sql["response_ids_of"], [x.request_id for x in missed])}
    for x in missed:
        now = have.get(x.request_id)
        if now == (x.response_id, owner):
            continue  # written already (the same id, by this owner: a retried commit) is not a refusal
        if now == (None, owner):
            # Still ours and without an id: the only guard left is the id another request holds.
            async with c.transaction():
                await _fail_taken(c, sql, owner, x)
            refused.taken.append(x.request_id)
        else:
            refused.append(x.request_id)


async def _fail_taken(c: Any, sql: Mapping[str, str], owner: str, x: ResponseIdRecord) -> None:
    """Fail the line given response id `x`, which another request holds, with its attempt row."""
    holder = await c.fetch(sql["response_id_holder"], x.response_id, x.request_id)
    message = response_id_taken(x.response_id, *(tuple(holder[0]) if holder else (None, None)))
    await c.execute(
        sql["record_attempts"],
        [x.request_id],
        ["failed"],
        [x.sent_at],
        [None],
        [x.api_request_id],
        [RESPONSE_ID_TAKEN],
        [message],
        owner,
    )
    await c.execute(sql["fail_taken"], x.api_request_id, RESPONSE_ID_TAKEN, message, x.sent_at, x.request_id, owner)


async def carefully(
    c: Any,
    sql: Mapping[str, str],
    pg_error: type[BaseException],
    owner: str,
    outcomes: Sequence[Outcome],
    response_ids: Sequence[ResponseIdRecord],
) -> Refused:
    refused = Refused()
    if response_ids:
        firsts = _first_of_each_id(response_ids)
        written = {
            r[0]
            for r in await c.fetch(
                sql["set_response_ids"],
                [x.request_id for x in firsts],
                [x.response_id for x in firsts],
                [x.api_request_id for x in firsts],
                [x.sent_at for x in firsts],
                owner,
            )
        }
        await _missed(c, sql, owner, [x for x in response_ids if x.request_id not in written], refused)
    tried = [o for o in outcomes if not o.refund_attempt]
    if tried:
        try:
            async with c.transaction():  # a savepoint: the history must never take the outcomes down
                await c.execute(
                    sql["record_attempts"],
                    [o.request_id for o in tried],
                    [o.to.value for o in tried],
                    [o.sent_at for o in tried],
                    [o.http_status for o in tried],
                    [o.api_request_id for o in tried],
                    [o.error_code for o in tried],
                    [o.error_message for o in tried],
                    owner,
                )
        except (pg_error, ValueError, TypeError, OverflowError) as e:
            log.warning("attempt history not recorded for %d request(s): %s", len(tried), type(e).__name__)
    final = [o for o in outcomes if o.to in TERMINAL]
    back = [o for o in outcomes if o.to is RequestState.QUEUED]
    if len(final) + len(back) != len(outcomes):
        bad = next(o for o in outcomes if o.to not in TERMINAL and o.to is not RequestState.QUEUED)
        raise StoreError(f"apply() takes terminal states or queued, not {bad.to}")  # rolls back the whole call
    done: set[int] = set()
    for group, write in ((final, _finish), (back, _requeue)):
        if not group:
            continue
        try:
            async with c.transaction():
                done |= await write(c, sql, owner, group)
        except (pg_error, ValueError, TypeError, OverflowError):
            # One row PostgreSQL cannot take must not take the group commit down with it: row by row,
            # each in its own savepoint, and a row that still fails is final with the reason.
            for o in group:
                try:
                    async with c.transaction():
                        done |= await write(c, sql, owner, [o])
                except (pg_error, ValueError, TypeError, OverflowError) as exc:
                    reason = f"the job store refused this result ({type(exc).__name__}: {exc})"[:500]
                    if await c.execute(sql["refuse_row"], reason, o.request_id, owner) != "UPDATE 0":
                        done.add(o.request_id)
    refused += [o.request_id for o in outcomes if o.request_id not in done]
    requeued = [o.request_id for o in back if o.request_id in done]
    if requeued:
        await c.execute(sql["cancel_requeued"], requeued)
    return refused


async def _finish(c: Any, sql: Mapping[str, str], owner: str, group: Sequence[Outcome]) -> set[int]:
    rows = await c.fetch(
        sql["finish"],
        *_outcome_columns(group),
        owner,
    )
    return {r[0] for r in rows}


async def _requeue(c: Any, sql: Mapping[str, str], owner: str, group: Sequence[Outcome]) -> set[int]:
    rows = await c.fetch(
        sql["requeue"],
        [o.request_id for o in group],
        [float(o.next_attempt_at) for o in group],
        [1 if o.refund_attempt else 0 for o in group],
        [o.clear_response_id for o in group],
        *_reply_columns(group),
        owner,
    )
    return {r[0] for r in rows}
