"""README "Estimating and capping cost" and "More cores: --processes", through the CLI against the mock server:
a budget meets a model the price table does not know, and several processes meet batches left open."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner import app
from tests.conftest import Cli, run_args

pytestmark = pytest.mark.e2e

KEY = {"OPENAI_API_KEY": "sk-test"}


def lines(path: Path, models: list[str]) -> Path:
    with path.open("w") as f:
        for i, model in enumerate(models):
            body = {"model": model, "input": f"Question {i}?", "max_output_tokens": 50}
            f.write(json.dumps({"custom_id": f"q-{i}", "method": "POST", "url": "/v1/responses", "body": body}) + "\n")
    return path


def submit(cli: Cli, path: Path) -> str:
    """In-process: a CLI start costs seconds on a loaded machine, and the submit is not what is tried here."""
    return anyio.run(lambda: app.submit(str(path), db=str(cli.db))).job_id


def states(cli: Cli) -> dict[str, int]:
    with closing(sqlite3.connect(cli.db)) as c:
        return dict(c.execute("select state, count(*) from requests group by state").fetchall())


def sent(stats: dict[str, Any], job: str) -> dict[str, int]:
    """How often each custom_id's line was created at the mock (its ledger key is `job/line number`)."""
    return {k.removeprefix(f"{job}/"): v for k, v in stats["creates_by_key"].items() if k.startswith(f"{job}/")}


def test_a_model_without_a_price_is_never_sent_under_a_budget(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory()
    job = submit(cli, lines(tmp_path / "in.jsonl", ["gpt-4.1-mini", "gpt-4.1-mini", "my-local-model", "gpt-4.1-mini"]))

    r = cli("run", job, "--max-cost", "1", *run_args(mock, "--quiet"), extra_env=KEY)

    assert r.returncode == 4, r.stderr
    assert "no price for model my-local-model (add it with --prices FILE)" in r.stderr
    assert "Traceback" not in r.stderr
    assert "3" not in sent(mock.stats(), job)  # line 3, the unpriced model, never went out
    assert states(cli)["queued"] == 4 - states(cli).get("completed", 0)  # nothing left in progress or failed

    # Priced by the user's table, the same budget finishes the job; nothing is sent twice.
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."my-local-model"]\ninput = 0.1\noutput = 0.2\n')
    r = cli("run", job, "--max-cost", "1", "--prices", str(prices), *run_args(mock, "--quiet"), extra_env=KEY)
    assert r.returncode == 0, r.stderr
    assert sent(mock.stats(), job) == {"1": 1, "2": 1, "3": 1, "4": 1}
    assert states(cli) == {"completed": 4}


def test_several_processes_are_refused_while_the_job_has_batches_open(
    cli: Cli, mock_factory: Any, tmp_path: Path
) -> None:
    mock = mock_factory("--batch-run-delay", "60")  # the batches stay open for the whole test
    job = submit(cli, lines(tmp_path / "in.jsonl", ["gpt-4.1-mini"] * 4))
    r = cli("run", job, "--lane", "batch", "--batch-max-lines", "2", "--detach", *run_args(mock), extra_env=KEY)
    assert r.returncode == 0, r.stderr
    assert mock.stats()["batch"]["creates"] == 2

    r = cli("run", job, "--processes", "2", *run_args(mock, "--quiet"), extra_env=KEY)

    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[-1] == (
        "runner: --processes 2: these jobs have batches open from a batch-lane run; collect them first with"
        " `runner run` in one process"
    )

    stats = mock.stats()
    assert stats["creates"] == 0  # nothing went out on the sync lane
    assert stats["batch"]["creates"] == 2 and stats["batch"]["cancels"] == 0
    assert states(cli) == {"in_progress": 4}  # still the open batches' to answer
