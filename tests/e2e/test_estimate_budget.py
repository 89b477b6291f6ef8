"""`runner estimate` then `runner run --max-cost` against the mock server: the estimate matches the bill, the
budget stops the run with exit 4, and a bigger one finishes the job with no request sent twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, run_args

pytestmark = pytest.mark.e2e

N = 30


def _write(path: Path) -> Path:
    with path.open("w") as f:
        for i in range(1, N + 1):
            body = {
                "model": "gpt-4.1-mini",
                "instructions": "You grade short answers. Reply with a score from 1 to 5 and one sentence.",
                "input": [{"role": "user", "content": f"Question {i}: why is the sky blue? " + "Because of air. " * i}],
                "max_output_tokens": 100,
            }
            f.write(json.dumps({"custom_id": f"q-{i}", "method": "POST", "url": "/v1/responses", "body": body}) + "\n")
    return path


def test_estimate_then_a_budget_stop_then_the_rest(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory()
    src = _write(tmp_path / "in.jsonl")
    r = cli("estimate", str(src), "--json")
    assert r.returncode == 0, r.stderr
    est = json.loads(r.stdout)
    assert not cli.db.exists()  # an estimate writes nothing
    assert est["lines"] == N and est["cost_usd"]["complete"] is True
    job = cli.submit(src)

    half = est["cost_usd"]["high"] / 2
    r = cli("run", job, "--max-cost", f"{half:.6f}", *run_args(mock))
    assert r.returncode == 4, r.stderr
    stop = r.stderr.strip().splitlines()[-1]
    assert stop.startswith("stopped at the budget: spent $") and f" of ${half:.4f}" in stop
    sent = mock.stats()["creates"]
    st = cli.status(job)
    assert 0 < sent < N and st["counts"]["completed"] == sent and st["counts"]["queued"] == N - sent
    assert f"{N - sent} requests left queued" in stop

    r = cli("run", job, "--max-cost", "1", *run_args(mock))
    assert r.returncode == 0, r.stderr
    stats = mock.stats()
    assert stats["creates"] == N  # the second run sent only what the first left queued
    assert abs(est["input_tokens"] - stats["usage"]["input_tokens"]) <= 0.10 * stats["usage"]["input_tokens"]


def test_the_estimate_says_what_the_prompt_cache_may_serve_and_the_bill_agrees(
    cli: Cli, mock_factory: Any, tmp_path: Path
) -> None:
    # Two templates behind long instructions of their own (~1,760 tokens), four items each, shuffled, and two
    # short lines no cache can serve. Each template's first line pays in full; its other three may read the
    # shared start (13 whole blocks of 128 tokens) from the cache.
    src = tmp_path / "grades.jsonl"
    rules = {t: f"Template {t}: grade by these rules. " + f"rule {t} " * 1000 for t in "AB"}
    lines = [("A", i) for i in range(4)] + [("B", i) for i in range(4)]
    with src.open("w") as f:
        for n, (t, i) in enumerate([lines[k] for k in (0, 4, 1, 5, 2, 6, 3, 7)] + [("-", 0), ("-", 1)]):
            body = {"model": "gpt-4.1-mini", "input": f"item {i}: an answer to grade", "max_output_tokens": 50}
            if t != "-":
                body["instructions"] = rules[t]
            f.write(json.dumps({"custom_id": f"g-{n}", "method": "POST", "url": "/v1/responses", "body": body}) + "\n")
    r = cli("estimate", str(src), "--json")
    assert r.returncode == 0, r.stderr
    est = json.loads(r.stdout)
    assert est["cached_tokens"] == 2 * 3 * 13 * 128 == 9984
    m = est["models"][0]
    # The low end prices those tokens at the cached rate ($0.10 instead of $0.40 per 1M), the high end in full.
    full = (m["input_tokens"] * 0.40 + 10 * 50 * 1.60) / 1e6
    assert m["cost_usd"]["high"] == pytest.approx(full, abs=1e-6)
    assert m["cost_usd"]["low"] == pytest.approx((m["input_tokens"] - 9984 * 0.75) * 0.40 / 1e6, abs=1e-6)
    text = cli("estimate", str(src)).stdout
    assert "(9,984 may come from the prompt cache)" in text and "a cache hit is likely, never promised" in text

    # The mock's cache (as the provider's: 4 characters a token, 128-token blocks) bills what was foreseen.
    mock = mock_factory()
    job = cli.submit(src)
    assert cli("run", job, *run_args(mock, "--concurrency", "1", "--quiet")).returncode == 0
    assert cli.status(job)["usage"]["cached_tokens"] == 9984
