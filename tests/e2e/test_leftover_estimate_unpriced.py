"""`runner estimate` on models the price table does not know: their cost is "price unknown", never $0, and the
total says it leaves them out (a file of unpriced models only read `total: $0.0000`). And `--max-cost` never
sends a line it cannot price, as the README says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import Cli


def _file(path: Path, bodies: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(b) + "\n" for b in bodies))
    return path


def test_unpriced_models_are_price_unknown_never_zero(cli: Cli, tmp_path: Path) -> None:
    only = _file(tmp_path / "local.jsonl", [{"model": "my-local-llm", "input": "hello", "max_output_tokens": 10}])
    r = cli("estimate", str(only))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].startswith("  my-local-llm: 1 lines") and lines[1].endswith("· price unknown"), lines
    assert lines[2].startswith("  total: price unknown: no model here is in the price table (my-local-llm:"), lines
    assert "$" not in r.stdout, r.stdout
    j = json.loads(cli("estimate", str(only), "--json").stdout)
    assert j["cost_usd"] == {"low": None, "high": None, "complete": False} and j["unpriced"] == ["my-local-llm"]

    mixed = _file(
        tmp_path / "mixed.jsonl",
        [
            {"model": "gpt-4.1-mini", "input": "hello " * 400, "max_output_tokens": 100},
            {"model": "my-local-llm", "input": "hello", "max_output_tokens": 10},
        ],
    )
    r = cli("estimate", str(mixed))
    assert r.returncode == 0, r.stderr
    total = r.stdout.splitlines()[-1]
    assert total.startswith("  total: $0.00024-$0.00040 for the priced models, leaving out 1 unpriced model"), total
    assert "my-local-llm: add it with --prices FILE" in total, total


def test_max_cost_sends_no_unpriced_line(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory()
    src = _file(
        tmp_path / "in.jsonl",
        [
            {"custom_id": f"c{i}", "method": "POST", "url": "/v1/responses", "body": b}
            for i, b in enumerate(
                [
                    {"model": "gpt-4.1-mini", "input": "one", "max_output_tokens": 10},
                    {"model": "my-local-llm", "input": "two", "max_output_tokens": 10},
                ]
            )
        ],
    )
    job = cli.submit(src)
    r = cli("run", job, "--base-url", mock.base_url, "--max-cost", "1", "--concurrency", "1", "--quiet")
    assert r.returncode == 4, r.stderr
    assert "cannot keep to --max-cost: no price for model my-local-llm (add it with --prices FILE)" in r.stderr
    assert cli.status(job)["counts"]["queued"] == 1
    e = cli("export", job)
    by_id = {x["custom_id"]: x for x in map(json.loads, e.stdout.splitlines())}
    assert by_id["c0"]["response"]["status_code"] == 200 and "c1" not in by_id, by_id
