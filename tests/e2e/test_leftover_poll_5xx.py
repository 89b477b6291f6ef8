"""A background response whose GET always answers 5xx: it was polled every 30 s for ever and the run never
ended. Now its GETs are retried like a create (--max-attempts in a row, over at least --timeout), then the
request fails with `poll_failed` and keeps its response id: `runner retry` polls it again and never pays for a
second create.

Against tests/servers/misbehaving.py, through the CLI, on a real SQLite store.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cli, read_jsonl
from tests.e2e.test_untrusted_replies import KEY, Misbehaving, job_file, server

pytestmark = pytest.mark.e2e

__all__ = ["server"]  # the fixture, shared with the untrusted-replies tests

LINES = ["bg_get_503", "bg_get_503_twice"]


def test_a_response_that_cannot_be_polled_fails_named_and_retry_polls_it_without_a_second_create(
    cli: Cli, server: Misbehaving, tmp_path: Path, store_db: str
) -> None:
    if not store_db.endswith(".db"):
        cli.url = store_db  # PostgreSQL: `runner retry` is one UPDATE per backend
    job = cli.submit(job_file(tmp_path / "in.jsonl", LINES, background=tuple(LINES)))
    env = {"OPENAI_API_KEY": KEY}
    # --max-attempts 2 and --timeout 1: two failed GETs in a row, over at least a second, end a request (the
    # defaults are 6, as for a create, and 10 minutes: a shorter GET outage is waited out).
    run = ("run", job, "--base-url", server.base_url, "--max-attempts", "2", "--timeout", "1", "--quiet")
    r = cli(*run, timeout=60, extra_env=env)
    assert r.returncode == 1, r.stderr  # it ends, some failed
    assert "failed 2" in r.stderr, r.stderr
    assert server.stats()["polls"] == {"bg_get_503": 2, "bg_get_503_twice": 2}
    e = cli("export", job, "-o", str(tmp_path / "out.jsonl"), "--errors", str(tmp_path / "err.jsonl"))
    assert e.returncode == 0, e.stderr
    errors = {x["custom_id"]: x["error"] for x in read_jsonl(tmp_path / "err.jsonl")}
    assert sorted(errors) == LINES and {x["code"] for x in errors.values()} == {"poll_failed"}, errors
    assert all("`runner retry` polls it again" in x["message"] for x in errors.values()), errors

    t = cli("retry", job)
    assert t.returncode == 0, t.stderr
    assert f"2 failed requests queued again; `runner run {job}` finishes them" in t.stderr, t.stderr
    assert cli.status(job)["counts"]["in_progress"] == 2  # to be polled, not queued to be sent
    r = cli(*run, timeout=60, extra_env=env)
    assert r.returncode == 1, r.stderr
    counts = cli.status(job)["counts"]
    assert (counts["completed"], counts["failed"]) == (1, 1), counts  # bg_get_503_twice: its third GET answered
    stats = server.stats()
    assert stats["posts"] == {"bg_get_503": 1, "bg_get_503_twice": 1}, stats  # never created twice
    assert stats["polls"] == {"bg_get_503": 4, "bg_get_503_twice": 3}, stats
