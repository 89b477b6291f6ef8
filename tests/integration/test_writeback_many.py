"""Group commits of many rows: every outcome and response id lands exactly as one-by-one writes would land it.

SQLite writes final outcomes and response ids 64 rows per statement (runner/store/sqlite/hot.py); these
check, on both backends, commits bigger than one statement, mixed with requeues, and a commit in which one
row is refused.
"""

from __future__ import annotations

import time

import pytest

from runner.states import RequestState as S
from runner.store import Outcome, ResponseIdRecord, Store, UsageCounts
from tests.integration.test_store import LEASE, db_row, db_rows, make_job


@pytest.fixture
def db(store_db: str) -> str:
    return store_db


@pytest.mark.anyio
async def test_a_commit_of_150_outcomes_lands_each_one_with_its_own_values(store: Store, db: str) -> None:
    await make_job(store, "job_a", 150)
    claimed = await store.claim("me", ["job_a"], 150, LEASE)
    outcomes = []
    for i, c in enumerate(claimed):
        if i % 10 == 3:  # a retry, written one by one beside the others
            outcomes.append(Outcome(c.id, S.QUEUED, next_attempt_at=time.time() + 60, error_code="server_error"))
        elif i % 10 == 7:
            outcomes.append(Outcome(c.id, S.FAILED, http_status=400, error_code="bad", error_message=f"no {i}"))
        else:
            usage = UsageCounts(i, i // 2, 2 * i, i // 3, 3 * i)
            body = f'{{"id":"resp_{i}","status":"completed"}}'
            outcomes.append(
                Outcome(c.id, S.COMPLETED, http_status=200, api_request_id=f"req_{i}", response_body=body, usage=usage)
            )
    assert await store.apply("me", outcomes) == []

    for i, c in enumerate(claimed):
        row = await db_row(store, c.id)
        assert row["lease_owner"] is None
        if i % 10 == 3:
            assert (row["state"], row["error_code"]) == ("queued", "server_error")
        elif i % 10 == 7:
            assert (row["state"], row["http_status"], row["error_message"]) == ("failed", 400, f"no {i}")
        else:
            assert row["state"] == "completed" and row["request_id"] == f"req_{i}"
            assert row["response_body"] == f'{{"id":"resp_{i}","status":"completed"}}'
            names = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens", "total_tokens")
            assert [row[k] for k in names] == [i, i // 2, 2 * i, i // 3, 3 * i]
    stats = await store.job_stats("job_a")
    assert (stats.counts["completed"], stats.counts["failed"], stats.counts["queued"]) == (120, 15, 15)
    assert stats.usage.total_tokens == sum(3 * i for i in range(150) if i % 10 not in (3, 7))
    # One attempt row per outcome, each with its own result.
    detail = await store.request_detail("job_a", "c-8")  # line 8: index 7, failed
    assert [(a.outcome, a.error_message) for a in detail.attempt_rows] == [("failed", "no 7")]
    detail = await store.request_detail("job_a", "c-150")
    assert [(a.outcome, a.http_status) for a in detail.attempt_rows] == [("completed", 200)]


@pytest.mark.anyio
async def test_100_response_ids_in_one_commit_with_one_refused(store: Store, db: str) -> None:
    await make_job(store, "job_a", 101)
    mine = await store.claim("me", ["job_a"], 100, LEASE)
    [theirs] = await store.claim("them", ["job_a"], 1, LEASE)
    records = [ResponseIdRecord(c.id, f"resp_{c.id}", f"req_{c.id}", 1.5) for c in mine]
    records.insert(50, ResponseIdRecord(theirs.id, "resp_stolen", None, None))

    assert await store.apply("me", [], records) == [theirs.id]

    assert (await db_row(store, theirs.id))["response_id"] is None
    rows = await db_rows(store, lease_owner="me")
    assert [(r["response_id"], r["request_id"]) for r in rows] == [(f"resp_{c.id}", f"req_{c.id}") for c in mine]
    # Written again (a commit retried after an error): the same ids are no refusal, and nothing changes.
    assert await store.apply("me", [], records[:50]) == []
    assert [r["response_id"] for r in await db_rows(store, lease_owner="me")] == [f"resp_{c.id}" for c in mine]
