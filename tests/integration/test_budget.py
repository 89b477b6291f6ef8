"""`--max-cost` in process: the run stops before the budget, the rest stays queued, a later run finishes with no
request sent twice. Billing is runner_mock's (usage_for), answered through an in-process transport."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from runner import app
from runner.prices import load_prices
from runner.spec import SpecError, load_spec
from runner.usage import UsageCounts
from runner.worker.types import StopReason
from runner_mock.content import usage_for
from tests.integration.test_reuse_store import FakeApi, settings

N = 40
MODEL = "gpt-4.1"


def _bodies(**extra: object) -> list[dict[str, object]]:
    return [{"model": MODEL, "input": f"Summarise case {i}: " + "facts " * (200 + i % 7), **extra} for i in range(N)]


def _cost(bodies: list[dict[str, object]]) -> float:
    """What the mock bills for `bodies`, priced from the shipped table."""
    prices = load_prices()
    total = 0.0
    for b in bodies:
        u = usage_for(b)[1]
        cost = prices.cost(MODEL, UsageCounts(u["input_tokens"], 0, u["output_tokens"]))
        assert cost is not None
        total += cost
    return total


def _jobfile(path: Path, bodies: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(b) + "\n" for b in bodies))
    return path


@pytest.mark.anyio
@pytest.mark.parametrize("bounded", [False, True])
async def test_half_the_cost_stops_at_the_budget_and_a_bigger_one_finishes(tmp_path: Path, bounded: bool) -> None:
    bodies = _bodies(max_output_tokens=64) if bounded else _bodies()
    full = _cost(bodies)
    db, api = tmp_path / "r.db", FakeApi()
    job = (await app.submit(_jobfile(tmp_path / "in.jsonl", bodies), db=str(db))).job_id

    half = full / 2
    out = await app.run([job], settings(db, max_cost=half, concurrency=8), transport=api.transport())
    assert out.result.reason is StopReason.BUDGET
    rep = await app.report(job, db=str(db))
    # Nothing was in flight at the stop, so the spend is within the budget itself, and close to it.
    assert half * 0.8 <= rep.cost_usd <= half
    assert out.result.budget is not None and out.result.budget.spent == pytest.approx(rep.cost_usd)
    st = await app.status(job, db=str(db))
    done = st.counts["completed"]
    assert api.creates == done and 0 < done < N
    assert st.counts["queued"] == N - done and st.counts["in_progress"] == 0
    assert st.attempts == done  # requests claimed ahead but never sent gave their attempt back

    out = await app.run([job], settings(db, max_cost=full * 1.5), transport=api.transport())
    assert out.result.reason is StopReason.DONE
    assert api.creates == N  # no request was sent twice
    assert (await app.report(job, db=str(db))).cost_usd == pytest.approx(full)


@pytest.mark.anyio
async def test_a_model_without_a_price_is_never_sent_under_a_budget(tmp_path: Path) -> None:
    db, api = tmp_path / "r.db", FakeApi()
    job = (
        await app.submit(_jobfile(tmp_path / "in.jsonl", [{"model": "my-local-llm", "input": "hi"}]), db=str(db))
    ).job_id
    out = await app.run([job], settings(db, max_cost=10.0), transport=api.transport())
    assert out.result.reason is StopReason.BUDGET
    assert out.result.budget is not None and out.result.budget.unpriced_model == "my-local-llm"
    assert api.creates == 0
    assert (await app.status(job, db=str(db))).counts["queued"] == 1


def test_max_cost_in_a_spec(tmp_path: Path) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text('[job]\ninput = "in.jsonl"\n[limits]\nmax_cost = 2.5\n')
    assert load_spec(spec).limits.settings_update() == {"max_cost": 2.5}
    spec.write_text('[job]\ninput = "in.jsonl"\n[limits]\nmax_cost = 0\n')
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    assert str(e.value) == f"{spec}: [limits] max_cost: must be greater than 0 (got 0)"


@pytest.mark.anyio
async def test_a_spec_with_a_budget_and_reuse_over_two_nights(tmp_path: Path) -> None:
    bodies = _bodies(max_output_tokens=64)
    full = _cost(bodies)
    _jobfile(tmp_path / "in.jsonl", bodies)
    spec = tmp_path / "nightly.toml"
    spec.write_text(f'[job]\ninput = "in.jsonl"\nreuse = true\n[limits]\nmax_cost = {full / 2}\n')
    api, monday, tuesday = FakeApi(), dt.date(2026, 11, 30), dt.date(2026, 12, 1)
    kw: dict[str, Any] = {"transport": api.transport(), "overrides": {"base_url": "http://api.test/v1", "api_key": "k"}}

    stopped = await app.run_spec(spec, today=monday, **kw)
    assert stopped.run.result.reason is StopReason.BUDGET and 0 < api.creates < N
    kw["overrides"]["max_cost"] = full * 2  # a flag over the spec's [limits], as `runner run SPEC --max-cost`
    finished = await app.run_spec(spec, today=monday, **kw)
    assert finished.run.result.reason is StopReason.DONE and api.creates == N
    assert finished.jobs[0].job_id == stopped.jobs[0].job_id  # the same night's job, resumed

    # The next night asks the same questions: all of them are answered from the store.
    tue = await app.run_spec(spec, today=tuesday, **kw)
    [job] = tue.jobs
    assert job.job_id != stopped.jobs[0].job_id and api.creates == N
    assert job.report is not None and job.report.reused.requests == N and job.report.cost_usd == 0
