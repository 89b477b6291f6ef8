"""The README's Python API: the scoring example ("Results as Python objects") run as written, with this
interpreter, on a store the CLI filled from the mock server (the first example runs in test_docs.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner import app
from tests.conftest import ROOT, Cli, run_args

pytestmark = pytest.mark.e2e


def scoring_example() -> str:
    """The second ```python block of the README's `## Python API` section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Python API\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section is not None
    blocks = re.findall(r"^```python\n(.*?)^```$", section.group(1), re.M | re.S)
    assert len(blocks) >= 2, "the README's Python API section lost its scoring example"
    code: str = blocks[1]
    assert 'db="runner.db"' in code and "q-0001" in code
    return code


def test_the_scoring_example_runs_as_written(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    # An eval set as the example expects: the expected answer in metadata.gold. The mock answers
    # "echo: <input>", so lines 1 and 2 are right, line 3 is wrong, and line 4 fails (a 400 every time).
    lines = [("What is 2+2?", "2+2"), ("Name a colour.", "colour"), ("Say yes.", "no"), ("Fail.", "x")]
    src = tmp_path / "eval.jsonl"
    with src.open("w") as f:
        for i, (question, gold) in enumerate(lines, start=1):
            metadata = {"gold": gold} | ({"mock_error": "invalid_prompt"} if i == 4 else {})
            body = {"model": "gpt-4.1-mini", "input": question, "metadata": metadata}
            f.write(json.dumps({"custom_id": f"q-{i:04d}", "method": "POST", "url": "/v1/responses", "body": body}))
            f.write("\n")
    job = cli.submit(src)
    (tmp_path / "score.py").write_text(scoring_example())

    # Before the run: every line comes, queued, with no answer (the README: lines not finished yet come too).
    async def rows() -> list[app.ResultRow]:
        return [row async for row in app.results(job, db=str(cli.db))]

    before = anyio.run(rows)
    assert [(r.custom_id, r.status, r.output_text, r.error) for r in before] == [
        (f"q-{i:04d}", "queued", None, None) for i in range(1, 5)
    ]
    assert [r.metadata["gold"] for r in before] == [gold for _, gold in lines]

    r = cli("run", job, *run_args(mock_factory(), "--quiet"))
    assert r.returncode == 1, r.stderr
    r = subprocess.run(
        [sys.executable, "score.py"], capture_output=True, text=True, cwd=tmp_path, env=cli.environ(), timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "4 q-0004 invalid_prompt: Scripted failure (invalid_prompt).",
        "2/4 right",
        "completed [(1, 200, None)]",
    ]
