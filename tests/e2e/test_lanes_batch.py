"""The batch lane end to end: the CLI as a subprocess against the mock's Files and Batches endpoints.

Scaled down from the issue's figures to fit the suite's time budget: 1,200 lines in files of at most 500
(three files, three batches) instead of 12,000 in files of 5,000.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Cli, MockServer, read_jsonl, write_jobfile

N = 1200
MAX_LINES = "500"


def _batch(mock: MockServer) -> dict[str, Any]:
    stats: dict[str, Any] = mock.stats()["batch"]
    return stats


def _comparable(line: dict[str, Any]) -> tuple[Any, ...]:
    """An exported line without what differs between two runs of the same request (ids, timestamps)."""
    resp = line["response"] or {}
    body = resp.get("body") or {}
    texts = [c.get("text") for item in body.get("output") or [] for c in item.get("content") or []]
    return (
        line["custom_id"],
        resp.get("status_code"),
        body.get("status"),
        body.get("model"),
        texts,
        body.get("usage"),
        line["error"],
    )


def test_batch_lane_matches_the_sync_lane_and_the_ledger(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    # The first create's reply is lost after the batch was made: the runner must find it, not create another.
    mock = mock_factory("--batch-run-delay", "0.3", "--batch-drop-create", "1")
    src = write_jobfile(tmp_path / "in.jsonl", N)
    batch_job = cli.submit(src)
    sync_job = cli.submit(src, "--new")

    r = cli("run", batch_job, "--lane", "batch", "--batch-max-lines", MAX_LINES, "--base-url", mock.base_url, "--quiet")
    assert r.returncode == 0, r.stderr
    ledger = _batch(mock)
    assert (ledger["uploads"], ledger["creates"], ledger["lines_uploaded"]) == (3, 3, N)
    assert ledger["max_uploads_of_a_line"] == 1
    assert sorted(ledger["batches"].values()) == ["completed"] * 3
    st = cli.status(batch_job)
    assert st["counts"]["completed"] == N and st["attempts"] == N and st["open_batches"] == []
    assert st["usage"] == mock.stats()["usage"]  # every token the mock billed is in the store, once

    r = cli("run", sync_job, "--base-url", mock.base_url, "--quiet")
    assert r.returncode == 0, r.stderr
    cli("export", batch_job, "-o", str(tmp_path / "batch.jsonl"))
    cli("export", sync_job, "-o", str(tmp_path / "sync.jsonl"))
    via_batch = [_comparable(x) for x in read_jsonl(tmp_path / "batch.jsonl")]
    via_sync = [_comparable(x) for x in read_jsonl(tmp_path / "sync.jsonl")]
    assert len(via_batch) == N and via_batch == via_sync  # input order, same answers and usage


def _kill_when(p: subprocess.Popen[str], ready: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not ready():
        assert p.poll() is None, f"the run ended before the kill point: {p.communicate()[1]}"
        assert time.monotonic() < deadline, "the kill point was never reached"
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL


def test_sigkill_at_each_step_never_uploads_or_creates_twice(
    cli: Cli, mock_factory: Any, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    mock = mock_factory("--batch-run-delay", "0.5")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", N))
    args = ("run", job, "--lane", "batch", "--batch-max-lines", MAX_LINES, "--base-url", mock.base_url, "--quiet")

    def start() -> subprocess.Popen[str]:
        p = cli.popen(*args)
        procs.append(p)
        return p

    # 1. After the upload took effect, before its reply (and so its file id) reached the runner.
    mock.configure(batch_reply_delay=5.0)
    _kill_when(start(), lambda: _batch(mock)["uploads"] == 1)
    # 2. After the create was sent and the batch made, before the runner heard its id.
    _kill_when(start(), lambda: _batch(mock)["creates"] == 1)
    assert _batch(mock)["uploads"] == 1  # the restart found its file instead of uploading again
    # 3. While polling: every batch created, none finished.
    mock.configure(batch_reply_delay=0.0, batch_run_delay=30.0)
    _kill_when(start(), lambda: _batch(mock)["creates"] == 3)
    # 4. While merging: half of an output file streamed (and merged), the rest held back.
    mock.configure(batch_run_delay=0.0, file_read_delay=5.0)
    _kill_when(start(), lambda: _batch(mock)["reads"] >= 1)
    time.sleep(0)
    mock.configure(file_read_delay=0.0)
    r = cli(*args)
    assert r.returncode == 0, r.stderr

    ledger = _batch(mock)
    assert (ledger["uploads"], ledger["creates"], ledger["lines_uploaded"], ledger["max_uploads_of_a_line"]) == (
        3,
        3,
        N,
        1,
    )
    st = cli.status(job)
    assert st["counts"]["completed"] == N and st["attempts"] == N
    assert st["usage"] == mock.stats()["usage"]  # nothing lost, nothing merged twice
    rows = read_jsonl(Path(cli("export", job, "-o", str(tmp_path / "out.jsonl")).stderr and tmp_path / "out.jsonl"))
    assert [x["custom_id"] for x in rows] == [f"c-{i:05d}" for i in range(1, N + 1)]


def test_expired_rows_are_requeued_and_a_second_run_finishes_them(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory("--batch-run-delay", "0.2", "--batch-expire", "0.25")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 200))
    args = ("run", job, "--lane", "batch", "--batch-max-lines", "100", "--base-url", mock.base_url, "--quiet")
    r = cli(*args)
    assert r.returncode == 1, r.stderr
    assert "50 requests came back from an expired or cancelled batch and are queued again" in r.stderr
    st = cli.status(job)
    assert (st["counts"]["completed"], st["counts"]["queued"]) == (150, 50)
    assert sorted(_batch(mock)["batches"].values()) == ["expired", "expired"]

    mock.configure(batch_expire=0.0)
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    st = cli.status(job)
    assert st["counts"]["completed"] == 200 and st["attempts"] == 250  # the expired attempt counted
    assert st["usage"] == mock.stats()["usage"]
    shown = cli("show", job, "c-00001", "--json")
    assert shown.returncode == 0


def test_detach_then_a_later_run_collects(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory("--batch-run-delay", "1.0")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 200))
    r = cli("run", job, "--lane", "batch", "--batch-max-lines", "100", "--detach", "--base-url", mock.base_url)
    assert r.returncode == 0, r.stderr
    assert "detached: 2 batches open" in r.stderr
    st = cli.status(job)
    assert [b["requests"] for b in st["open_batches"]] == [100, 100]
    assert all(b["batch_id"].startswith("batch_") for b in st["open_batches"])
    text = cli("status", job).stdout
    assert text.count("  batch batch_") == 2

    r = cli("run", "--base-url", mock.base_url, "--quiet")  # cron: a plain run re-attaches
    assert r.returncode == 0, r.stderr
    st = cli.status(job)
    assert st["counts"]["completed"] == 200 and st["open_batches"] == []
    assert (_batch(mock)["uploads"], _batch(mock)["creates"]) == (2, 2)


def test_cancel_cancels_open_batches_and_keeps_partial_results(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory("--batch-run-delay", "4.0", "--batch-validate-delay", "0")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 200))
    r = cli("run", job, "--lane", "batch", "--batch-max-lines", "100", "--detach", "--base-url", mock.base_url)
    assert r.returncode == 0, r.stderr
    time.sleep(1.5)  # part of each batch has run
    r = cli("cancel", job, "--base-url", mock.base_url)
    assert r.returncode == 0, r.stderr
    assert "2 batches cancelled" in r.stderr
    assert _batch(mock)["cancels"] == 2

    r = cli("run", job, "--base-url", mock.base_url, "--quiet")
    assert r.returncode == 0, r.stderr
    st = cli.status(job)
    done, cancelled = st["counts"]["completed"], st["counts"]["cancelled"]
    assert done > 0 and cancelled > 0 and done + cancelled == 200
    assert sorted(_batch(mock)["batches"].values()) == ["cancelled", "cancelled"]
    assert st["usage"] == mock.stats()["usage"]  # the partial results that were paid for are kept


def test_a_batch_that_fails_validation_is_reported_and_its_rows_requeued(
    cli: Cli, mock_factory: Any, tmp_path: Path
) -> None:
    mock = mock_factory("--batch-fail", "1", "--batch-run-delay", "0")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 20))
    r = cli("run", job, "--lane", "batch", "--base-url", mock.base_url, "--quiet")
    assert r.returncode == 1, r.stderr
    [line] = [x for x in r.stderr.splitlines() if "failed: invalid_request" in x]
    assert line.endswith("its 20 requests are queued again (fix the cause, then `runner run`)")
    assert cli.status(job)["counts"]["queued"] == 20
    r = cli("run", job, "--lane", "batch", "--base-url", mock.base_url, "--quiet")
    assert r.returncode == 0, r.stderr
    assert cli.status(job)["counts"]["completed"] == 20
    assert json.loads(cli("status", job, "--json").stdout)["open_batches"] == []
