from __future__ import annotations

import gzip
import json
import socket
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest

import runner.ingest
from runner.errors import InputError, InputErrors
from runner.ingest import SubmitOptions, submit_file, submit_files
from runner.store import Store


@pytest.fixture(autouse=True, params=["in-process", "child"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test twice: parsed in this process, and by the forked child that parses big files, which must
    queue and report exactly the same."""
    if request.param == "child":
        monkeypatch.setattr(runner.ingest, "CHILD_MIN_BYTES", 0)
    return str(request.param)


def body(i: int = 1, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "input": f"item {i}", **extra}


def line(custom_id: str, b: dict[str, Any] | None = None) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": b or body()})


def write(path: Path, lines: list[str | bytes], *, eol: bytes = b"\n") -> Path:
    path.write_bytes(b"".join((x.encode() if isinstance(x, str) else x) + eol for x in lines))
    return path


def good_file(path: Path, n: int) -> Path:
    return write(path, [line(f"c-{i}", body(i)) for i in range(1, n + 1)])


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return list(conn.execute(sql))


def stored(db: Path) -> list[tuple[int, str, dict[str, Any]]]:
    rows = query(db, "SELECT line_no, custom_id, body FROM requests ORDER BY id")
    return [(n, cid, json.loads(b)) for n, cid, b in rows]


def assert_nothing_queued(db: Path) -> None:
    assert query(db, "SELECT count(*) FROM jobs") == [(0,)]
    assert query(db, "SELECT count(*) FROM requests") == [(0,)]


async def rejected(store: Store, path: Path, **kw: Any) -> InputError:
    with pytest.raises(InputError) as info:
        await submit_file(store, path, **kw)
    assert await store.list_jobs() == []
    return info.value


# --- accepted files -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_batch_lines_are_queued_in_order(store: Store, db: Path, tmp_path: Path) -> None:
    path = good_file(tmp_path / "in.jsonl", 4)
    res = await submit_file(store, path)
    assert res.total == 4
    assert res.existing is False
    job = await store.get_job(res.job_id)
    assert (job.total, job.name, job.source, job.background) == (4, "in", str(path), False)
    assert stored(db) == [(i, f"c-{i}", body(i)) for i in range(1, 5)]
    assert await store.unfinished_job_ids() == [res.job_id]


@pytest.mark.anyio
async def test_bare_bodies_get_line_numbers_as_custom_ids(store: Store, db: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "bare.jsonl", [json.dumps(body(1)), "", json.dumps(body(3)), json.dumps(body(4))])
    res = await submit_file(store, path, name="named")
    assert res.total == 3
    assert [(n, cid) for n, cid, _ in stored(db)] == [(1, "line-1"), (3, "line-3"), (4, "line-4")]
    assert stored(db)[1][2] == body(3)
    assert (await store.get_job(res.job_id)).name == "named"


@pytest.mark.anyio
async def test_bom_on_first_line_is_accepted(store: Store, db: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "bom.jsonl", [b"\xef\xbb\xbf" + line("a").encode(), line("b")])
    res = await submit_file(store, path)
    assert res.total == 2
    assert [cid for _, cid, _ in stored(db)] == ["a", "b"]


@pytest.mark.anyio
async def test_crlf_line_endings_are_accepted(store: Store, db: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "crlf.jsonl", [line("a", body(1)), line("b", body(2))], eol=b"\r\n")
    res = await submit_file(store, path)
    assert res.total == 2
    assert stored(db) == [(1, "a", body(1)), (2, "b", body(2))]
    assert all("\r" not in b for (b,) in query(db, "SELECT body FROM requests"))


@pytest.mark.anyio
async def test_blank_lines_are_skipped_but_counted(store: Store, db: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "blank.jsonl", ["", line("a"), "   ", "\t", line("b"), "", ""])
    res = await submit_file(store, path)
    assert res.total == 2
    assert [(n, cid) for n, cid, _ in stored(db)] == [(2, "a"), (5, "b")]


@pytest.mark.anyio
async def test_last_line_without_newline(store: Store, db: Path, tmp_path: Path) -> None:
    path = tmp_path / "nonl.jsonl"
    path.write_text(line("a") + "\n" + line("b"))
    assert (await submit_file(store, path)).total == 2


AWKWARD = [
    ('quote"and\\backslash', body(1, instructions="tab\tnewline\nnul\u0000end")),
    ("ünïcødé-🙂", body(2, input="日本語のテキスト 🙂", metadata={"k": "v\u2028w"})),
    ("  spaces  ", body(3, conversation="conv_1")),
    ('{"looks": ["like json"]}', body(4, input=[{"role": "user", "content": "x" * 5000}])),
]


@pytest.mark.anyio
@pytest.mark.parametrize("insert_rows", [2, 500], ids=["statements-split-a-chunk", "one-statement-a-chunk"])
async def test_stored_rows_match_the_file_exactly(
    store: Store, db: Path, tmp_path: Path, insert_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks of 3 lines travel to SQLite as multi-row INSERTs (of 2 and 1 rows, or of 3): what comes out must
    # be byte for byte what the file holds, escapes and all, in line order.
    monkeypatch.setattr("runner.store.sqlite.hot.INSERT_ROWS", insert_rows)
    monkeypatch.setattr(runner.ingest, "CHUNK", 3)
    path = write(tmp_path / "awkward.jsonl", [line(cid, b) for cid, b in AWKWARD])
    # Without cache keys, which would add a prompt_cache_key to the long line (tests/integration/test_cache_order.py).
    res = await submit_file(store, path, options=SubmitOptions(cache_keys=False))
    assert res.total == len(AWKWARD)
    assert stored(db) == [(i, cid, b) for i, (cid, b) in enumerate(AWKWARD, start=1)]
    rows = query(db, "SELECT line_no, typeof(line_no), conversation, state FROM requests ORDER BY id")
    assert rows == [
        (1, "integer", None, "queued"),
        (2, "integer", None, "queued"),
        (3, "integer", "conv_1", "queued"),
        (4, "integer", None, "queued"),
    ]


@pytest.mark.anyio
async def test_chunks_are_bounded_by_bytes_as_well_as_lines(
    store: Store, db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lines of 50 KB each: a chunk closes at the byte bound long before the line bound.
    monkeypatch.setattr(runner.ingest, "CHUNK_BYTES", 120_000)
    sizes: list[int] = []
    add = Store.add_requests

    async def spy(self: Store, job_id: str, rows: Any) -> None:
        sizes.append(len(rows))
        await add(self, job_id, rows)

    monkeypatch.setattr(Store, "add_requests", spy)
    path = write(tmp_path / "big-lines.jsonl", [line(f"c{i}", body(i, input="y" * 50_000)) for i in range(7)])
    assert (await submit_file(store, path)).total == 7
    assert sizes == [3, 3, 1]
    assert [n for n, _, _ in stored(db)] == list(range(1, 8))


# --- rejected files -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_one_bad_line_queues_nothing_and_is_named(store: Store, db: Path, tmp_path: Path) -> None:
    lines = [line(f"c-{i}", body(i)) for i in range(1, 6)]
    lines[2] = line("c-3", body(3, temperature=5))
    path = write(tmp_path / "bad.jsonl", lines)
    e = await rejected(store, path)
    assert e.path == str(path)
    assert e.bad_lines == 1
    [p] = e.problems
    assert (p.line, p.field) == (3, "body.temperature")
    msg = str(e)
    assert msg.splitlines()[0] == f"{path}: 1 invalid line(s); nothing was queued"
    assert f"{path}:line 3: field body.temperature:" in msg
    assert "(got 5)" in msg
    assert_nothing_queued(db)


@pytest.mark.anyio
async def test_invalid_json_names_the_line(store: Store, db: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "json.jsonl", [line("a"), '{"custom_id": "b", "body": ', line("c")])
    e = await rejected(store, path)
    [p] = e.problems
    assert p.line == 2
    assert "is not valid JSON" in p.reason
    assert f"{path}:line 2: is not valid JSON" in str(e)
    assert_nothing_queued(db)


@pytest.mark.anyio
async def test_bad_utf8_names_the_line(store: Store, db: Path, tmp_path: Path) -> None:
    bad = b'{"model": "m", "input": "caf\xe9 \xff"}'
    path = write(tmp_path / "latin1.jsonl", [json.dumps(body(1)), json.dumps(body(2)), bad])
    e = await rejected(store, path)
    [p] = e.problems
    assert p.line == 3
    assert "UTF-8" in p.reason
    assert f"{path}:line 3: is not valid UTF-8" in str(e)
    assert_nothing_queued(db)


@pytest.mark.anyio
async def test_a_line_that_is_not_an_object(store: Store, db: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "arr.jsonl", [line("a"), "[1, 2, 3]"])
    e = await rejected(store, path)
    assert [p.line for p in e.problems] == [2]
    assert_nothing_queued(db)


@pytest.mark.anyio
async def test_duplicate_custom_id_names_both_lines(store: Store, db: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "dup.jsonl", [line("a"), line("b"), line("a"), line("c")])
    e = await rejected(store, path)
    [p] = e.problems
    assert (p.line, p.field) == (3, "custom_id")
    assert "line 1" in p.reason
    assert f"{path}:line 3: field custom_id: 'a' is already used on line 1" in str(e)
    assert_nothing_queued(db)


@pytest.mark.anyio
async def test_duplicate_custom_id_across_a_chunk_boundary(
    store: Store, db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner.ingest, "CHUNK", 3)
    ids = ["a", "b", "c", "d", "a", "e", "f", "b"]
    path = write(tmp_path / "dup.jsonl", [line(x) for x in ids])
    e = await rejected(store, path)
    assert [(p.line, p.field) for p in e.problems] == [(5, "custom_id"), (8, "custom_id")]
    msg = str(e)
    assert f"{path}:line 5: field custom_id: 'a' is already used on line 1" in msg
    assert f"{path}:line 8: field custom_id: 'b' is already used on line 2" in msg
    assert e.bad_lines == 2
    assert_nothing_queued(db)


@pytest.mark.anyio
async def test_many_chunks_without_duplicates_are_accepted(
    store: Store, db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner.ingest, "CHUNK", 3)
    path = good_file(tmp_path / "ok.jsonl", 10)
    res = await submit_file(store, path)
    assert res.total == 10
    assert [n for n, _, _ in stored(db)] == list(range(1, 11))


@pytest.mark.anyio
async def test_problems_are_listed_in_line_order(store: Store, tmp_path: Path) -> None:
    # A repeated custom_id on line 2, then 25 lines of broken JSON: the message reads top to bottom, so the
    # first bad line of the file is among the 20 shown.
    path = write(tmp_path / "mixed.jsonl", [line("a"), line("a"), *(["{nope"] * 25)])
    e = await rejected(store, path)
    assert e.bad_lines == 26
    shown = [x.removeprefix(f"{path}:") for x in str(e).splitlines()[1:21]]
    assert [int(x.split(":")[0].removeprefix("line ")) for x in shown] == list(range(2, 22))
    assert shown[0] == "line 2: field custom_id: 'a' is already used on line 1"


@pytest.mark.anyio
async def test_more_than_twenty_bad_lines_are_summarised(store: Store, db: Path, tmp_path: Path) -> None:
    lines = [line(f"c-{i}", body(i)) for i in range(1, 31)]
    for i in range(25):
        lines[i] = line(f"c-{i + 1}", body(i + 1, temperature=9))
    path = write(tmp_path / "many.jsonl", lines)
    e = await rejected(store, path)
    assert e.bad_lines == 25
    msg = e.render()
    assert msg.splitlines()[0] == f"{path}: 25 invalid line(s); nothing was queued"
    shown = [x for x in msg.splitlines() if x.startswith(f"{path}:line ")]
    assert len(shown) == 20
    assert shown[0].startswith(f"{path}:line 1:")
    assert shown[-1].startswith(f"{path}:line 20:")
    assert msg.splitlines()[-1] == "... and 5 more invalid line(s)"
    assert_nothing_queued(db)


@pytest.mark.anyio
async def test_hundreds_of_bad_lines_are_counted(store: Store, db: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "junk.jsonl", ["not json"] * 450)
    e = await rejected(store, path)
    assert e.bad_lines == 450
    assert str(e).splitlines()[-1] == "... and 430 more invalid line(s)"
    assert_nothing_queued(db)


@pytest.mark.anyio
async def test_empty_file_is_an_error(store: Store, db: Path, tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    e = await rejected(store, path)
    assert "empty" in str(e)
    assert str(path) in str(e)
    assert_nothing_queued(db)


@pytest.mark.anyio
async def test_file_of_blank_lines_is_an_error(store: Store, db: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "blank.jsonl", ["", "  ", ""], eol=b"\r\n")
    await rejected(store, path)
    assert_nothing_queued(db)


@pytest.mark.anyio
async def test_missing_file_is_an_error(store: Store, tmp_path: Path) -> None:
    e = await rejected(store, tmp_path / "nope.jsonl")
    assert "no such file" in str(e)


# --- resubmitting ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_same_file_twice_is_the_same_job(store: Store, db: Path, tmp_path: Path) -> None:
    path = good_file(tmp_path / "in.jsonl", 3)
    first = await submit_file(store, path)
    second = await submit_file(store, path)
    assert second.job_id == first.job_id
    assert second.existing is True
    assert second.total == 3
    assert [j.id for j in await store.list_jobs()] == [first.job_id]
    assert query(db, "SELECT count(*) FROM requests") == [(3,)]


@pytest.mark.anyio
async def test_same_content_under_another_name_is_the_same_job(store: Store, tmp_path: Path) -> None:
    a = good_file(tmp_path / "a.jsonl", 2)
    b = tmp_path / "b.jsonl"
    b.write_bytes(a.read_bytes())
    assert (await submit_file(store, b)).job_id == (await submit_file(store, a)).job_id


@pytest.mark.anyio
async def test_new_makes_a_second_job(store: Store, db: Path, tmp_path: Path) -> None:
    path = good_file(tmp_path / "in.jsonl", 3)
    first = await submit_file(store, path)
    second = await submit_file(store, path, new=True)
    assert second.job_id != first.job_id
    assert second.existing is False
    assert {j.id for j in await store.list_jobs()} == {first.job_id, second.job_id}
    assert query(db, "SELECT count(*) FROM requests") == [(6,)]


@pytest.mark.anyio
async def test_different_options_make_a_different_job(store: Store, db: Path, tmp_path: Path) -> None:
    path = good_file(tmp_path / "in.jsonl", 2)
    plain = await submit_file(store, path)
    bg = await submit_file(store, path, options=SubmitOptions(background=True))
    assert bg.job_id != plain.job_id
    assert bg.existing is False
    assert (await store.get_job(bg.job_id)).background is True
    bodies = [json.loads(b) for (b,) in query(db, f"SELECT body FROM requests WHERE job_id = '{bg.job_id}'")]
    assert all(b["background"] is True and b["store"] is True for b in bodies)
    again = await submit_file(store, path, options=SubmitOptions(background=True))
    assert (again.job_id, again.existing) == (bg.job_id, True)


@pytest.mark.anyio
async def test_changed_file_is_a_new_job(store: Store, tmp_path: Path) -> None:
    path = good_file(tmp_path / "in.jsonl", 2)
    first = await submit_file(store, path)
    good_file(path, 3)
    second = await submit_file(store, path)
    assert second.job_id != first.job_id
    assert second.total == 3


@pytest.mark.anyio
async def test_a_rejected_file_can_be_fixed_and_resubmitted(store: Store, db: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "in.jsonl", [line("a"), "{oops"])
    await rejected(store, path)
    write(path, [line("a"), line("b")])
    res = await submit_file(store, path)
    assert (res.total, res.existing) == (2, False)


@pytest.mark.anyio
async def test_leftover_staging_job_of_a_dead_submit_is_dropped(store: Store, db: Path, tmp_path: Path) -> None:
    dead = await anyio.run_process([sys.executable, "-c", "import os; print(os.getpid())"])
    pid = int(dead.stdout)
    await store.begin_job(
        job_id="job_dead",
        name="x",
        source="x.jsonl",
        fingerprint="fp",
        background=False,
        staged_by=f"{socket.gethostname()}:{pid}",
    )
    await submit_file(store, good_file(tmp_path / "in.jsonl", 1))
    assert query(db, "SELECT count(*) FROM jobs WHERE id = 'job_dead'") == [(0,)]


# --- one pass: duplicates of invalid lines, Chat Completions files ------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("bad_first", [True, False], ids=["first-invalid", "second-invalid"])
async def test_duplicate_custom_id_is_named_with_the_other_errors_whichever_line_is_invalid(
    store: Store, db: Path, tmp_path: Path, bad_first: bool
) -> None:
    invalid = line("a", body(1, temperature=9))
    lines = [invalid, line("b"), line("a")] if bad_first else [line("a"), line("b"), invalid]
    path = write(tmp_path / "dup.jsonl", lines)
    e = await rejected(store, path)
    temp = "field body.temperature: must be between 0 and 2 (got 9)"
    dup = "field custom_id: 'a' is already used on line 1"
    if bad_first:
        expected = ["2 invalid line(s); nothing was queued", f"line 1: {temp}", f"line 3: {dup}"]
    else:
        expected = ["1 invalid line(s); nothing was queued", f"line 3: {temp}", f"line 3: {dup}"]
    assert [x.removeprefix(f"{path}:").strip() for x in str(e).splitlines()] == expected
    assert_nothing_queued(db)


@pytest.mark.anyio
async def test_an_invalid_line_with_a_duplicate_id_counts_once(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner.ingest, "CHUNK", 2)  # the duplicate is found in a later chunk, by the index
    path = write(tmp_path / "dup.jsonl", [line("a"), line("b"), line("c"), line("a", body(1, top_p=5))])
    e = await rejected(store, path)
    assert e.bad_lines == 1
    assert sorted((p.line, p.field) for p in e.problems) == [(4, "body.top_p"), (4, "custom_id")]


def chat_line(i: int, **extra: Any) -> str:
    chat_body = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"q {i}"}], "max_tokens": 5, **extra}
    return json.dumps({"custom_id": f"c-{i}", "method": "POST", "url": "/v1/chat/completions", "body": chat_body})


@pytest.mark.anyio
async def test_a_chat_completions_file_gets_one_summary_line_and_a_few_examples(
    store: Store, db: Path, tmp_path: Path
) -> None:
    path = write(tmp_path / "chat.jsonl", [chat_line(i) for i in range(1, 11)] + [line("ok")])
    e = await rejected(store, path)
    out = str(e).splitlines()
    assert out[0] == (
        f"{path}: this looks like a Chat Completions file (messages, max_tokens); runner sends the Responses API"
        f" \N{EM DASH} convert it with `runner convert {path} > out.jsonl`"
    )
    assert out[1] == f"{path}: 10 invalid line(s); nothing was queued"
    assert {x.split(":")[1] for x in out[2:-1]} == {"line 1", "line 2", "line 3"}
    assert out[-1] == "... and 7 more invalid line(s)"
    assert_nothing_queued(db)


@pytest.mark.anyio
async def test_a_few_chat_lines_in_a_responses_file_get_no_summary(store: Store, tmp_path: Path) -> None:
    path = write(tmp_path / "mixed.jsonl", [chat_line(1), line("a"), line("b")])
    e = await rejected(store, path)
    assert e.hint is None
    assert "line 1: field body.messages: Chat Completions field; write 'input' instead" in str(e)


# --- gzip, several files ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_gzip_file_is_read_compressed_and_is_idempotent(store: Store, db: Path, tmp_path: Path) -> None:
    plain = good_file(tmp_path / "in.jsonl", 3)
    gz = tmp_path / "in.jsonl.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    res = await submit_file(store, gz)
    assert (res.total, res.existing) == (3, False)
    assert stored(db) == [(i, f"c-{i}", body(i)) for i in range(1, 4)]
    assert (await submit_file(store, gz)).job_id == res.job_id


@pytest.mark.anyio
async def test_a_truncated_gzip_file_is_named_and_queues_nothing(store: Store, db: Path, tmp_path: Path) -> None:
    data = gzip.compress(good_file(tmp_path / "in.jsonl", 200).read_bytes())
    gz = tmp_path / "cut.jsonl.gz"
    gz.write_bytes(data[: len(data) // 2])
    e = await rejected(store, gz)
    assert str(e).startswith(f"{gz}: cannot be read after line ")
    assert str(e).endswith("nothing was queued")
    assert "not a valid gzip file" in str(e)
    assert_nothing_queued(db)


@pytest.mark.anyio
async def test_several_files_make_one_job_each_in_order(store: Store, tmp_path: Path) -> None:
    a, b = good_file(tmp_path / "a.jsonl", 2), good_file(tmp_path / "b.jsonl", 3)
    ra, rb, ra2 = await submit_files(store, [a, b, a], name="nightly")
    assert (ra.total, rb.total) == (2, 3)
    assert ra2.job_id == ra.job_id  # the same file twice in one call is one job
    assert [(await store.get_job(r.job_id)).name for r in (ra, rb)] == ["nightly-a", "nightly-b"]
    assert sorted(await store.unfinished_job_ids()) == sorted([ra.job_id, rb.job_id])


@pytest.mark.anyio
async def test_one_invalid_file_queues_none_of_them_and_every_bad_file_is_named(
    store: Store, db: Path, tmp_path: Path
) -> None:
    good = good_file(tmp_path / "good.jsonl", 2)
    bad1 = write(tmp_path / "bad1.jsonl", [line("a", body(1, temprature=1))])
    bad2 = write(tmp_path / "bad2.jsonl", ["{nope"])
    with pytest.raises(InputErrors) as info:
        await submit_files(store, [bad1, good, bad2])
    msg = str(info.value).splitlines()
    assert msg[3].startswith(f"{bad2}:line 1: is not valid JSON: ")
    assert msg[:3] + msg[4:] == [
        f"{bad1}: 1 invalid line(s); nothing was queued",
        f"{bad1}:line 1: field body.temprature: unknown field; did you mean 'temperature'?",
        f"{bad2}: 1 invalid line(s); nothing was queued",
        "2 of 3 input files are invalid; no file was queued",
    ]
    assert_nothing_queued(db)
