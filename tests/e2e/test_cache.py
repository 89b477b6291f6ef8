"""Cache scheduling through the CLI: the mock's cached-token share with and without it.

The issue's job is 20 templates x 200 items, shuffled in the file; this test runs 20 x 40 (800 lines, at
zero latency) to stay fast: the share is a ratio, and the 3x holds at this size too (`make bench` runs the
full 4,000). The mock's cache machines hold 64 blocks of 128 tokens each (about five of these templates):
a provider's cache serves other traffic too, and with room for everything the order would not matter.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, run_args

pytestmark = pytest.mark.e2e

TEMPLATES, ITEMS = 20, 40
MOCK_CACHE = ("--cache-machines", "8", "--cache-blocks", "64")
# One preamble of ~300 tokens for all (so without keys the provider routes them all to one machine), then
# ~1,450 tokens of each template's own rules, then the item.
PREAMBLE = "You are a careful grader for the evaluation team. " * 24


def template(t: int) -> str:
    return PREAMBLE + f"Task {t}: " + " ".join(f"rule-{t}-{k} applies;" for k in range(300))


def write_job(path: Path, seed: int = 7) -> Path:
    lines = [(t, i) for t in range(TEMPLATES) for i in range(ITEMS)]
    random.Random(seed).shuffle(lines)
    with path.open("w") as f:
        for t, i in lines:
            body = {"model": "gpt-4.1-mini", "instructions": template(t), "input": f"Item {i}: grade answer x{i}."}
            f.write(json.dumps({"custom_id": f"t{t}-i{i}", "method": "POST", "url": "/v1/responses", "body": body}))
            f.write("\n")
    return path


def cached_share(cli: Cli, mock: Any, job: str) -> tuple[float, dict[str, Any]]:
    r = cli("run", job, *run_args(mock, "--concurrency", "64"), "--quiet")
    assert r.returncode == 0, r.stderr
    stats = mock.stats()
    usage = stats["usage"]
    return usage["cached_tokens"] / usage["input_tokens"], stats


def test_cache_scheduling_triples_the_cached_share(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    src = write_job(tmp_path / "grades.jsonl")
    n = TEMPLATES * ITEMS
    plain = cli.submit(src, "--no-cache-keys")
    grouped = cli.submit(src)
    assert grouped != plain  # --no-cache-keys is part of what makes the job

    without, stats = cached_share(cli, mock_factory(*MOCK_CACHE), plain)
    assert stats["creates"] == n and stats["cache"]["keyed"] == 0  # --no-cache-keys sends no key
    with_keys, stats = cached_share(cli, mock_factory(*MOCK_CACHE), grouped)
    assert stats["creates"] == n and stats["cache"]["keyed"] == n  # one per line: every prompt is long
    assert with_keys >= 3 * without, (with_keys, without)
    assert with_keys > 0.85  # each template misses about once

    # The report says what share of the input was read from the cache.
    r = cli("report", grouped)
    assert r.returncode == 0, r.stderr
    cached = stats["usage"]["cached_tokens"]
    assert f"cached {cached:,} ({round(100 * with_keys)} % of input from the prompt cache)" in r.stdout

    # Export stays in file order, whatever order the lines were sent in.
    r = cli("export", grouped)
    assert [json.loads(x)["custom_id"] for x in r.stdout.splitlines()] == [
        json.loads(x)["custom_id"] for x in src.read_text().splitlines()
    ]
