"""The report, checked figure by figure against a small job whose every number is set by hand."""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runner.errors import JobNotFound
from runner.prices import ModelPrice, PriceTable, load_prices
from runner.report import build_report
from runner.states import RequestState
from runner.store import NewRequest, Outcome, Store, UsageCounts
from runner.store.reports import latency

S = RequestState
T0 = 1_700_000_000.0
JOB = "job_report"
OWNER = "test-owner"


@dataclass(frozen=True)
class Line:
    line: int
    state: RequestState
    request_model: str
    response_model: str | None = None  # None: the response body names no model
    usage: UsageCounts = field(default_factory=UsageCounts)
    http_status: int | None = 200
    code: str | None = None
    message: str | None = None
    latency: float | None = None  # finished_at - submitted_at
    body: str | None = "auto"  # the stored response body; "auto" builds one


MINI = "gpt-4.1-mini"
MINI_DATED = "gpt-4.1-mini-2025-04-14"
G5M = "gpt-5-mini"
G5M_DATED = "gpt-5-mini-2025-08-07"
CUSTOM = "my-custom-model"

LINES = [
    Line(1, S.COMPLETED, MINI, MINI_DATED, UsageCounts(1000, 200, 300, 0, 1300), latency=0.5),
    Line(2, S.COMPLETED, MINI, MINI_DATED, UsageCounts(2000, 0, 500, 0, 2500), latency=3.0),  # after a 429
    Line(3, S.COMPLETED, MINI, MINI_DATED, UsageCounts(1500, 1000, 100, 0, 1600), latency=1.5),
    Line(4, S.COMPLETED, G5M, G5M_DATED, UsageCounts(500, 0, 1000, 400, 1500), latency=12.0),
    Line(5, S.INCOMPLETE, MINI, None, UsageCounts(800, 0, 200, 0, 1000), code="incomplete", latency=2.0),
    Line(6, S.COMPLETED, CUSTOM, CUSTOM, UsageCounts(3000, 0, 700, 0, 3700), latency=0.25),
    Line(7, S.FAILED, MINI, http_status=400, code="invalid_value", message="bad temperature", latency=7.0),
    Line(8, S.FAILED, MINI, http_status=400, code="invalid_value", message="bad top_p", latency=4.0),
    Line(
        9,
        S.FAILED,
        MINI,
        http_status=None,
        code="timeout",
        message="gave up after 1 attempt(s)",
        latency=9.5,
        body="<html>not json</html>",
    ),
    Line(10, S.FAILED, MINI, http_status=400, code="invalid_value", message="bad input", latency=1.0),
    Line(11, S.FAILED, MINI, http_status=400, code="invalid_value", message="bad model", latency=6.0),
    Line(12, S.CANCELLED, MINI),
    Line(13, S.CANCELLED, MINI),
]


def response_body(x: Line) -> str | None:
    if x.body != "auto":
        return x.body
    if x.state is S.FAILED:
        return json.dumps({"error": {"code": x.code, "message": x.message, "type": "invalid_request_error"}})
    body: dict[str, Any] = {
        "id": f"resp_{x.line}",
        "object": "response",
        "status": x.state.value,
        "output_text": f"answer {x.line}",
        "usage": {
            "input_tokens": x.usage.input_tokens,
            "input_tokens_details": {"cached_tokens": x.usage.cached_tokens},
            "output_tokens": x.usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": x.usage.reasoning_tokens},
            "total_tokens": x.usage.total_tokens,
        },
    }
    if x.response_model is not None:
        body["model"] = x.response_model
    return json.dumps(body)


def ids_by_line(db: Path, job_id: str) -> dict[int, int]:
    with closing(sqlite3.connect(db)) as conn:
        return dict(conn.execute("SELECT line_no, id FROM requests WHERE job_id = ?", (job_id,)).fetchall())


async def build_job(store: Store, db: Path, lines: list[Line], job_id: str = JOB) -> None:
    """Queue `lines`, run them to their final states through the store's own calls, then fix the clock."""
    await store.begin_job(
        job_id=job_id, name="nightly", source="in.jsonl", fingerprint=f"fp-{job_id}", background=False, staged_by="t:1"
    )
    await store.add_requests(
        job_id,
        [NewRequest(x.line, f"c-{x.line}", json.dumps({"model": x.request_model, "input": "q"})) for x in lines],
    )
    await store.publish_job(job_id, len(lines))
    ids = ids_by_line(db, job_id)
    run = [x for x in lines if x.state not in (S.CANCELLED, S.QUEUED)]
    claimed = await store.claim(OWNER, [job_id], len(run), 60)
    assert [c.line_no for c in claimed] == [x.line for x in run]
    if any(x.line == 2 for x in run):
        # line 2 meets a 429 first and is claimed again: 2 attempts, 1 rate limited
        requeue = Outcome(
            ids[2],
            S.QUEUED,
            http_status=429,
            error_code="rate_limit_exceeded",
            error_message="slow down",
            next_attempt_at=0.0,
            rate_limited=True,
        )
        assert await store.apply(OWNER, [requeue]) == []
        [again] = await store.claim(OWNER, [job_id], 1, 60)
        assert again.line_no == 2 and again.attempts == 2
    outcomes = [
        Outcome(
            ids[x.line],
            x.state,
            http_status=x.http_status,
            api_request_id=f"req_{x.line}",
            response_body=response_body(x),
            error_code=x.code,
            error_message=x.message,
            usage=x.usage,
        )
        for x in run
    ]
    assert await store.apply(OWNER, outcomes) == []
    for x in lines:
        if x.state is S.CANCELLED:
            await store.set_state(ids[x.line], S.CANCELLED)
    # The clock, by hand: started at T0 + line, last POST then (line 2: 10 s later, after its 429),
    # finished `latency` seconds after the last POST.
    with closing(sqlite3.connect(db)) as conn:
        for x in lines:
            if x.latency is None:
                continue
            submitted = T0 + x.line + (10 if x.line == 2 else 0)
            conn.execute(
                "UPDATE requests SET started_at = ?, submitted_at = ?, finished_at = ? WHERE id = ?",
                (T0 + x.line, submitted, submitted + x.latency, ids[x.line]),
            )
        conn.commit()


# Expected figures, computed by hand from LINES.
#   gpt-4.1-mini-2025-04-14 (lines 1-3): input 4500, cached 1200, output 900, total 5400
#     at 0.40 / 0.10 / 1.60 per 1M: (3300*0.40 + 1200*0.10 + 900*1.60) / 1e6 = (1320 + 120 + 1440) / 1e6
#   gpt-4.1-mini (line 5: its response names no model, so the request's model is used): input 800, output 200
#     (800*0.40 + 200*1.60) / 1e6 = 640 / 1e6
#   gpt-5-mini-2025-08-07 (line 4): input 500, output 1000 (400 of them reasoning: not billed on top)
#     at 0.25 / 2.00: (500*0.25 + 1000*2.00) / 1e6 = 2125 / 1e6
#   my-custom-model (line 6): unpriced, input 3000, output 700, total 3700
COST_MINI_DATED = 2880 / 1e6
COST_MINI = 640 / 1e6
COST_G5M = 2125 / 1e6
COST_TOTAL = COST_MINI_DATED + COST_MINI + COST_G5M  # 0.005645
# latencies sorted: 0.25 0.5 1.0 1.5 2.0 3.0 4.0 6.0 7.0 9.5 12.0 (n = 11, nearest rank)
#   p50: rank ceil(5.5) = 6 -> 3.0; p95: rank ceil(10.45) = 11 -> 12.0; p99: rank 11 -> 12.0
#   mean 46.75 / 11 = 4.25
# elapsed: first start T0 + 1, last finish line 9 at T0 + 9 + 9.5 -> 17.5 s; 13 finished requests


@pytest.mark.anyio
async def test_every_figure_of_the_report(store: Store, db: Path) -> None:
    await build_job(store, db, LINES)
    r = await build_report(store, JOB, load_prices())

    assert (r.job_id, r.name, r.source, r.status, r.total) == (JOB, "nightly", "in.jsonl", "completed", 13)
    assert r.counts == {"queued": 0, "in_progress": 0, "completed": 5, "incomplete": 1, "failed": 5, "cancelled": 2}
    assert r.usage == UsageCounts(8800, 1200, 2800, 400, 11600)

    by_model = {m.model: m for m in r.models}
    assert [m.model for m in r.models] == [MINI_DATED, CUSTOM, G5M_DATED, MINI]  # most tokens first
    assert by_model[MINI_DATED].requests == 3
    assert by_model[MINI_DATED].usage == UsageCounts(4500, 1200, 900, 0, 5400)
    assert by_model[MINI_DATED].price_key == MINI
    assert by_model[MINI_DATED].usd == pytest.approx(COST_MINI_DATED)
    assert by_model[MINI].usage == UsageCounts(800, 0, 200, 0, 1000)
    assert by_model[MINI].usd == pytest.approx(COST_MINI)
    assert by_model[G5M_DATED].price_key == G5M
    assert by_model[G5M_DATED].usage == UsageCounts(500, 0, 1000, 400, 1500)
    assert by_model[G5M_DATED].usd == pytest.approx(COST_G5M)
    assert by_model[CUSTOM].usd is None and by_model[CUSTOM].price_key is None
    assert by_model[CUSTOM].usage == UsageCounts(3000, 0, 700, 0, 3700)
    assert r.cost_usd == pytest.approx(COST_TOTAL)
    assert r.cost_complete is False

    assert r.latency.count == 11
    assert r.latency.percentiles == {0.5: 3.0, 0.95: 12.0, 0.99: 12.0}
    assert r.latency.mean == pytest.approx(4.25)
    assert r.latency.max == 12.0

    assert (r.attempts, r.retries, r.rate_limited) == (12, 1, 1)

    assert [(g.code, g.count) for g in r.errors] == [("invalid_value", 4), ("timeout", 1)]
    assert [(x.custom_id, x.http_status, x.message) for x in r.errors[0].examples] == [
        ("c-7", 400, "bad temperature"),
        ("c-8", 400, "bad top_p"),
        ("c-10", 400, "bad input"),
    ]
    assert [(x.custom_id, x.http_status, x.message) for x in r.errors[1].examples] == [
        ("c-9", None, "gave up after 1 attempt(s)")
    ]

    assert [(s.custom_id, s.seconds, s.attempts) for s in r.slowest] == [
        ("c-4", 12.0, 1),
        ("c-9", 9.5, 1),
        ("c-7", 7.0, 1),
        ("c-11", 6.0, 1),
        ("c-8", 4.0, 1),
    ]
    assert r.elapsed_seconds == pytest.approx(17.5)
    assert r.throughput_rps == pytest.approx(13 / 17.5)
    assert r.prices_taken == load_prices().taken


@pytest.mark.anyio
async def test_json_form(store: Store, db: Path) -> None:
    await build_job(store, db, LINES)
    d = (await build_report(store, JOB, load_prices())).to_json()
    json.dumps(d)  # plain JSON types only
    cost = d["cost"]
    assert cost["usd"] == pytest.approx(COST_TOTAL, abs=1e-6)
    assert cost["complete"] is False
    assert "lower bound" in cost["note"] and CUSTOM in cost["note"]
    assert [m["model"] for m in cost["by_model"]] == [MINI_DATED, G5M_DATED, MINI]
    assert cost["unpriced"] == [
        {
            "model": CUSTOM,
            "requests": 1,
            "usage": {
                "input_tokens": 3000,
                "cached_tokens": 0,
                "output_tokens": 700,
                "reasoning_tokens": 0,
                "total_tokens": 3700,
            },
        }
    ]
    assert d["latency_seconds"] == {"count": 11, "p50": 3.0, "p95": 12.0, "p99": 12.0, "mean": 4.25, "max": 12.0}
    assert d["usage"]["total_tokens"] == 11600
    assert d["errors"][0]["examples"][0] == {
        "custom_id": "c-7",
        "line_no": 7,
        "http_status": 400,
        "message": "bad temperature",
    }
    assert d["slowest"][0] == {"custom_id": "c-4", "line_no": 4, "seconds": 12.0, "attempts": 1}
    assert (d["attempts"], d["retries"], d["rate_limited"]) == (12, 1, 1)


@pytest.mark.anyio
async def test_text_form_fits_one_screen_and_says_lower_bound(store: Store, db: Path) -> None:
    await build_job(store, db, LINES)
    text = (await build_report(store, JOB, load_prices())).render_text()
    lines = text.splitlines()
    assert len(lines) <= 25
    assert lines[0].startswith(f"job {JOB} (nightly) · 13 requests · done, 5 failed")
    assert "cost: at least $0.0056 " in text
    assert f"{CUSTOM}: 1 req · in 3,000 (cached 0) · out 700 · no price" in text
    assert "lower bound" in text
    assert "p50 3.00 s · p95 12.00 s · p99 12.00 s" in text
    assert "attempts 12 (1 retries) · rate limited (429) 1" in text
    assert "invalid_value ×4: bad temperature (e.g. c-7 [400], c-8 [400], c-10 [400])" in text
    assert "timeout ×1" in text
    assert "slowest: c-4 12.00 s" in text
    assert "elapsed 17.5 s" in text


@pytest.mark.anyio
async def test_all_priced_gives_a_complete_total(store: Store, db: Path) -> None:
    await build_job(store, db, LINES)
    base = load_prices()
    prices = PriceTable(
        taken=base.taken, models={**base.models, CUSTOM: ModelPrice(input=1.0, cached_input=0.5, output=2.0)}
    )
    r = await build_report(store, JOB, prices)
    assert r.cost_complete and r.cost_note() is None
    assert r.cost_usd == pytest.approx(COST_TOTAL + (3000 * 1.0 + 700 * 2.0) / 1e6)
    assert r.to_json()["cost"]["unpriced"] == []
    assert "at least" not in r.render_text()


@pytest.mark.anyio
async def test_nothing_priced_is_never_zero_dollars(store: Store, db: Path) -> None:
    await build_job(store, db, LINES)
    r = await build_report(store, JOB, PriceTable())
    assert all(m.usd is None for m in r.models)
    assert r.cost_complete is False
    assert r.to_json()["cost"]["by_model"] == []
    assert "cost: unknown: none of its models has a price (prices of" in r.render_text()
    assert "$0.0000" not in r.render_text()


@pytest.mark.anyio
async def test_custom_quantiles(store: Store, db: Path) -> None:
    await build_job(store, db, LINES)
    lat = await latency(store, JOB, (0.1, 0.9, 1.0))
    # n = 11: 0.1 -> rank ceil(1.1) = 2 -> 0.5; 0.9 -> rank ceil(9.9) = 10 -> 9.5; 1.0 -> rank 11 -> 12.0
    assert lat.percentiles == {0.1: 0.5, 0.9: 9.5, 1.0: 12.0}


@pytest.mark.anyio
async def test_running_job_and_empty_figures(store: Store, db: Path) -> None:
    lines = [Line(1, S.COMPLETED, MINI, MINI_DATED, UsageCounts(10, 0, 5, 0, 15), latency=1.0), Line(2, S.QUEUED, MINI)]
    await build_job(store, db, lines, job_id="job_run")
    before = time.time()
    r = await build_report(store, "job_run", load_prices())
    assert r.status == "in_progress"
    assert r.counts["queued"] == 1
    assert r.elapsed_seconds is not None and r.elapsed_seconds >= before - (T0 + 1)  # a running job counts to now
    assert r.errors == []
    assert r.cost_complete

    await store.begin_job(job_id="job_new", name="n", source="s", fingerprint="f2", background=False, staged_by="t:1")
    await store.add_requests("job_new", [NewRequest(1, "a", '{"model": "x", "input": "q"}')])
    await store.publish_job("job_new", 1)
    fresh = await build_report(store, "job_new", load_prices())
    assert fresh.status == "queued"
    assert fresh.latency.count == 0 and fresh.latency.percentiles == {} and fresh.latency.mean is None
    assert fresh.models == [] and fresh.slowest == [] and fresh.elapsed_seconds is None
    assert fresh.throughput_rps is None
    assert len(fresh.render_text().splitlines()) <= 25
    json.dumps(fresh.to_json())


@pytest.mark.anyio
async def test_unknown_job(store: Store) -> None:
    with pytest.raises(JobNotFound):
        await build_report(store, "job_nope", load_prices())
