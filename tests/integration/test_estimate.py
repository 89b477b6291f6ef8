"""`runner estimate` in process: input from the text, output from bounds or the store's history, cost ranges,
unpriced models, lanes, reuse and jobs (the CLI contract and the comparison with the mock server's bill are in
tests/e2e/test_estimate_budget.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runner import app
from runner.errors import InputError, JobNotFound
from tests.integration.test_reuse_store import FakeApi, settings

MINI_IN, MINI_OUT = 0.40, 1.60  # gpt-4.1-mini, USD per 1M tokens (runner/prices.toml)


def _file(path: Path, bodies: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(b) + "\n" for b in bodies))
    return path


def _q(i: int, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4.1-mini", "instructions": "Grade it.", "input": f"answer number {i} " * 10, **extra}


@pytest.mark.anyio
async def test_a_file_without_a_store_is_bounded_by_max_output_tokens(tmp_path: Path) -> None:
    src = _file(
        tmp_path / "a.jsonl", [_q(i, max_output_tokens=50) for i in range(10)] + [{"model": "mine", "input": "x"}]
    )
    est = await app.estimate(str(src), db=str(tmp_path / "none.db"))
    assert not (tmp_path / "none.db").exists()  # estimating creates no store
    mini = next(m for m in est.to_json()["models"] if m["model"] == "gpt-4.1-mini")
    chars = sum(len("Grade it.") + len(f"answer number {i} " * 10) for i in range(10))
    assert mini["input_tokens"] == round(chars / 4)
    assert mini["output_tokens"] == {"low": 0, "high": 500, "basis": "output bounded by max_output_tokens"}
    assert mini["cost_usd"]["high"] == pytest.approx((chars / 4 * MINI_IN + 500 * MINI_OUT) / 1e6, abs=1e-6)
    assert est.unpriced == ["mine"] and est.to_json()["cost_usd"]["complete"] is False
    text = est.render_text()
    assert "mine: 1 lines" in text and "unpriced" in text and "$0.0000 " not in text


@pytest.mark.anyio
async def test_output_from_the_store_reuse_lanes_and_jobs(tmp_path: Path) -> None:
    db, api = tmp_path / "r.db", FakeApi()
    first = await app.submit(_file(tmp_path / "a.jsonl", [_q(i) for i in range(8)]), db=str(db))
    await app.run([first.job_id], settings(db), transport=api.transport())
    typical = sum(u["output_tokens"] for u in api.billed) / len(api.billed)

    # Four old questions and four new ones, no max_output_tokens: output comes from the 8 answers in the store.
    src = _file(tmp_path / "b.jsonl", [_q(i) for i in range(4, 12)])
    est = await app.estimate(str(src), db=str(db), lane="batch")
    m = est.models["gpt-4.1-mini"]
    assert m.history == 8 and m.output_low == pytest.approx(typical * 8)
    assert "output from 8 earlier answers of this model in the store" in est.render_text()
    assert est.lane_note == "lane batch priced at the Batch rate"
    sync = await app.estimate(str(src), db=str(db))
    assert sync.lane_note is None
    assert est.low_usd == pytest.approx(sync.low_usd * 0.5)  # the shipped table's batch_factor
    reused = await app.estimate(str(src), db=str(db), reuse=True)
    assert (reused.lines, reused.reused) == (4, 4)
    too_old = await app.estimate(str(src), db=str(db), reuse=True, reuse_max_age=0.0)
    assert (too_old.lines, too_old.reused) == (8, 0)

    # A job: what it has left to send.
    job = await app.submit(src, db=str(db))
    left = await app.estimate(job.job_id, db=str(db))
    assert (left.lines, left.done) == (8, 0)
    with pytest.raises(JobNotFound):
        await app.estimate("job_0000000000000000", db=str(db))


@pytest.mark.anyio
async def test_an_invalid_file_is_named_and_nothing_estimated(tmp_path: Path) -> None:
    src = _file(tmp_path / "bad.jsonl", [_q(1), {"model": "m", "input": "x", "temperature": 9}])
    with pytest.raises(InputError) as e:
        await app.estimate(str(src), db=str(tmp_path / "r.db"))
    assert e.value.render().splitlines() == [
        f"{src}: 1 invalid line(s); nothing was estimated",
        f"{src}:line 2: field temperature: must be between 0 and 2 (got 9)",
    ]
