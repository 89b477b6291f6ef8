"""A background response whose GET always answers 5xx: it was polled every 30 s for ever and the run never
ended. Now its GETs are retried like a create (--max-attempts in a row), then the request fails with
`poll_failed` and keeps its response id: `runner retry` polls it again and never pays for a second create.

Against tests/servers/misbehaving.py, through the CLI, on a real SQLite store.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cli, read_jsonl
from tests.e2e.test_untrusted_replies import KEY, Misbehaving, job_file, rows, server

pytestmark = pytest.mark.e2e

__all__ = ["server"]  # the fixture, shared with the untrusted-replies tests

LINES = ["bg_get_503", "bg_get_503_twice"]


def test_a_response_that_cannot_be_polled_fails_named_and_retry_polls_it_without_a_second_create(
    cli: Cli, server: Misbehaving, tmp_path: Path
) -> None:
    job = cli.submit(job_file(tmp_path / "in.jsonl", LINES, background=tuple(LINES)))
    env = {"OPENAI_API_KEY": KEY}
    # --max-attempts 2: two failed GETs in a row end a request (the default is 6, as for a create).
    run = ("run", job, "--base-url", server.base_url, "--max-attempts", "2", "--quiet")
    r = cli(*run, timeout=60, extra_env=env)
    assert r.returncode == 1, r.stderr  # it ends, some failed
    assert "failed 2" in r.stderr, r.stderr
    got = rows(cli.db)
    for cid in LINES:
        assert got[cid]["state"] == "failed" and got[cid]["error_code"] == "poll_failed", got[cid]
        assert got[cid]["response_id"], got[cid]  # kept: the response exists and may be paid for
        assert "`runner retry` polls it again" in got[cid]["error_message"]
    assert server.stats()["polls"] == {"bg_get_503": 2, "bg_get_503_twice": 2}
    e = cli("export", job, "-o", str(tmp_path / "out.jsonl"), "--errors", str(tmp_path / "err.jsonl"))
    assert e.returncode == 0, e.stderr
    assert sorted(x["error"]["code"] for x in read_jsonl(tmp_path / "err.jsonl")) == ["poll_failed", "poll_failed"]

    t = cli("retry", job)
    assert t.returncode == 0, t.stderr
    assert f"2 failed requests queued again; `runner run {job}` finishes them" in t.stderr, t.stderr
    assert cli.status(job)["counts"]["in_progress"] == 2  # to be polled, not queued to be sent
    r = cli(*run, timeout=60, extra_env=env)
    assert r.returncode == 1, r.stderr
    got = rows(cli.db)
    assert got["bg_get_503_twice"]["state"] == "completed", got["bg_get_503_twice"]  # its third GET answered
    assert got["bg_get_503"]["state"] == "failed" and got["bg_get_503"]["error_code"] == "poll_failed"
    stats = server.stats()
    assert stats["posts"] == {"bg_get_503": 1, "bg_get_503_twice": 1}, stats  # never created twice
    assert stats["polls"] == {"bg_get_503": 4, "bg_get_503_twice": 3}, stats
