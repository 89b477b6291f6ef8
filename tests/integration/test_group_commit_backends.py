"""A group commit leaves the same store on PostgreSQL as on SQLite, every kind of outcome side by side in it.

PostgreSQL writes a commit as one statement (postgres/hot.sql `apply`: response ids, outcomes, the attempts rows,
and work handed back to a job cancelled meanwhile); SQLite as a transaction of one statement per kind. Here one
commit carries all of them, and the two stores must agree on what a user sees of each request: its state,
attempt count, response id, reply, usage and attempt history.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runner.states import RequestState
from runner.store import NewRequest, Outcome, Store, UsageCounts
from runner.store.models import ResponseIdRecord

pytestmark = [pytest.mark.pg, pytest.mark.anyio]

S = RequestState
ANSWER = json.dumps({"id": "resp_c1", "status": "completed", "output_text": "four"})


async def _job(store: Store, job_id: str, n: int) -> None:
    await store.begin_job(
        job_id=job_id, name=job_id, source="x.jsonl", fingerprint=f"fp-{job_id}", background=False, staged_by="h:1"
    )
    await store.add_requests(job_id, [NewRequest(i, f"c-{i}", json.dumps({"input": str(i)})) for i in range(1, n + 1)])
    await store.publish_job(job_id, n)


async def _one_commit_of_everything(db: str) -> list[tuple[Any, ...]]:
    """What each request of two jobs shows after one group commit of every kind of write."""
    store = await Store.open(db)
    try:
        await _job(store, "job_a", 8)
        await _job(store, "job_b", 1)
        c = {x.line_no: x.id for x in await store.claim("me", ["job_a"], 7, 60)}
        c[8] = (await store.claim("other", ["job_a"], 1, 60))[0].id
        [b1] = await store.claim("me", ["job_b"], 1, 60)
        ids = [ResponseIdRecord(c[5], "resp_c5", "req_5", 990.0), ResponseIdRecord(c[6], "resp_c6", None, 991.0)]
        assert await store.apply("me", [], ids) == []
        await store.cancel_job("job_b")  # while b1 is in flight
        outcomes = [
            Outcome(c[1], S.COMPLETED, 200, "req_1", ANSWER, usage=UsageCounts(3, 1, 2, 0, 5), sent_at=1000.0),
            Outcome(c[2], S.QUEUED, 503, "req_2", error_code="server_error", error_message="503", sent_at=1001.0),
            Outcome(c[3], S.QUEUED, refund_attempt=True),  # claimed, never sent: a stop
            Outcome(c[4], S.FAILED, error_code="parent_failed", error_message="parent", refund_attempt=True),
            Outcome(c[5], S.COMPLETED, 200, None, '{"id": "resp_c5"}', usage=UsageCounts(1, 0, 1, 0, 2)),
            Outcome(c[6], S.QUEUED, 500, "req_6", error_code="server_error", clear_response_id=True, rate_limited=True),
            Outcome(c[8], S.FAILED, 400, error_code="bad"),  # another runner's lease: refused
            Outcome(b1.id, S.QUEUED, 429, error_code="rate_limited", rate_limited=True, sent_at=1002.0),
        ]
        assert await store.apply("me", outcomes, [ResponseIdRecord(c[7], "resp_c7", "req_7", 1003.0)]) == [c[8]]
        seen = []
        for job_id, n in (("job_a", 8), ("job_b", 1)):
            for i in range(1, n + 1):
                d = await store.request_detail(job_id, f"c-{i}")
                history = [
                    (a.attempt, a.outcome, a.sent_at, a.http_status, a.api_request_id, a.response_id, a.error_code)
                    for a in d.attempt_rows
                ]
                reply = (d.http_status, d.request_id, d.error_code, d.error_message, d.response_body, d.usage)
                seen.append((job_id, i, d.state, d.attempts, d.response_id, *reply, d.finished_at is not None, history))
        return seen
    finally:
        await store.aclose()


async def test_one_group_commit_of_every_kind_leaves_what_sqlite_leaves(pg_store_url: str, tmp_path: Path) -> None:
    on_sqlite = await _one_commit_of_everything(str(tmp_path / "runner.db"))
    on_postgres = await _one_commit_of_everything(pg_store_url)
    assert on_postgres == on_sqlite
    lines = {(row[0], row[1]): row for row in on_sqlite}
    # What each kind left, as `runner show` has it (state, attempts, response id, error code, history).
    assert lines["job_a", 1][2:4] == ("completed", 1) and lines["job_a", 1][-1] == [
        (1, "completed", 1000.0, 200, "req_1", None, None)
    ]
    assert lines["job_a", 2][2:4] == ("queued", 1) and lines["job_a", 2][-1][0][1] == "queued"
    assert lines["job_a", 3][2:4] == ("queued", 0) and lines["job_a", 3][-1] == []  # refunded: never sent
    assert lines["job_a", 4][2:4] == ("failed", 1) and lines["job_a", 4][-1] == []
    assert lines["job_a", 5][-1] == [(1, "completed", 990.0, 200, None, "resp_c5", None)]
    assert lines["job_a", 6][4] is None and lines["job_a", 6][-1] == [
        (1, "queued", 991.0, 500, "req_6", "resp_c6", "server_error")  # the response it gave up on
    ]
    assert lines["job_a", 7][2:5] == ("in_progress", 1, "resp_c7")
    assert lines["job_a", 8][2] == "in_progress"  # the other runner's, untouched
    assert lines["job_b", 1][2] == "cancelled" and lines["job_b", 1][7] == "cancelled"
    assert lines["job_b", 1][-1] == [(1, "queued", 1002.0, 429, None, None, "rate_limited")]
