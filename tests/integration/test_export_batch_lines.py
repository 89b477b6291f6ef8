"""The batch export's lines as the store writes them (SQLite builds a completed line in SQL, see
runner/store/sqlite/export.py) are byte for byte the lines export.py encodes itself, whatever the custom_id,
request id or answer holds, and in line order across chunks where such lines and other rows alternate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

import runner.store.reading
from runner.export import batch_line, export_job
from runner.states import RequestState
from runner.store import NewRequest, Outcome, Store, UsageCounts

S = RequestState
JOB = "job_lines"
OWNER = "o"
# Strings JSON must escape (quotes, backslashes, control characters), non-ASCII text and JSON's own
# line separators, in the custom_id, the request id and the answer.
ODD = 'a "quoted" \\ back\x01\x08\x0c\x1f\t\n\r – naïve ✓ 😀 \u2028\u2029 </script>'
ANSWER = json.dumps({"id": "resp_1", "output_text": ODD, "status": "completed"}, ensure_ascii=False)


def outcome(line: int, rid: int) -> Outcome:
    """Lines 1-14 by line % 7: completed (with or without a request id), incomplete, failed with an HTTP error,
    failed without one, completed without an answer stored, and completed again."""
    kind = line % 7
    u = UsageCounts(10, 0, 5, 0, 15)
    if kind in (0, 1, 6):
        api_id = None if kind == 6 else f"req_{ODD}_{line}"
        return Outcome(rid, S.COMPLETED, http_status=200, api_request_id=api_id, response_body=ANSWER, usage=u)
    if kind == 2:
        return Outcome(rid, S.INCOMPLETE, http_status=200, response_body=ANSWER, usage=u, error_code="incomplete")
    if kind == 3:
        body = '{"error": {"code": "invalid_value", "message": "bad"}}'
        return Outcome(rid, S.FAILED, http_status=400, response_body=body, error_code="invalid_value")
    if kind == 4:
        return Outcome(rid, S.FAILED, error_code="timeout", error_message=f"gave up: {ODD}")
    return Outcome(rid, S.COMPLETED)  # kind 5: finished without a stored answer


async def build(store: Store) -> None:
    """Lines 1-14 answered (see `outcome`), 15 cancelled, 16 left queued."""
    await store.begin_job(job_id=JOB, name="l", source="l", fingerprint="fl", background=False, staged_by="t:1")
    ids = [f"c-{n}" if n % 2 else f"{ODD} {n}" for n in range(1, 17)]
    await store.add_requests(JOB, [NewRequest(n, ids[n - 1], '{"model": "m", "input": "q"}') for n in range(1, 17)])
    await store.publish_job(JOB, 16)
    claimed = sorted(await store.claim(OWNER, [JOB], 15, 60), key=lambda c: c.line_no)
    assert [c.line_no for c in claimed] == list(range(1, 16))
    outcomes = [outcome(c.line_no, c.id) for c in claimed[:14]]
    outcomes.append(Outcome(claimed[14].id, S.QUEUED, next_attempt_at=9e18, refund_attempt=True))
    assert await store.apply(OWNER, outcomes) == []
    await store.set_state(claimed[14].id, S.CANCELLED)


async def encoded_here(store: Store) -> tuple[bytes, bytes]:
    """(results, errors) as export.py encodes every row itself (`batch_line`)."""
    results, errors = b"", b""
    async with store.stream_export(JOB) as stream:
        async for chunk in stream:
            for row in chunk:
                line = orjson.dumps(batch_line(JOB, row), option=orjson.OPT_APPEND_NEWLINE)
                if row.state in (S.FAILED.value, S.CANCELLED.value):
                    errors += line
                elif row.state not in (S.QUEUED.value, S.IN_PROGRESS.value):
                    results += line
    return results, errors


def lines(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(x) for x in data.splitlines()]


@pytest.mark.anyio
@pytest.mark.parametrize("chunk", [3, 2000])  # 3: ready lines and other rows alternate within and across chunks
async def test_store_written_batch_lines_are_the_lines_export_writes(
    store_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(runner.store.reading, "EXPORT_CHUNK", chunk)
    async with await Store.open(store_db) as store:
        await build(store)
        want_results, want_errors = await encoded_here(store)
        out, err, both = tmp_path / "out.jsonl", tmp_path / "err.jsonl", tmp_path / "all.jsonl"
        counts = await export_job(store, JOB, str(out), str(err))
        together = await export_job(store, JOB, str(both))
    assert out.read_bytes() == want_results
    assert err.read_bytes() == want_errors
    assert (counts.results, counts.errors, counts.unfinished) == (10, 5, 1)
    assert (together.results, together.errors, together.unfinished) == (15, 0, 1)
    # And what a reader of the file sees: every line once, in order, the odd strings intact.
    read = lines(both.read_bytes())
    assert [x["id"] for x in read] == [f"batch_req_lines_{n}" for n in range(1, 16)]
    assert read[1]["custom_id"] == f"{ODD} 2"
    assert read[0]["response"] == {"status_code": 200, "request_id": f"req_{ODD}_1", "body": json.loads(ANSWER)}
    assert read[5]["response"]["request_id"] is None and read[5]["error"] is None  # line 6: no request id
    assert read[4]["response"] is None and read[4]["error"] is None  # line 5: completed, nothing stored
    assert read[3]["error"] == {"code": "timeout", "message": f"gave up: {ODD}"}
    assert read[14]["error"]["code"] == "batch_cancelled"
