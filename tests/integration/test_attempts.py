"""Every attempt of a request is recorded with its outcome, in the same commit, and survives a store upgrade."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from importlib.resources import files
from pathlib import Path

import anyio
import pytest
from alembic.config import Config

from runner import app
from runner.errors import JobNotFound, RequestNotFound
from runner.show import render_text, to_json
from runner.states import RequestState
from runner.store import NewRequest, Outcome, Store, UsageCounts
from runner.store.migrate import HEAD_REVISION
from tests.integration.test_migrations import schema_diff

S = RequestState
JOB = "job_att"
BODY = '{"model": "m", "input": "q"}'
OK_BODY = '{"id": "resp_1", "status": "completed", "output_text": "four"}'


async def job(store: Store, n: int = 2) -> None:
    await store.begin_job(job_id=JOB, name="a", source="a.jsonl", fingerprint="fp", background=False, staged_by="t:1")
    await store.add_requests(JOB, [NewRequest(i, f"c-{i}", BODY) for i in range(1, n + 1)])
    await store.publish_job(JOB, n)


def attempts_count(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT count(*) FROM attempts").fetchone()[0])


@pytest.mark.anyio
async def test_each_attempt_is_recorded_with_its_outcome(store: Store, db: Path) -> None:
    await job(store, 1)
    [c] = await store.claim("me", [JOB], 1, 60)
    retry = Outcome(
        c.id,
        S.QUEUED,
        http_status=503,
        api_request_id="req_a",
        error_code="server_error",
        error_message="POST http://h/v1/responses: 503\nfirst line of the text",
        sent_at=1000.0,
    )
    assert await store.apply("me", [retry]) == []
    [c] = await store.claim("me", [JOB], 1, 60)
    done = Outcome(
        c.id,
        S.COMPLETED,
        http_status=200,
        api_request_id="req_b",
        response_body=OK_BODY,
        usage=UsageCounts(3, 0, 2, 0, 5),
        sent_at=1001.0,
    )
    assert await store.apply("me", [done]) == []

    d = await store.request_detail(JOB, "c-1")
    assert [(a.attempt, a.outcome, a.http_status, a.api_request_id, a.error_code) for a in d.attempt_rows] == [
        (1, "queued", 503, "req_a", "server_error"),
        (2, "completed", 200, "req_b", None),
    ]
    assert d.attempt_rows[0].error_message == "POST http://h/v1/responses: 503\nfirst line of the text"
    assert [a.sent_at for a in d.attempt_rows] == [1000.0, 1001.0]
    assert (d.state, d.attempts, d.usage.total_tokens) == ("completed", 2, 5)

    text = render_text(d)
    assert "attempt 1 · " in text and "HTTP 503 server_error · request id req_a · retried" in text
    assert "    first line of the text" in text  # the message in full, its line breaks kept
    assert "HTTP 200 · request id req_b · completed" in text
    assert "output_text:\n    four" in text
    assert to_json(d)["unrecorded_attempts"] == 0


@pytest.mark.anyio
async def test_refused_and_unsent_outcomes_leave_no_attempt(store: Store, db: Path) -> None:
    await job(store, 2)
    c1, c2 = await store.claim("me", [JOB], 2, 60)
    # c1: another runner's outcome (the lease is ours) is refused; c2: handed back unsent (a stop).
    assert await store.apply("other", [Outcome(c1.id, S.FAILED, error_code="x")]) == [c1.id]
    assert await store.apply("me", [Outcome(c2.id, S.QUEUED, refund_attempt=True)]) == []
    assert attempts_count(db) == 0
    d = await store.request_detail(JOB, "c-1")
    assert (d.state, d.attempt_rows) == ("in_progress", [])
    assert "attempt 1 is in flight" in render_text(d)


@pytest.mark.anyio
async def test_dropping_a_job_drops_its_attempts(store: Store, db: Path) -> None:
    await job(store, 2)
    claimed = await store.claim("me", [JOB], 2, 60)
    assert await store.apply("me", [Outcome(c.id, S.FAILED, http_status=400) for c in claimed]) == []
    assert attempts_count(db) == 2
    await store.drop_job(JOB)
    assert attempts_count(db) == 0


@pytest.mark.anyio
async def test_unknown_request_and_unknown_job_are_typed_errors(store: Store, db: Path) -> None:
    await job(store, 1)
    with pytest.raises(RequestNotFound, match="job job_att has no request with custom_id 'nope'"):
        await store.request_detail(JOB, "nope")
    with pytest.raises(JobNotFound):
        await store.request_detail("job_nope", "c-1")


@pytest.mark.anyio
async def test_a_0002_store_is_upgraded_and_records_attempts_from_then_on(tmp_path: Path) -> None:
    from alembic import command

    db = tmp_path / "old.db"
    cfg = Config()
    cfg.set_main_option("script_location", str(files("runner._migrations")))
    cfg.set_main_option("sqlalchemy.url", f"sqlite+aiosqlite:///{db}")
    await anyio.to_thread.run_sync(command.upgrade, cfg, "0002")
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            "insert into jobs (id, name, source, fingerprint, background, total, phase, created_at)"
            " values ('job_old', 'old', 'x.jsonl', 'fp', 0, 2, 'ready', 1.0)"
        )
        for line, state, attempts in ((1, "failed", 3), (2, "queued", 0)):
            conn.execute(
                "insert into requests (job_id, line_no, custom_id, body, state, attempts, next_attempt_at,"
                " input_tokens, cached_tokens, output_tokens, reasoning_tokens, total_tokens, rate_limited,"
                " created_at, error_code, error_message) values ('job_old', ?, ?, ?, ?, ?, 0, 0, 0, 0, 0, 0, 0, 1.0,"
                " ?, ?)",
                (line, f"c{line}", BODY, state, attempts, "timeout" if state == "failed" else None, None),
            )

    detail = await app.show("job_old", "c1", db=str(db))  # opening the store upgrades it
    assert (detail.state, detail.attempts, detail.attempt_rows) == ("failed", 3, [])
    assert to_json(detail)["unrecorded_attempts"] == 3
    assert "3 attempt(s) left no record" in render_text(detail)
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("select version_num from alembic_version").fetchone()[0] == HEAD_REVISION
    assert schema_diff(db) == []

    store = await Store.open(str(db))
    try:
        [c] = await store.claim("me", ["job_old"], 1, 60)
        assert await store.apply("me", [Outcome(c.id, S.COMPLETED, http_status=200, response_body=OK_BODY)]) == []
        d = await store.request_detail("job_old", "c2")
        assert [(a.attempt, a.outcome) for a in d.attempt_rows] == [(1, "completed")]
    finally:
        await store.aclose()
