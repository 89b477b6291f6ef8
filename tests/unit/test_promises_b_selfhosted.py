"""README "Self-hosted servers": a server that leaves usage out counts 0 tokens, not an error, and the report still
lists the model as unpriced (never a complete $0) unless a --prices file prices it."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx
import pytest

from runner import app
from runner.config import Settings


def no_usage(request: httpx.Request) -> httpx.Response:
    """A vLLM-like server that answers without a `usage` block."""
    body = json.loads(request.content)
    return httpx.Response(
        200,
        json={
            "id": f"resp_{body['input']}",
            "object": "response",
            "status": "completed",
            "model": body["model"],
            "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hi"}]}],
        },
    )


@pytest.mark.parametrize("priced", [False, True])
def test_answers_without_usage_leave_the_model_unpriced_not_free(priced: bool, tmp_path: Path) -> None:
    db = str(tmp_path / "r.db")
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"model": "Qwen/Qwen3-8B", "input": f"q{i}"}) + "\n" for i in range(3)))
    job = anyio.run(lambda: app.submit(str(src), db=db)).job_id
    s = Settings(db=db, base_url="http://127.0.0.1:8000/v1")
    outcome = anyio.run(lambda: app.run([job], s, transport=httpx.MockTransport(no_usage)))
    assert outcome.failed == 0
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."Qwen/Qwen3-8B"]\ninput = 0.1\noutput = 0.2\n')

    report = anyio.run(lambda: app.report(job, db=db, prices=prices if priced else None)).to_json()

    assert report["counts"]["completed"] == 3 and report["usage"]["total_tokens"] == 0
    cost = report["cost"]
    # Before: no model at all, "cost: $0.0000" and complete, for a model the table does not know.
    listed = [(m["model"], m["requests"]) for m in cost["by_model" if priced else "unpriced"]]
    assert listed == [("Qwen/Qwen3-8B", 3)]
    assert cost["complete"] is priced
