"""A GET outage over a background run fails every response it holds (`poll_failed`). Each used to get a
warning line of its own (40 lines for 40 requests, 10,000 for a nightly job) above the run's summary that
counts them anyway; now the first three are said in full, then how many there were.

Against tests/servers/misbehaving.py, through the CLI, on a real SQLite store.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.e2e.test_untrusted_replies import KEY, Misbehaving, server

pytestmark = pytest.mark.e2e

__all__ = ["server"]


def test_twelve_responses_that_cannot_be_polled_are_said_three_times_then_counted(
    cli: Cli, server: Misbehaving, tmp_path: Path
) -> None:
    src = tmp_path / "in.jsonl"
    body = '{"model": "gpt-test", "input": "scenario:bg_get_503", "background": true, "store": true}'
    src.write_text(
        "".join(
            f'{{"custom_id": "x{i}", "method": "POST", "url": "/v1/responses", "body": {body}}}\n' for i in range(12)
        )
    )
    job = cli.submit(src)
    run = ("run", job, "--base-url", server.base_url, "--max-attempts", "2", "--timeout", "1", "--quiet")
    r = cli(*run, timeout=60, extra_env={"OPENAI_API_KEY": KEY})
    assert r.returncode == 1, r.stderr  # it ends, every request failed
    lines = r.stderr.splitlines()
    full = [x for x in lines if "GET /responses/" in x and "failed 2 times in a row" in x]
    assert len(full) == 3, r.stderr
    assert sum("more responses whose GETs kept failing (poll_failed): not said one by one" in x for x in lines) == 1
    assert sum("12 responses whose GETs kept failing (poll_failed) in all this run" in x for x in lines) == 1, r.stderr
    assert cli.status(job)["counts"]["failed"] == 12
    assert server.stats()["posts"] == {"bg_get_503": 12}  # each created once
