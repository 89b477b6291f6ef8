"""A reply whose cached tokens exceed its input tokens is clamped on its own: before, prices were clamped over a
model's sums, and one reply's excess took money off another's input ($1.70 for two requests where one alone cost
$2.00)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Cli
from tests.e2e.test_untrusted_replies import Misbehaving, server

pytestmark = pytest.mark.e2e
__all__ = ["server"]  # the fixture, shared with the untrusted-replies tests


def test_one_replys_excess_cached_tokens_do_not_lower_anothers_cost(cli: Cli, server: Misbehaving) -> None:
    path = cli.db.parent / "in.jsonl"
    lines = []
    for s in ("priced_cached_over", "priced_million"):
        body = {"model": "gpt-4.1-mini", "input": f"scenario:{s}"}
        lines.append(json.dumps({"custom_id": s, "method": "POST", "url": "/v1/responses", "body": body}) + "\n")
    path.write_text("".join(lines))
    job = cli.submit(path)
    r = cli("run", job, "--base-url", server.base_url, "--quiet")
    assert r.returncode == 0, r.stderr

    r = cli("report", job, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    cost = report["cost"]["usd"]
    # $2.00 for the million in and out, and a few millionths of a dollar for the other (its 5 input tokens cached)
    assert cost == pytest.approx(2.0, abs=0.0001)
    # The answer is kept, its cached tokens no more than its input.
    r = cli("export", job, "--format", "jsonl-flat")
    rows = {x["custom_id"]: x for x in map(json.loads, r.stdout.splitlines())}
    assert rows["priced_cached_over"]["status"] == "completed"
    assert rows["priced_cached_over"]["cached_tokens"] == 5
