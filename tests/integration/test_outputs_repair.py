"""`--repair`'s count lives in the store: a runner that takes a request over (after a crash) does not ask it
again more often than N in all, and a check is only written by the runner that holds the request."""

from __future__ import annotations

import json

import pytest

from runner.states import RequestState
from runner.store import NewRequest, Outcome, Store, UsageCounts
from runner.store.outputs import check_counts, record_checks, repairs_done
from runner.worker.outcomes import Checker

JOB = "job_rep"
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
BODY = json.dumps(
    {"model": "gpt-4.1-mini", "input": "q", "text": {"format": {"type": "json_schema", "name": "r", "schema": SCHEMA}}}
)
BAD = {"id": "resp_1", "status": "completed", "model": "gpt-4.1-mini", "output_text": '{"n": "one"}'}


async def answer(store: Store, owner: str, repair: int) -> Outcome:
    """Claim the request as `owner`, get the bad answer, and write what the checker decides."""
    [c] = await store.claim(owner, [JOB], 1, 60)
    done = Outcome(c.id, RequestState.COMPLETED, http_status=200, usage=UsageCounts(10, 0, 5, 0, 15))
    outcome, check = await Checker(store, repair).review(c, done, dict(BAD))
    assert check is not None
    await record_checks(store, owner, [check])
    assert await store.apply(owner, [outcome]) == []
    return outcome


@pytest.mark.anyio
async def test_repairs_are_counted_across_runners(store: Store) -> None:
    await store.begin_job(job_id=JOB, name="r", source="r.jsonl", fingerprint="fp", background=False, staged_by="t:1")
    await store.add_requests(JOB, [NewRequest(1, "a", BODY)])
    await store.publish_job(JOB, 1)

    first = await answer(store, "runner-1", repair=1)
    assert first.to is RequestState.QUEUED and first.error_code == "schema_mismatch"
    assert first.error_message == "$.n: 'one' is not of type 'integer'; asked again (repair 1 of 1)"
    # A second runner (the first one died) with the same --repair 1: the one repair is used up.
    second = await answer(store, "runner-2", repair=1)
    assert second.to is RequestState.COMPLETED
    counts = await check_counts(store, JOB)
    assert (counts.by_status, counts.repairs, counts.repaired) == ({"schema_mismatch": 1}, 1, 1)
    assert [r.usage.total_tokens for r in counts.rejected] == [15]  # the rejected answer's tokens, once


@pytest.mark.anyio
async def test_a_check_is_written_only_while_the_request_is_held(store: Store) -> None:
    await store.begin_job(job_id=JOB, name="r", source="r.jsonl", fingerprint="fp", background=False, staged_by="t:1")
    await store.add_requests(JOB, [NewRequest(1, "a", BODY)])
    await store.publish_job(JOB, 1)
    [c] = await store.claim("runner-1", [JOB], 1, 60)
    done = Outcome(c.id, RequestState.COMPLETED, http_status=200, usage=UsageCounts(10, 0, 5, 0, 15))
    _, check = await Checker(store, 3).review(c, done, dict(BAD))
    assert check is not None
    await record_checks(store, "someone-else", [check])  # not the lease holder: nothing written
    assert await repairs_done(store, c.id) == 0
    assert (await check_counts(store, JOB)).by_status == {}
