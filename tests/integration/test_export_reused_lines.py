"""The batch export of a job whose lines were answered from the store (`submit --reuse`): a reused row holds no
answer of its own, and the lines the store writes itself (SQLite and PostgreSQL build them in SQL) carry the
source's answer, byte for byte what export.py writes from the rows, in line order across chunk boundaries."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

import runner.store.reading
from runner.export import batch_line, export_job
from runner.states import RequestState
from runner.store import NewRequest, Outcome, Store, UsageCounts
from runner.store.reuse import add_reusing

S = RequestState
ANSWER = '{"id": "resp_1", "output_text": "a \\"quoted\\" answer – naïve ✓", "status": "completed"}'


async def answered_job(store: Store) -> None:
    """job_src: lines 1-4, each question (hash h1-h4) answered."""
    await store.begin_job(job_id="job_src", name="s", source="s", fingerprint="fs", background=False, staged_by="t:1")
    await store.add_requests("job_src", [NewRequest(n, f"s-{n}", "{}", None, f"h{n}", n) for n in range(1, 5)])
    await store.publish_job("job_src", 4)
    claimed = await store.claim("o", ["job_src"], 4, 60)
    outcomes = [
        Outcome(
            c.id,
            S.COMPLETED,
            http_status=200,
            api_request_id=f"req_{c.line_no}",
            response_body=ANSWER,
            usage=UsageCounts(10, 0, 5, 0, 15),
        )
        for c in claimed
    ]
    assert await store.apply("o", outcomes) == []


@pytest.mark.anyio
async def test_reused_lines_export_with_their_sources_answer(
    store_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner.store.reading, "EXPORT_CHUNK", 2)  # reused, own and unanswered rows across chunks
    async with await Store.open(store_db) as store:
        await answered_job(store)
        await store.begin_job(
            job_id="job_re", name="r", source="r", fingerprint="fr", background=False, staged_by="t:1"
        )
        # Lines 1, 2, 4 ask questions answered in job_src; line 3 a new one (queued); line 5 another.
        hashes = {1: "h2", 2: "h1", 3: "new", 4: "h4", 5: "new2"}
        rows = [NewRequest(n, f'r "{n}" ✓', "{}", None, h, n) for n, h in hashes.items()]
        assert await add_reusing(store, "job_re", rows) == 3
        await store.publish_job("job_re", 5)
        want = b""
        async with store.stream_export("job_re") as stream:
            async for chunk in stream:
                for row in chunk:
                    if row.state == S.COMPLETED.value:
                        want += orjson.dumps(batch_line("job_re", row), option=orjson.OPT_APPEND_NEWLINE)
        out = tmp_path / "out.jsonl"
        counts = await export_job(store, "job_re", str(out))
    assert (counts.results, counts.unfinished) == (3, 2)
    assert out.read_bytes() == want
    read = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert [x["custom_id"] for x in read] == ['r "1" ✓', 'r "2" ✓', 'r "4" ✓']
    assert [x["response"]["request_id"] for x in read] == ["req_2", "req_1", "req_4"]
    assert all(x["response"]["body"] == orjson.loads(ANSWER) for x in read)
