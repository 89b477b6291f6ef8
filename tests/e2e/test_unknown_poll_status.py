"""A polled background response in a status the runner does not know (`pending`) is not final: the README polls
"until it is completed, incomplete, failed or cancelled". Before, the first such poll failed the line for good
(`unknown_status`), though the response was still running and paid for. Now it is polled on, and gives up only
with the patience of a GET that keeps failing (--max-attempts polls in a row, over --timeout).

Against tests/servers/misbehaving.py, through the CLI.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cli, read_jsonl
from tests.e2e.test_untrusted_replies import KEY, Misbehaving, job_file, server

pytestmark = pytest.mark.e2e

__all__ = ["server"]  # the fixture, shared with the untrusted-replies tests

LINES = ["bg_pending", "bg_pending_twice"]


def test_an_unknown_status_is_polled_on_and_given_up_only_after_the_patience(
    cli: Cli, server: Misbehaving, tmp_path: Path
) -> None:
    job = cli.submit(job_file(tmp_path / "in.jsonl", LINES, background=tuple(LINES)))
    run = ("run", job, "--base-url", server.base_url, "--max-attempts", "3", "--timeout", "1", "--quiet")
    r = cli(*run, timeout=60, extra_env={"OPENAI_API_KEY": KEY})
    assert r.returncode == 1, r.stderr  # bg_pending never ends
    counts = cli.status(job)["counts"]
    assert (counts["completed"], counts["failed"]) == (1, 1), counts  # bg_pending_twice: completed at its third GET
    stats = server.stats()
    assert stats["posts"] == {"bg_pending": 1, "bg_pending_twice": 1}, stats
    assert stats["polls"]["bg_pending_twice"] == 3, stats
    assert stats["polls"]["bg_pending"] >= 3, stats  # polled on, not failed at its first reply
    e = cli("export", job, "-o", str(tmp_path / "out.jsonl"), "--errors", str(tmp_path / "err.jsonl"))
    assert e.returncode == 0, e.stderr
    errors = {x["custom_id"]: x["error"] for x in read_jsonl(tmp_path / "err.jsonl")}
    assert list(errors) == ["bg_pending"] and errors["bg_pending"]["code"] == "unknown_status", errors
