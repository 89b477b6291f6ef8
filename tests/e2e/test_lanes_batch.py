"""The batch lane end to end: the CLI as a subprocess against the mock's Files and Batches endpoints.

Scaled down from the issue's figures to fit the suite's time budget: 600 lines in files of at most 250
(three files, three batches) instead of 12,000 in files of 5,000. What a subprocess is not needed for
(answers equal to the sync lane's, expiry, cancel, failed batches) is tested in-process in
tests/integration/test_lanes_batch.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Cli, MockServer, write_jobfile

N = 600
MAX_LINES = "250"


def _batch(mock: MockServer) -> dict[str, Any]:
    stats: dict[str, Any] = mock.stats()["batch"]
    return stats


def _usage_line(mock: MockServer) -> str:
    u = mock.stats()["usage"]
    return (
        f"usage: input {u['input_tokens']:,} · cached {u['cached_tokens']:,} · output {u['output_tokens']:,}"
        f" · reasoning {u['reasoning_tokens']:,} · total {u['total_tokens']:,}"
    )


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
    mock.configure(file_read_delay=0.0)
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert _usage_line(mock) in r.stdout  # nothing lost, nothing merged twice: the store's usage is the ledger's
    assert f"completed {N} " in r.stdout and f"attempts {N} (0 retries)" in r.stdout

    ledger = _batch(mock)
    assert (ledger["uploads"], ledger["creates"], ledger["lines_uploaded"], ledger["max_uploads_of_a_line"]) == (
        3,
        3,
        N,
        1,
    )


def test_detach_then_a_later_run_collects(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory("--batch-run-delay", "1.0")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 200))
    r = cli("run", job, "--lane", "batch", "--batch-max-lines", "100", "--detach", "--base-url", mock.base_url)
    assert r.returncode == 0, r.stderr
    assert "detached: 2 batches open; a later `runner run` merges their results" in r.stderr
    shown = [x for x in cli("status", job).stdout.splitlines() if x.startswith("  batch batch_")]
    assert len(shown) == 2 and all(" · 0 of 100 done, 0 failed · " in x for x in shown), shown

    r = cli("run", "--base-url", mock.base_url, "--quiet")  # cron: a plain run re-attaches and collects
    assert r.returncode == 0, r.stderr
    assert "completed 200 " in r.stdout and "  batch batch_" not in r.stdout
    assert (_batch(mock)["uploads"], _batch(mock)["creates"]) == (2, 2)
