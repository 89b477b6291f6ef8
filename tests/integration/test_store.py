from __future__ import annotations

import json
import socket
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from runner import app
from runner.config import Settings
from runner.errors import IllegalTransition, JobNotFound, StoreError
from runner.owners import new_owner, owner_is_dead
from runner.states import RequestState
from runner.store import NewRequest, Outcome, ResponseIdRecord, Store, UsageCounts
from runner.store.tables import jobs, requests
from tests.integration.conftest import FakeClock

S = RequestState
LEASE = 60.0


@pytest.fixture
def db(store_db: str) -> str:
    """Every test here runs on each backend: a file for SQLite, a fresh database for PostgreSQL."""
    return store_db


async def make_job(
    store: Store,
    job_id: str = "job_a",
    n: int = 5,
    *,
    conversations: Sequence[str | None] | None = None,
    publish: bool = True,
) -> str:
    await store.begin_job(
        job_id=job_id,
        name=job_id,
        source=f"{job_id}.jsonl",
        fingerprint=f"fp-{job_id}",
        background=False,
        staged_by="testhost:1",
    )
    rows = [
        NewRequest(
            i,
            f"c-{i}",
            json.dumps({"model": "m", "input": f"line {i}"}),
            conversations[i - 1] if conversations is not None else None,
        )
        for i in range(1, n + 1)
    ]
    await store.add_requests(job_id, rows)
    if publish:
        await store.publish_job(job_id, n)
    return job_id


async def db_rows(store: Store, **equals: Any) -> list[dict[str, Any]]:
    """Request rows whose columns equal `equals`, in id order: read through the store, on any backend."""
    stmt = select(requests).where(*(requests.c[k] == v for k, v in equals.items())).order_by(requests.c.id)

    async def go(conn: AsyncConnection) -> list[dict[str, Any]]:
        return [dict(r._mapping) for r in await conn.execute(stmt)]

    return await store.read(go)


async def db_row(store: Store, request_id: int) -> dict[str, Any]:
    [row] = await db_rows(store, id=request_id)
    return row


NO_USAGE = UsageCounts()


def done(request_id: int, usage: UsageCounts = NO_USAGE, **kw: Any) -> Outcome:
    return Outcome(request_id, S.COMPLETED, http_status=200, response_body='{"status":"completed"}', usage=usage, **kw)


# --- claiming -------------------------------------------------------------------------------------------


async def record_id(
    store: Store, request_id: int, owner: str, response_id: str, api_request_id: str | None
) -> list[int]:
    """Commit a background response id the way the write-back does; the refused request ids."""
    return await store.apply(owner, [], [ResponseIdRecord(request_id, response_id, api_request_id, None)])


@pytest.mark.anyio
async def test_claim_returns_rows_in_file_order_and_counts_the_attempt(store: Store, db: str) -> None:
    await make_job(store, "job_a", 10)
    await make_job(store, "job_b", 3)
    before = time.time()
    first = await store.claim("owner-1", ["job_a"], 4, LEASE)
    assert [c.line_no for c in first] == [1, 2, 3, 4]
    assert [c.custom_id for c in first] == ["c-1", "c-2", "c-3", "c-4"]
    assert all(c.attempts == 1 and c.job_id == "job_a" for c in first)
    assert json.loads(first[0].body) == {"model": "m", "input": "line 1"}
    for c in first:
        row = await db_row(store, c.id)
        assert row["state"] == "in_progress"
        assert row["lease_owner"] == "owner-1"
        assert row["attempts"] == 1
        assert before + LEASE <= row["lease_expires_at"] <= time.time() + LEASE
        assert row["started_at"] is not None

    second = await store.claim("owner-2", ["job_a"], 100, LEASE)
    assert [c.line_no for c in second] == [5, 6, 7, 8, 9, 10]
    assert not {c.id for c in first} & {c.id for c in second}
    assert await store.claim("owner-3", ["job_a"], 100, LEASE) == []
    # job_b was not asked for and is untouched.
    assert {r["state"] for r in await db_rows(store, job_id="job_b")} == {"queued"}


@pytest.mark.anyio
async def test_claim_of_unknown_job_returns_nothing(store: Store) -> None:
    await make_job(store, "job_a", 2)
    assert await store.claim("o", ["job_nope"], 10, LEASE) == []


# --- outcomes -------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_apply_writes_a_result_once(store: Store, db: str) -> None:
    await make_job(store, "job_a", 1)
    [c] = await store.claim("me", ["job_a"], 1, LEASE)
    usage = UsageCounts(10, 2, 5, 1, 15)
    assert await store.apply("me", [done(c.id, usage, api_request_id="req_1")]) == []
    row = await db_row(store, c.id)
    assert row["state"] == "completed"
    assert row["lease_owner"] is None
    assert row["lease_expires_at"] is None
    assert row["http_status"] == 200
    assert row["request_id"] == "req_1"
    assert row["response_body"] == '{"status":"completed"}'
    assert (row["input_tokens"], row["cached_tokens"], row["output_tokens"]) == (10, 2, 5)
    assert (row["reasoning_tokens"], row["total_tokens"]) == (1, 15)
    assert row["finished_at"] is not None
    # A second outcome for the same request is refused and changes nothing.
    again = Outcome(c.id, S.FAILED, error_code="late", error_message="late")
    assert await store.apply("me", [again]) == [c.id]
    assert await db_row(store, c.id) == row


@pytest.mark.anyio
async def test_apply_with_wrong_owner_is_refused_and_changes_nothing(store: Store, db: str) -> None:
    await make_job(store, "job_a", 3)
    mine = await store.claim("me", ["job_a"], 2, LEASE)
    [theirs] = await store.claim("them", ["job_a"], 1, LEASE)
    before = await db_row(store, theirs.id)

    refused = await store.apply(
        "me",
        [
            done(mine[0].id, UsageCounts(1, 0, 1, 0, 2)),
            done(theirs.id, UsageCounts(100, 0, 100, 0, 200)),
            Outcome(mine[1].id, S.QUEUED, next_attempt_at=time.time() + 60, error_code="server_error"),
        ],
    )
    assert refused == [theirs.id]
    assert await db_row(store, theirs.id) == before
    assert (await db_row(store, mine[0].id))["state"] == "completed"
    assert (await db_row(store, mine[1].id))["state"] == "queued"

    # The rightful owner can still finish it.
    assert await store.apply("them", [done(theirs.id)]) == []
    assert (await db_row(store, theirs.id))["state"] == "completed"


@pytest.mark.anyio
async def test_apply_rejects_in_progress_outcome(store: Store) -> None:
    await make_job(store, "job_a", 1)
    [c] = await store.claim("me", ["job_a"], 1, LEASE)
    with pytest.raises(StoreError):
        await store.apply("me", [Outcome(c.id, S.IN_PROGRESS)])


@pytest.mark.anyio
async def test_set_state_of_completed_row_to_completed_is_illegal(store: Store, db: str) -> None:
    await make_job(store, "job_a", 2)
    [c, _] = await store.claim("me", ["job_a"], 2, LEASE)
    await store.apply("me", [done(c.id)])
    before = await db_row(store, c.id)
    with pytest.raises(IllegalTransition) as info:
        await store.set_state(c.id, S.COMPLETED)
    assert info.value.request_id == c.id
    assert info.value.to == "completed"
    with pytest.raises(IllegalTransition):
        await store.set_state(c.id, S.QUEUED)
    assert await db_row(store, c.id) == before


@pytest.mark.anyio
async def test_set_state_allowed_move(store: Store, db: str) -> None:
    await make_job(store, "job_a", 1)
    [row] = await db_rows(store)
    await store.set_state(row["id"], S.CANCELLED)
    assert (await db_row(store, row["id"]))["state"] == "cancelled"
    with pytest.raises(IllegalTransition):
        await store.set_state(row["id"], S.IN_PROGRESS)


@pytest.mark.anyio
async def test_requeue_is_not_claimable_until_due(store: Store, clock: FakeClock) -> None:
    await make_job(store, "job_a", 1)
    [c] = await store.claim("me", ["job_a"], 1, LEASE)
    due = clock() + 0.4
    requeue = Outcome(c.id, S.QUEUED, http_status=503, error_code="server_error", next_attempt_at=due)
    assert await store.apply("me", [requeue]) == []
    row = await db_row(store, c.id)
    assert (row["state"], row["attempts"], row["lease_owner"], row["error_code"]) == ("queued", 1, None, "server_error")
    assert row["next_attempt_at"] == pytest.approx(due)
    assert await store.claim("me", ["job_a"], 1, LEASE) == []
    counts, next_due = await store.progress(["job_a"])
    assert counts == {"queued": 1}
    assert next_due == pytest.approx(due)

    clock.advance(0.45)
    [again] = await store.claim("me", ["job_a"], 1, LEASE)
    assert again.id == c.id
    assert again.attempts == 2


@pytest.mark.anyio
async def test_requeue_with_refund_and_cleared_response_id(store: Store, db: str) -> None:
    await make_job(store, "job_a", 1)
    [c] = await store.claim("me", ["job_a"], 1, LEASE)
    assert await record_id(store, c.id, "me", "resp_1", "req_1") == []
    assert (await db_row(store, c.id))["response_id"] == "resp_1"
    out = Outcome(c.id, S.QUEUED, next_attempt_at=0.0, refund_attempt=True, clear_response_id=True)
    assert await store.apply("me", [out]) == []
    row = await db_row(store, c.id)
    assert (row["state"], row["attempts"], row["response_id"]) == ("queued", 0, None)


@pytest.mark.anyio
async def test_record_response_id_needs_the_lease(store: Store, db: str) -> None:
    await make_job(store, "job_a", 1)
    [c] = await store.claim("me", ["job_a"], 1, LEASE)
    assert await record_id(store, c.id, "someone-else", "resp_x", None) == [c.id]  # refused, not written
    assert (await db_row(store, c.id))["response_id"] is None
    assert await record_id(store, c.id, "me", "resp_1", None) == []
    assert await record_id(store, c.id, "me", "resp_2", None) == [c.id]  # never over another id
    assert (await db_row(store, c.id))["response_id"] == "resp_1"


# --- conversations --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_conversation_rows_are_claimed_one_at_a_time_in_order(store: Store) -> None:
    convs = ["conv_A", "conv_A", None, "conv_B", "conv_A", None, "conv_B"]
    await make_job(store, "job_a", len(convs), conversations=convs)

    def lines(cs: list[Any]) -> list[int]:
        return [c.line_no for c in cs]

    first = await store.claim("me", ["job_a"], 100, LEASE)
    assert lines(first) == [1, 3, 4, 6]  # the head of each conversation, and everything without one
    by_line = {c.line_no: c for c in first}
    assert await store.claim("me", ["job_a"], 100, LEASE) == []

    await store.apply("me", [done(by_line[1].id)])
    second = await store.claim("me", ["job_a"], 100, LEASE)
    assert lines(second) == [2]

    # A retry waiting for later still holds its conversation.
    await store.apply("me", [Outcome(second[0].id, S.QUEUED, next_attempt_at=time.time() + 3600)])
    await store.apply("me", [done(by_line[4].id)])
    third = await store.claim("me", ["job_a"], 100, LEASE)
    assert lines(third) == [7]

    # Once line 2 is final (here: cancelled by hand), line 5 may go.
    await store.set_state(second[0].id, S.CANCELLED)
    fourth = await store.claim("me", ["job_a"], 100, LEASE)
    assert lines(fourth) == [5]


# --- leases ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_reclaim_expired_requeues_unsent_and_leaves_background_for_polls(store: Store, clock: FakeClock) -> None:
    await make_job(store, "job_a", 3)
    sent, background, third = await store.claim("dead", ["job_a"], 3, 0.05)
    assert await record_id(store, background.id, "dead", "resp_bg", "req_bg") == []
    clock.advance(0.15)

    assert await store.reclaim_expired(["job_a"]) == 2
    row = await db_row(store, sent.id)
    assert (row["state"], row["lease_owner"], row["attempts"]) == ("queued", None, 1)
    bg = await db_row(store, background.id)
    assert (bg["state"], bg["response_id"]) == ("in_progress", "resp_bg")

    polls = await store.claim_polls("poller", ["job_a"], LEASE)
    assert [(p.id, p.response_id, p.background) for p in polls] == [(background.id, "resp_bg", True)]
    assert (await db_row(store, background.id))["lease_owner"] == "poller"
    assert (await db_row(store, background.id))["attempts"] == 1  # a poll is not a new attempt
    assert await store.claim_polls("other", ["job_a"], LEASE) == []  # the poller's lease is live

    resent = await store.claim("alive", ["job_a"], 10, LEASE)
    assert [(c.id, c.attempts) for c in resent] == [(sent.id, 2), (third.id, 2)]


@pytest.mark.anyio
async def test_reclaim_frees_work_of_a_dead_process_at_once(store: Store, db: str) -> None:
    finished = await anyio.run_process([sys.executable, "-c", "import os; print(os.getpid())"])
    dead = f"{socket.gethostname()}:{int(finished.stdout)}:abc123"
    alive = new_owner()
    await make_job(store, "job_a", 3)
    unsent, background = await store.claim(dead, ["job_a"], 2, LEASE)
    assert await record_id(store, background.id, dead, "resp_bg", None) == []
    [mine] = await store.claim(alive, ["job_a"], 1, LEASE)

    assert await store.reclaim_expired(["job_a"]) == 0  # leases still live: only expiry counts without a check
    assert await store.reclaim_expired(["job_a"], owner_is_dead) == 1
    assert ((await db_row(store, unsent.id))["state"], (await db_row(store, unsent.id))["lease_owner"]) == (
        "queued",
        None,
    )
    bg = await db_row(store, background.id)
    assert (bg["state"], bg["response_id"], bg["lease_owner"]) == ("in_progress", "resp_bg", None)
    assert (await db_row(store, mine.id))["lease_owner"] == alive  # this process is alive
    assert [p.id for p in await store.claim_polls(alive, ["job_a"], LEASE)] == [background.id]


@pytest.mark.anyio
async def test_reclaim_expired_leaves_live_leases(store: Store, db: str) -> None:
    await make_job(store, "job_a", 2)
    await store.claim("alive", ["job_a"], 2, LEASE)
    assert await store.reclaim_expired(["job_a"]) == 0
    assert {r["lease_owner"] for r in await db_rows(store)} == {"alive"}


@pytest.mark.anyio
async def test_release_with_refund_requeues_and_refunds(store: Store, db: str) -> None:
    await make_job(store, "job_a", 3)
    unsent, background = await store.claim("me", ["job_a"], 2, LEASE)
    assert await record_id(store, background.id, "me", "resp_1", None) == []
    [other] = await store.claim("other", ["job_a"], 1, LEASE)

    assert await store.release("me", refund=True) == 1
    row = await db_row(store, unsent.id)
    assert (row["state"], row["attempts"], row["lease_owner"], row["lease_expires_at"]) == ("queued", 0, None, None)
    bg = await db_row(store, background.id)
    assert (bg["state"], bg["attempts"], bg["lease_owner"], bg["response_id"]) == ("in_progress", 1, None, "resp_1")
    assert (await db_row(store, other.id))["lease_owner"] == "other"  # someone else's lease is untouched

    [again] = await store.claim("me", ["job_a"], 10, LEASE)
    assert (again.id, again.attempts) == (unsent.id, 1)
    # The released background request is free for any poller straight away.
    assert [p.id for p in await store.claim_polls("p", ["job_a"], LEASE)] == [background.id]


@pytest.mark.anyio
async def test_release_without_refund_keeps_the_attempt(store: Store, db: str) -> None:
    await make_job(store, "job_a", 1)
    [c] = await store.claim("me", ["job_a"], 1, LEASE)
    assert await store.release("me", refund=False) == 1
    assert ((await db_row(store, c.id))["state"], (await db_row(store, c.id))["attempts"]) == ("queued", 1)


@pytest.mark.anyio
async def test_renew_leases_pushes_expiry(store: Store, clock: FakeClock) -> None:
    await make_job(store, "job_a", 3)
    await store.claim("me", ["job_a"], 2, 0.05)
    await store.claim("other", ["job_a"], 1, 0.05)
    assert await store.renew_leases("me", LEASE) == 2
    clock.advance(0.15)
    assert await store.reclaim_expired(["job_a"]) == 1  # only the one that was not renewed
    mine = await db_rows(store, lease_owner="me")
    assert len(mine) == 2
    assert all(r["lease_expires_at"] > clock() + LEASE - 5 for r in mine)
    assert all(r["state"] == "in_progress" for r in mine)


@pytest.mark.anyio
async def test_a_renewal_skips_leases_taken_in_the_last_beats(store: Store, clock: FakeClock) -> None:
    # Requests claimed since the last beats (at a second's latency, nearly all of them) are not written again;
    # an older lease is, and afterwards every lease has more than the lease minus what was skipped.
    await make_job(store, "job_a", 3)
    await store.claim("me", ["job_a"], 2, LEASE)
    [short] = await store.claim("me", ["job_a"], 1, LEASE / 4)
    before = {r["id"]: r["lease_expires_at"] for r in await db_rows(store, lease_owner="me")}
    assert await store.renew_leases("me", LEASE, fresh_for=10.0) == 1
    after = {r["id"]: r["lease_expires_at"] for r in await db_rows(store, lease_owner="me")}
    assert {i for i in after if after[i] != before[i]} == {short.id}
    assert all(t > clock() + LEASE - 10.0 - 1.0 for t in after.values())
    # Without fresh_for, every lease is renewed (short leases: the heartbeat passes 0).
    assert await store.renew_leases("me", LEASE) == 3


# --- two processes --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_two_stores_on_one_file_never_claim_the_same_row(store: Store, db: str) -> None:
    n = 2000
    await make_job(store, "job_a", n)
    one = await Store.open(str(db))
    two = await Store.open(str(db))
    by_owner: dict[str, list[int]] = {}

    async def drain(s: Store, owner: str) -> None:
        got = by_owner.setdefault(owner, [])
        while batch := await s.claim(owner, ["job_a"], 50, LEASE):
            assert len(batch) <= 50
            got.extend(c.id for c in batch)
            # A runner sends what it claimed before it claims again. Claims back to back, with nothing
            # between them, leave the other store's SQLite busy handler (which sleeps 1, 2, 5, 10 ... ms)
            # no gap to take the lock in: a claim is one ~1 ms transaction now, 40 of them a sprint.
            await anyio.sleep(0.002)

    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(2):
                    tg.start_soon(drain, one, f"one-{i}")
                    tg.start_soon(drain, two, f"two-{i}")
    finally:
        await one.aclose()
        await two.aclose()

    side_one = [i for o, ids in by_owner.items() if o.startswith("one") for i in ids]
    side_two = [i for o, ids in by_owner.items() if o.startswith("two") for i in ids]
    assert side_one and side_two
    assert len(side_one) + len(side_two) == n
    assert not set(side_one) & set(side_two)
    rows = await db_rows(store)
    assert set(side_one) | set(side_two) == {r["id"] for r in rows}
    # Every row was claimed once, by the owner that got it.
    owner_of = {i: o for o, ids in by_owner.items() for i in ids}
    assert all(r["attempts"] == 1 and r["state"] == "in_progress" for r in rows)
    assert all(r["lease_owner"] == owner_of[r["id"]] for r in rows)


# --- stats, cancel, retry -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_job_stats_usage_totals_are_the_sum_of_what_was_applied(store: Store) -> None:
    await make_job(store, "job_a", 5)
    claimed = await store.claim("me", ["job_a"], 4, LEASE)
    usages = [UsageCounts(10, 2, 5, 1, 15), UsageCounts(20, 0, 7, 3, 27), UsageCounts(3, 3, 1, 0, 4)]
    outcomes = [done(c.id, u) for c, u in zip(claimed[:3], usages, strict=True)]
    outcomes.append(Outcome(claimed[3].id, S.FAILED, http_status=400, error_code="bad", rate_limited=True))
    assert await store.apply("me", outcomes) == []

    stats = await store.job_stats("job_a")
    assert stats.usage == UsageCounts(33, 5, 13, 4, 46)
    assert stats.counts == {
        "queued": 1,
        "in_progress": 0,
        "completed": 3,
        "incomplete": 0,
        "failed": 1,
        "cancelled": 0,
    }
    assert stats.attempts == 4
    assert stats.rate_limited == 1
    assert stats.job.id == "job_a"
    assert stats.job.total == 5
    assert stats.first_started is not None
    assert stats.last_finished is not None
    assert stats.in_flight_by_owner == {}
    assert stats.stale_leases == 0


@pytest.mark.anyio
async def test_job_stats_shows_live_and_stale_leases(store: Store, clock: FakeClock) -> None:
    await make_job(store, "job_a", 4)
    await store.claim("a", ["job_a"], 2, LEASE)
    await store.claim("b", ["job_a"], 1, 0.01)
    clock.advance(0.05)
    stats = await store.job_stats("job_a")
    assert stats.in_flight_by_owner == {"a": 2}
    assert stats.stale_leases == 1


@pytest.mark.anyio
async def test_cancel_job(store: Store, db: str) -> None:
    await make_job(store, "job_a", 5)
    await make_job(store, "job_b", 1)
    foreground, background = await store.claim("me", ["job_a"], 2, LEASE)
    assert await record_id(store, background.id, "me", "resp_bg", None) == []

    cancelled, in_flight = await store.cancel_job("job_a")
    assert cancelled == 3
    assert in_flight == [(background.id, "resp_bg")]
    assert (await store.get_job("job_a")).cancelled_at is not None
    queued_before = [r for r in await db_rows(store, job_id="job_a") if r["id"] not in (foreground.id, background.id)]
    assert {(r["state"], r["error_code"]) for r in queued_before} == {("cancelled", "cancelled")}
    assert (await db_row(store, foreground.id))["state"] == "in_progress"
    assert await store.claim("me", ["job_a"], 10, LEASE) == []
    assert [c.job_id for c in await store.claim("me", ["job_b"], 10, LEASE)] == ["job_b"]

    with pytest.raises(JobNotFound):
        await store.cancel_job("job_nope")


@pytest.mark.anyio
async def test_cancelled_job_is_not_unfinished(store: Store) -> None:
    # unfinished_job_ids promises "published, uncancelled jobs"; a cancelled job with a request still in
    # flight must not be picked up by a bare `runner run` (its queued rows can never be claimed again).
    await make_job(store, "job_a", 3)
    await store.claim("me", ["job_a"], 1, LEASE)
    await store.cancel_job("job_a")
    assert await store.unfinished_job_ids() == []


@pytest.mark.anyio
async def test_run_of_a_job_cancelled_while_a_request_is_in_flight_ends(store: Store, db: str) -> None:
    # `runner cancel` while `runner run` has a request in flight, and that request then meets a 500: the
    # retry must not leave the run waiting forever for a queued row that no claim may take.
    await make_job(store, "job_a", 3)
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await store.cancel_job("job_a")
        return httpx.Response(500, json={"error": {"code": "server_error", "message": "try again"}})

    settings = Settings(db=str(db), base_url="http://api.test/v1", api_key="k", concurrency=1)
    with anyio.fail_after(3):
        await app.run(["job_a"], settings, transport=httpx.MockTransport(handler))
    counts, _ = await store.progress(["job_a"])
    assert counts.get("queued", 0) == 0
    assert counts.get("in_progress", 0) == 0


@pytest.mark.anyio
async def test_retry_job_requeues_failed_with_fresh_attempts(store: Store, db: str) -> None:
    await make_job(store, "job_a", 3)
    first, second = await store.claim("me", ["job_a"], 2, LEASE)
    await store.apply(
        "me",
        [done(first.id), Outcome(second.id, S.FAILED, http_status=500, error_code="boom", error_message="gave up")],
    )
    await store.cancel_job("job_a")

    assert await store.retry_job("job_a") == 1
    row = await db_row(store, second.id)
    assert (row["state"], row["attempts"], row["error_code"], row["error_message"]) == ("queued", 0, None, None)
    assert row["finished_at"] is None
    assert (await db_row(store, first.id))["state"] == "completed"
    assert (await store.get_job("job_a")).cancelled_at is None
    [again] = await store.claim("me", ["job_a"], 10, LEASE)
    assert (again.id, again.attempts) == (second.id, 1)
    assert await store.retry_job("job_a") == 0

    with pytest.raises(JobNotFound):
        await store.retry_job("job_nope")


# --- jobs and the staging phase -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_staging_job_is_invisible_until_published(store: Store) -> None:
    await make_job(store, "job_s", 3, publish=False)
    with pytest.raises(JobNotFound):
        await store.get_job("job_s")
    assert await store.list_jobs() == []
    assert await store.unfinished_job_ids() == []
    assert await store.find_job_by_fingerprint("fp-job_s") is None
    with pytest.raises(JobNotFound):
        await store.job_stats("job_s")

    await store.publish_job("job_s", 3)
    job = await store.get_job("job_s")
    assert (job.id, job.total, job.name, job.source) == ("job_s", 3, "job_s", "job_s.jsonl")
    assert [j.id for j in await store.list_jobs()] == ["job_s"]
    assert await store.unfinished_job_ids() == ["job_s"]
    assert await store.find_job_by_fingerprint("fp-job_s") == "job_s"


@pytest.mark.anyio
async def test_drop_abandoned_staging_only_drops_staging_jobs(store: Store, db: str) -> None:
    await make_job(store, "job_ready", 2)
    await make_job(store, "job_dead", 2, publish=False)
    assert await store.drop_abandoned_staging(lambda by: by == "testhost:1") == ["job_dead"]
    assert [j.id for j in await store.list_jobs()] == ["job_ready"]
    assert {r["job_id"] for r in await db_rows(store)} == {"job_ready"}


@pytest.mark.anyio
async def test_a_request_must_name_a_job_and_goes_with_it(store: Store, db: str) -> None:
    # The requests -> jobs key (a foreign key on SQLite, statement triggers on PostgreSQL: migration 0011).
    await make_job(store, "job_a", 3)
    await make_job(store, "job_b", 2)
    orphan = insert(requests).values(job_id="job_none", line_no=1, custom_id="x", body="{}", sched=1, created_at=0.0)
    with pytest.raises(IntegrityError):
        await store.write(lambda conn: conn.execute(orphan))
    await store.write(lambda conn: conn.execute(delete(jobs).where(jobs.c.id == "job_a")))
    assert [(r["job_id"], r["line_no"]) for r in await db_rows(store)] == [("job_b", 1), ("job_b", 2)]


@pytest.mark.anyio
async def test_unfinished_job_ids_omits_finished_jobs(store: Store) -> None:
    await make_job(store, "job_a", 1)
    await make_job(store, "job_b", 1)
    [c] = await store.claim("me", ["job_a"], 1, LEASE)
    assert await store.unfinished_job_ids() == ["job_a", "job_b"]
    await store.apply("me", [done(c.id)])
    assert await store.unfinished_job_ids() == ["job_b"]


@pytest.mark.anyio
async def test_integrity_check(store: Store) -> None:
    await make_job(store, "job_a", 20)
    await store.claim("me", ["job_a"], 5, LEASE)
    assert await store.integrity_check() == "ok"


@pytest.mark.anyio
async def test_store_queries_raise_no_deprecation_warnings(store: Store) -> None:
    # pyproject runs the suite with filterwarnings=error; the store's retry wrapper must not warn.
    await make_job(store, "job_w", 2)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        listed = await store.list_jobs()
        await store.job_stats("job_w")
    assert [j.id for j in listed] == ["job_w"]
    assert [str(w.message) for w in seen] == []


@pytest.mark.anyio
async def test_a_store_without_a_file_runs_the_same_hot_writes_through_the_engine() -> None:
    # Claims, write-back and submit's inserts normally run on a second, plain sqlite3 connection to the
    # file; an in-memory store has no file to open twice, so the same SQL runs in the engine's transaction.
    s = await Store.open("sqlite+aiosqlite://")
    try:
        assert s.path is None  # no file: no second connection to open
        await make_job(s, "job_a", 3)
        [a, b] = await s.claim("me", ["job_a"], 2, LEASE)
        assert (a.line_no, b.line_no, a.attempts) == (1, 2, 1)
        refused = await s.apply(
            "me",
            [done(a.id, UsageCounts(3, 0, 4, 0, 7)), Outcome(b.id, S.QUEUED, refund_attempt=True)],
        )
        assert refused == []
        assert await s.apply("other", [done(b.id)]) == [b.id]  # not leased by "other"
        stats = await s.job_stats("job_a")
        assert stats.counts["completed"] == 1 and stats.counts["queued"] == 2
        assert stats.usage.total_tokens == 7
    finally:
        await s.aclose()


@pytest.mark.anyio
async def test_work_given_back_to_a_cancelled_job_is_cancelled_not_queued(store: Store, db: str) -> None:
    # Both ways back to `queued` (a retry written back, a runner releasing what it held) meet the same rule.
    await make_job(store, "job_a", 3)
    [a, b, c] = await store.claim("me", ["job_a"], 3, LEASE)
    await store.cancel_job("job_a")
    assert await store.apply("me", [Outcome(a.id, S.QUEUED, next_attempt_at=time.time())]) == []
    await store.release("me", refund=True)
    for r in (await db_row(store, a.id), await db_row(store, b.id), await db_row(store, c.id)):
        assert (r["state"], r["error_code"], r["error_message"]) == ("cancelled", "cancelled", "the job was cancelled")
        assert r["lease_owner"] is None and r["finished_at"] is not None
