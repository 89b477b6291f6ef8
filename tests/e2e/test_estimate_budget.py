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
