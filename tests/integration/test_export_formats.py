"""Export formats read back: batch, jsonl-flat, csv and parquet, with and without an errors file.

The flat formats carry each line's input beside its answer: line number, model, instructions, the input
flattened to text, and the metadata (an object in jsonl-flat, one `metadata.<key>` column per key in csv
and parquet).
"""

from __future__ import annotations

import csv
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from runner.errors import ConfigError, JobNotFound
from runner.export import FLAT_COLUMNS, export_job, iter_results
from runner.states import RequestState
from runner.store import NewRequest, Outcome, Store, UsageCounts

S = RequestState
JOB = "job_exp"
OWNER = "o"
TRICKY = 'He said, "hi, there"\nand left.\r\nNaïve – ✓'
ITEMS_TEXT = "from output items"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(str(tmp_path / "e.db"))
    try:
        yield s
    finally:
        await s.aclose()


def body(status: str, text: str | None, usage: UsageCounts) -> str:
    b: dict[str, Any] = {
        "id": "resp_x",
        "model": "gpt-4.1-mini-2025-04-14",
        "status": status,
        "output": [{"type": "message", "content": [{"type": "output_text", "text": ITEMS_TEXT}]}],
        "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
    }
    if text is not None:
        b["output_text"] = text
    return json.dumps(b)


U1 = UsageCounts(100, 40, 30, 10, 130)
U2 = UsageCounts(50, 0, 200, 0, 250)
U7 = UsageCounts(7, 0, 3, 0, 10)


PLAIN = {"model": "m", "input": "q"}
BODIES: dict[int, dict[str, Any]] = {
    1: {"model": "m1", "input": "What is 2+2?", "metadata": {"gold": "4", "split": "dev"}},
    2: {
        "model": "m2",
        "instructions": "Be brief.",
        "input": [
            {"role": "system", "content": "You grade images."},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is in it?"},
                    {"type": "input_image", "image_url": "https://example.com/a.png"},
                ],
            },
        ],
        "metadata": {"gold": "a cat"},
    },
    3: {"model": "m", "input": "q3", "metadata": {"topic": 'math, "algebra"\nline two'}},
    4: {
        "model": "m",
        "input": [
            {"type": "function_call_output", "call_id": "call_1", "output": "42"},
            {"type": "message", "role": "user", "content": [{"type": "input_file", "filename": "r.pdf"}]},
        ],
    },
}
# What each line's input looks like in the flat formats.
INPUTS: dict[int, dict[str, Any]] = {
    1: {"line": 1, "model": "m1", "instructions": None, "input": "What is 2+2?"},
    2: {
        "line": 2,
        "model": "m2",
        "instructions": "Be brief.",
        "input": "system: You grade images.\nuser: What is in it? [image]",
    },
    3: {"line": 3, "model": "m", "instructions": None, "input": "q3"},
    4: {"line": 4, "model": "m", "instructions": None, "input": "[function_call_output]\nuser: [file: r.pdf]"},
    6: {"line": 6, "model": "m", "instructions": None, "input": "q"},
    7: {"line": 7, "model": "m", "instructions": None, "input": "q"},
}
METADATA = {1: {"gold": "4", "split": "dev"}, 2: {"gold": "a cat"}, 3: {"topic": 'math, "algebra"\nline two'}}
KEYS = ("gold", "split", "topic")  # the union of the job's metadata keys, sorted


async def build(store: Store, db: Path) -> None:
    """Lines: 1 completed (tricky text), 2 incomplete, 3 failed HTTP 400, 4 failed without HTTP, 5 queued,
    6 cancelled, 7 completed whose body has no output_text (rebuilt from items), 8 in progress."""
    await store.begin_job(job_id=JOB, name="e", source="in.jsonl", fingerprint="fp", background=False, staged_by="t:1")
    await store.add_requests(JOB, [NewRequest(i, f"c-{i}", json.dumps(BODIES.get(i, PLAIN))) for i in range(1, 9)])
    await store.publish_job(JOB, 8)
    with closing(sqlite3.connect(db)) as conn:
        ids = dict(conn.execute("SELECT line_no, id FROM requests").fetchall())
    # all eight are claimed; 5 and 6 go back to the queue (not due for ages), 8 stays in progress
    claimed = await store.claim(OWNER, [JOB], 8, 60)
    assert len(claimed) == 8
    outcomes = [
        Outcome(ids[1], S.COMPLETED, http_status=200, response_body=body("completed", TRICKY, U1), usage=U1),
        Outcome(
            ids[2],
            S.INCOMPLETE,
            http_status=200,
            response_body=body("incomplete", "partial", U2),
            usage=U2,
            error_code="incomplete",
            error_message="max_output_tokens",
        ),
        Outcome(
            ids[3],
            S.FAILED,
            http_status=400,
            api_request_id="req_3",
            response_body='{"error": {"code": "invalid_value", "message": "bad temperature"}}',
            error_code="invalid_value",
            error_message="bad temperature",
        ),
        Outcome(ids[4], S.FAILED, error_code="timeout", error_message="gave up after 6 attempt(s): timed out"),
        Outcome(ids[5], S.QUEUED, next_attempt_at=9e18, refund_attempt=True),
        Outcome(ids[6], S.QUEUED, next_attempt_at=9e18, refund_attempt=True),
        Outcome(ids[7], S.COMPLETED, http_status=200, response_body=body("completed", None, U7), usage=U7),
    ]
    assert await store.apply(OWNER, outcomes) == []
    await store.set_state(ids[6], S.CANCELLED)
    # line 8 stays in progress, line 5 queued


async def one_queued_job(store: Store) -> None:
    """job_q: one request, not answered yet."""
    await store.begin_job(job_id="job_q", name="q", source="q", fingerprint="fq", background=False, staged_by="t:1")
    await store.add_requests("job_q", [NewRequest(1, "a", '{"model": "m", "input": "q"}')])
    await store.publish_job("job_q", 1)


def usage_fields(u: UsageCounts) -> dict[str, int]:
    return {
        "input_tokens": u.input_tokens,
        "cached_tokens": u.cached_tokens,
        "output_tokens": u.output_tokens,
        "reasoning_tokens": u.reasoning_tokens,
        "total_tokens": u.total_tokens,
    }


ANSWERS = {
    "c-1": {"custom_id": "c-1", "status": "completed", "output_text": TRICKY, **usage_fields(U1), "error": None},
    "c-2": {"custom_id": "c-2", "status": "incomplete", "output_text": "partial", **usage_fields(U2), "error": None},
    "c-3": {
        "custom_id": "c-3",
        "status": "failed",
        "output_text": None,
        **usage_fields(UsageCounts()),
        "error": "invalid_value: bad temperature",
    },
    "c-4": {
        "custom_id": "c-4",
        "status": "failed",
        "output_text": None,
        **usage_fields(UsageCounts()),
        "error": "timeout: gave up after 6 attempt(s): timed out",
    },
    "c-6": {
        "custom_id": "c-6",
        "status": "cancelled",
        "output_text": None,
        **usage_fields(UsageCounts()),
        "error": "batch_cancelled",
    },
    "c-7": {"custom_id": "c-7", "status": "completed", "output_text": ITEMS_TEXT, **usage_fields(U7), "error": None},
}


def joined(custom_id: str) -> dict[str, Any]:
    """The answer with its line's input, in FLAT_COLUMNS order (no metadata yet)."""
    merged = {
        "output_check": None,
        "parsed": None,
        "reused": False,
        **ANSWERS[custom_id],
        **INPUTS[int(custom_id.removeprefix("c-"))],
    }
    return {c: merged[c] for c in FLAT_COLUMNS}


# jsonl-flat: the metadata as an object (null for a line without one)
EXPECTED = {c: {**joined(c), "metadata": METADATA.get(int(c[2:]))} for c in ANSWERS}
# csv and parquet: one column per metadata key of the job (null, or empty in csv, where a line lacks it)
TABLE = {c: {**joined(c), **{f"metadata.{k}": METADATA.get(int(c[2:]), {}).get(k) for k in KEYS}} for c in ANSWERS}
TABLE_COLUMNS = [*FLAT_COLUMNS, *(f"metadata.{k}" for k in KEYS)]


def read_jsonl(p: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines()]


def read_csv(p: Path) -> tuple[list[str], list[dict[str, str]]]:
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def as_csv(record: dict[str, Any]) -> dict[str, str]:
    return {k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in record.items()}


@pytest.mark.anyio
async def test_jsonl_flat_fields(store: Store, tmp_path: Path) -> None:
    await build(store, tmp_path / "e.db")
    out = tmp_path / "out" / "flat.jsonl"
    counts = await export_job(store, JOB, str(out), fmt="jsonl-flat")
    rows = read_jsonl(out)
    assert rows == [EXPECTED[c] for c in ("c-1", "c-2", "c-3", "c-4", "c-6", "c-7")]  # input order, no 5 or 8
    assert all(list(r) == [*FLAT_COLUMNS, "metadata"] for r in rows)
    assert (counts.results, counts.errors, counts.unfinished) == (6, 0, 2)


@pytest.mark.anyio
async def test_jsonl_flat_with_errors_file(store: Store, tmp_path: Path) -> None:
    await build(store, tmp_path / "e.db")
    out, err = tmp_path / "flat.jsonl", tmp_path / "flat.errors.jsonl"
    counts = await export_job(store, JOB, str(out), str(err), fmt="jsonl-flat")
    assert read_jsonl(out) == [EXPECTED[c] for c in ("c-1", "c-2", "c-7")]
    assert read_jsonl(err) == [EXPECTED[c] for c in ("c-3", "c-4", "c-6")]
    assert (counts.results, counts.errors, counts.unfinished) == (3, 3, 2)


@pytest.mark.anyio
async def test_csv_round_trips_through_dictreader(store: Store, tmp_path: Path) -> None:
    await build(store, tmp_path / "e.db")
    out = tmp_path / "out.csv"
    counts = await export_job(store, JOB, str(out), fmt="csv")
    header, rows = read_csv(out)
    assert header == TABLE_COLUMNS
    assert rows == [as_csv(TABLE[c]) for c in ("c-1", "c-2", "c-3", "c-4", "c-6", "c-7")]
    assert rows[0]["output_text"] == TRICKY  # comma, quotes, LF, CRLF and non-ASCII all intact
    assert rows[0]["metadata.gold"] == "4" and rows[2]["metadata.topic"] == 'math, "algebra"\nline two'
    assert rows[1]["input"] == "system: You grade images.\nuser: What is in it? [image]"
    assert (counts.results, counts.errors, counts.unfinished) == (6, 0, 2)


@pytest.mark.anyio
async def test_csv_with_errors_file_both_have_headers(store: Store, tmp_path: Path) -> None:
    await build(store, tmp_path / "e.db")
    out, err = tmp_path / "r.csv", tmp_path / "e.csv"
    await export_job(store, JOB, str(out), str(err), fmt="csv")
    header, rows = read_csv(out)
    assert header == TABLE_COLUMNS
    assert [r["custom_id"] for r in rows] == ["c-1", "c-2", "c-7"]
    header, errs = read_csv(err)
    assert header == TABLE_COLUMNS  # the same columns in both files, whichever lines hold the keys
    assert errs == [as_csv(TABLE[c]) for c in ("c-3", "c-4", "c-6")]


@pytest.mark.anyio
async def test_csv_of_a_job_with_nothing_finished_is_just_a_header(store: Store, tmp_path: Path) -> None:
    await one_queued_job(store)
    out = tmp_path / "q.csv"
    counts = await export_job(store, "job_q", str(out), fmt="csv")
    assert out.read_bytes() == (",".join(FLAT_COLUMNS) + "\r\n").encode()  # RFC 4180 line ends, no metadata
    assert counts.unfinished == 1


@pytest.mark.anyio
async def test_batch_format_is_unchanged_and_is_the_default(store: Store, tmp_path: Path) -> None:
    await build(store, tmp_path / "e.db")
    default, explicit, err = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "b.err.jsonl"
    await export_job(store, JOB, str(default))
    counts = await export_job(store, JOB, str(explicit), str(err), fmt="batch")
    lines = read_jsonl(default)
    assert [x["custom_id"] for x in lines] == ["c-1", "c-2", "c-3", "c-4", "c-6", "c-7"]
    assert lines[0]["id"] == "batch_req_exp_1"
    assert lines[0]["response"]["body"]["output_text"] == TRICKY
    assert lines[2]["response"]["status_code"] == 400 and lines[2]["error"] is None
    assert lines[3]["error"] == {"code": "timeout", "message": "gave up after 6 attempt(s): timed out"}
    assert lines[4]["error"]["code"] == "batch_cancelled"
    assert [x["custom_id"] for x in read_jsonl(explicit)] == ["c-1", "c-2", "c-7"]
    assert [x["custom_id"] for x in read_jsonl(err)] == ["c-3", "c-4", "c-6"]
    assert (counts.results, counts.errors, counts.unfinished) == (3, 3, 2)


@pytest.mark.anyio
async def test_flat_to_stdout(store: Store, tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    await build(store, tmp_path / "e.db")
    await export_job(store, JOB, None, fmt="jsonl-flat")
    out = capfdbinary.readouterr().out.decode()
    assert [json.loads(x)["custom_id"] for x in out.splitlines()] == ["c-1", "c-2", "c-3", "c-4", "c-6", "c-7"]


@pytest.mark.anyio
async def test_unknown_format_writes_nothing(store: Store, tmp_path: Path) -> None:
    await build(store, tmp_path / "e.db")
    out = tmp_path / "x" / "out.xlsx"
    with pytest.raises(ConfigError, match="unknown export format 'xlsx'"):
        await export_job(store, JOB, str(out), fmt="xlsx")
    assert not out.parent.exists()


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", ["batch", "jsonl-flat", "csv", "parquet"])
async def test_unknown_job_leaves_no_file(store: Store, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "o" / "out.x"
    with pytest.raises(JobNotFound):
        await export_job(store, "job_nope", str(out), str(tmp_path / "o" / "err.x"), fmt=fmt)
    # neither the files nor their temporary .part files (csv and parquet look the job up before any file)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def read_parquet(p: Path) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    import pyarrow.parquet as pq

    table = pq.read_table(p)
    return [(f.name, str(f.type)) for f in table.schema], table.to_pylist()


@pytest.mark.anyio
async def test_parquet_reads_back_typed(store: Store, tmp_path: Path) -> None:
    await build(store, tmp_path / "e.db")
    out = tmp_path / "out" / "r.parquet"
    counts = await export_job(store, JOB, str(out), fmt="parquet")
    schema, rows = read_parquet(out)
    kinds = {"line": "int64", "reused": "bool"}
    assert schema == [(c, "int64" if c.endswith("_tokens") else kinds.get(c, "string")) for c in TABLE_COLUMNS]
    assert rows == [TABLE[c] for c in ("c-1", "c-2", "c-3", "c-4", "c-6", "c-7")]
    assert (counts.results, counts.errors, counts.unfinished) == (6, 0, 2)


@pytest.mark.anyio
async def test_parquet_with_errors_file_and_several_row_groups(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    monkeypatch.setattr("runner.export.PARQUET_ROW_GROUP", 2)
    await build(store, tmp_path / "e.db")
    out, err = tmp_path / "r.parquet", tmp_path / "e.parquet"
    counts = await export_job(store, JOB, str(out), str(err), fmt="parquet")
    assert read_parquet(out)[1] == [TABLE[c] for c in ("c-1", "c-2", "c-7")]
    assert read_parquet(err)[1] == [TABLE[c] for c in ("c-3", "c-4", "c-6")]
    assert pq.ParquetFile(out).metadata.num_row_groups == 2  # 2 + 1 rows: written as they came, not at the end
    assert (counts.results, counts.errors, counts.unfinished) == (3, 3, 2)


@pytest.mark.anyio
async def test_parquet_of_a_job_with_nothing_finished_has_the_schema(store: Store, tmp_path: Path) -> None:
    await one_queued_job(store)
    out = tmp_path / "q.parquet"
    counts = await export_job(store, "job_q", str(out), fmt="parquet")
    schema, rows = read_parquet(out)
    assert [name for name, _ in schema] == list(FLAT_COLUMNS)
    assert rows == []
    assert counts.unfinished == 1


@pytest.mark.anyio
async def test_parquet_refuses_stdout(store: Store, tmp_path: Path) -> None:
    await build(store, tmp_path / "e.db")
    with pytest.raises(ConfigError, match="give -o FILE"):
        await export_job(store, JOB, None, fmt="parquet")


@pytest.mark.anyio
async def test_parquet_without_pyarrow_says_how_to_get_it(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await build(store, tmp_path / "e.db")
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)  # import pyarrow now raises ImportError
    out = tmp_path / "r.parquet"
    with pytest.raises(ConfigError, match=r"pip install 'responses-runner\[parquet\]'"):
        await export_job(store, JOB, str(out), fmt="parquet")
    assert list(tmp_path.glob("*.parquet*")) == []


@pytest.mark.anyio
async def test_batch_format_carries_no_input_columns(store: Store, tmp_path: Path) -> None:
    await build(store, tmp_path / "e.db")
    out = tmp_path / "b.jsonl"
    await export_job(store, JOB, str(out))
    assert all(set(x) == {"id", "custom_id", "response", "error"} for x in read_jsonl(out))


@pytest.mark.anyio
async def test_iter_results_yields_every_line_with_input_and_answer(store: Store, tmp_path: Path) -> None:
    await build(store, tmp_path / "e.db")
    rows = [r async for r in iter_results(store, JOB)]
    assert [r.custom_id for r in rows] == [f"c-{i}" for i in range(1, 9)]  # input order, unfinished included
    for r in rows:
        if r.custom_id in ANSWERS:
            # app.results rows do not carry the structured-output columns (tests/e2e/test_outputs.py has them)
            want = {k: v for k, v in joined(r.custom_id).items() if k not in ("output_check", "parsed")}
            got = {
                "custom_id": r.custom_id,
                "line": r.line,
                "model": r.model,
                "instructions": r.instructions,
                "input": r.input,
                "status": r.status,
                "output_text": r.output_text,
                **usage_fields(r.usage),
                "error": r.error,
                "reused": r.reused,
            }
            assert got == want
        assert r.request == BODIES.get(r.line, PLAIN)
        assert r.metadata == METADATA.get(r.line, {})
    by_id = {r.custom_id: r for r in rows}
    assert (by_id["c-5"].status, by_id["c-5"].output_text, by_id["c-5"].response) == ("queued", None, None)
    assert by_id["c-8"].status == "in_progress"
    assert by_id["c-1"].response is not None and by_id["c-1"].response["status"] == "completed"
    assert by_id["c-3"].response == {"error": {"code": "invalid_value", "message": "bad temperature"}}


@pytest.mark.anyio
async def test_app_results_streams_a_store_file_in_input_order(store: Store, tmp_path: Path) -> None:
    from contextlib import aclosing

    from runner import app

    db = str(tmp_path / "e.db")
    await build(store, tmp_path / "e.db")
    rows = [r async for r in app.results(JOB, db=db)]
    assert [(r.line, r.status) for r in rows] == [
        (1, "completed"),
        (2, "incomplete"),
        (3, "failed"),
        (4, "failed"),
        (5, "queued"),
        (6, "cancelled"),
        (7, "completed"),
        (8, "in_progress"),
    ]
    first = rows[0]
    assert (first.input, first.metadata["gold"], first.output_text, first.usage) == ("What is 2+2?", "4", TRICKY, U1)
    async with aclosing(app.results(JOB, db=db)) as it:
        async for row in it:
            assert row.custom_id == "c-1"
            break  # leaving early closes the store at once
    with pytest.raises(JobNotFound):
        async for _ in app.results("job_nope", db=db):
            pass
