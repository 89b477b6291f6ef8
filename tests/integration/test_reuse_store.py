"""`--reuse` in process: the age limit, what is never a source, and the flag's mistakes (the CLI contract is in
tests/e2e/test_reuse.py). The API is runner_mock's own billing, answered through an in-process transport."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from runner import app
from runner.cli import main
from runner.config import Settings
from runner_mock.content import usage_for


class FakeApi:
    """Answers POST /responses as the mock server does (runner_mock's usage_for), counting the creates."""

    def __init__(self) -> None:
        self.creates = 0
        self.billed: list[dict[str, Any]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        text, usage, _ = usage_for(body)
        self.creates += 1
        self.billed.append(usage)
        return httpx.Response(
            200,
            json={
                "id": f"resp_{self.creates}",
                "object": "response",
                "status": "completed",
                "model": body["model"],
                "output": [
                    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}
                ],
                "usage": usage,
            },
            headers={"x-request-id": f"req_{self.creates}"},
        )

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def settings(db: Path, **kw: Any) -> Settings:
    return Settings(db=str(db), base_url="http://api.test/v1", api_key="k", **kw)


def jobfile(path: Path, n: int, **extra: Any) -> Path:
    with path.open("w") as f:
        for i in range(1, n + 1):
            f.write(json.dumps({"model": "gpt-4.1-mini", "input": f"question {i} " * 8, **extra}) + "\n")
    return path


@pytest.mark.anyio
async def test_max_age_and_what_is_never_a_source(tmp_path: Path) -> None:
    db, api = tmp_path / "r.db", FakeApi()
    src = jobfile(tmp_path / "a.jsonl", 5)
    first = await app.submit(src, db=str(db))
    await app.run([first.job_id], settings(db), transport=api.transport())
    assert api.creates == 5

    # A queued job is no source: its lines have no answer yet.
    queued = await app.submit(jobfile(tmp_path / "b.jsonl", 5, temperature=0.5), db=str(db))
    assert queued.reused == 0
    # An answer finished before the age limit is not reused; one within it is.
    too_old = await app.submit(src, db=str(db), new=True, reuse=True, reuse_max_age=0.0)
    assert too_old.reused == 0
    fresh = await app.submit(src, db=str(db), new=True, reuse=True, reuse_max_age=3600.0)
    assert fresh.reused == 5
    # A reused answer is not a source itself (its age is its source's): the originals are still the ones used.
    again = await app.submit(src, db=str(db), new=True, reuse=True)
    assert again.reused == 5
    st = await app.status_report(again.job_id, db=str(db))
    assert st.reused == 5 and st.stats.usage.total_tokens == 0
    assert "reused 5 (answered from the store at submit, no request sent)" in st.render_text()
    # Without --reuse nothing is reused, even for the same question.
    plain = await app.submit(src, db=str(db), new=True)
    assert plain.reused == 0

    # A line that continues a conversation is never reused.
    conv = tmp_path / "c.jsonl"
    conv.write_text(
        json.dumps({"model": "gpt-4.1-mini", "input": "question 1 " * 8, "previous_response_id": "r"}) + "\n"
    )
    assert (await app.submit(conv, db=str(db), reuse=True)).reused == 0


@pytest.mark.anyio
async def test_reused_answers_count_in_the_report_not_in_the_cost(tmp_path: Path) -> None:
    db, api = tmp_path / "r.db", FakeApi()
    src = jobfile(tmp_path / "a.jsonl", 4)
    first = await app.submit(src, db=str(db))
    await app.run([first.job_id], settings(db), transport=api.transport())
    second = await app.submit(src, db=str(db), new=True, reuse=True)
    rep = await app.report(second.job_id, db=str(db))
    assert rep.cost_usd == 0
    assert rep.reused.requests == 4
    assert rep.reused.usage.input_tokens == sum(u["input_tokens"] for u in api.billed)
    assert rep.reused.saved_usd == pytest.approx((await app.report(first.job_id, db=str(db))).cost_usd)
    assert "reused 4 (answered from the store, no request sent)" in rep.render_text()

    # The flat exports mark the reused lines, whose own usage is 0; a line of the same job sent anew is not.
    more = tmp_path / "b.jsonl"
    more.write_text(src.read_text() + json.dumps({"model": "gpt-4.1-mini", "input": "a new question"}) + "\n")
    third = await app.submit(more, db=str(db), reuse=True)
    await app.run([third.job_id], settings(db), transport=api.transport())
    out = tmp_path / "flat.jsonl"
    await app.export(third.job_id, str(out), fmt="jsonl-flat", db=str(db))
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["reused"], r["total_tokens"] == 0) for r in rows] == [(True, True)] * 4 + [(False, False)]
    assert [r.reused async for r in app.results(third.job_id, db=str(db))] == [True] * 4 + [False]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--reuse-max-age", "1h"], "runner: --reuse-max-age needs --reuse"),
        (["--reuse", "--reuse-max-age", "soon"], "runner: --reuse-max-age: 'soon' is not a duration"),
    ],
)
def test_reuse_flag_mistakes_are_one_line_and_queue_nothing(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "r.db"
    with pytest.raises(SystemExit) as e:
        main(["submit", str(jobfile(tmp_path / "a.jsonl", 2)), "--db", str(db), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err
    assert not db.exists()


@pytest.mark.anyio
async def test_the_reuse_lookup_walks_the_hash_index_not_every_completed_row(tmp_path: Path) -> None:
    """SQLite without statistics once picked ix_requests_state here: 20,000 reused lines took 92 s (0010)."""
    import sqlite3

    from sqlalchemy.dialects import sqlite

    from runner.store.reuse import _source_id

    src = tmp_path / "in.jsonl"
    src.write_text('{"model": "gpt-4.1-mini", "input": "hi"}\n')
    await app.submit(src, db=str(tmp_path / "r.db"))  # a store at the head revision
    lookup = _source_id("job_x", None).compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True})
    sql = str(lookup).replace("requests.body_hash", "'h'").strip("()")
    with sqlite3.connect(tmp_path / "r.db") as con:
        plan = " ".join(str(r) for r in con.execute("EXPLAIN QUERY PLAN " + sql))
    assert "ix_requests_body_hash_state (body_hash=? AND state=?)" in plan, plan
