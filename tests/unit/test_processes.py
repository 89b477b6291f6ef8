"""The parts of `--processes` that need no process: the concurrency split, the sum of the figures, and what
a worker reports to its parent read back as the run's verdict (through a real pipe)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from runner import processes
from runner.config import Lane, Settings
from runner.errors import BillingError
from runner.worker.types import RunResult, Snapshot, StopReason


@pytest.mark.parametrize(
    ("concurrency", "n", "expected"),
    [(64, 2, [32, 32]), (10, 4, [3, 3, 2, 2]), (3, 3, [1, 1, 1]), (1000, 3, [334, 333, 333])],
)
def test_the_concurrency_is_split_whole_and_adds_up(concurrency: int, n: int, expected: list[int]) -> None:
    assert processes.shares(concurrency, n) == expected


def test_merged_figures_count_each_process_once_and_the_job_once() -> None:
    # Two processes on a job of 100 of which 40 were final: the second started after the first finished 5.
    a = Snapshot(total=100, done=55, done_before=40, completed=14, failed=1, in_flight=4, concurrency=4)
    b = Snapshot(total=100, done=55, done_before=45, completed=10, in_flight=3, concurrency=4, notice="waiting 30 s")
    m = processes.merge([a, b], started=time.monotonic())
    assert (m.total, m.done_before, m.done) == (100, 40, 65)
    assert (m.completed, m.failed, m.in_flight, m.concurrency) == (24, 1, 7, 8)
    assert m.notice == "waiting 30 s" and not m.stopping


def _read(fd: int) -> list[bytes]:
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    return data.splitlines()


def test_a_workers_billing_stop_reaches_the_parent_with_its_error_and_figures() -> None:
    r, w = os.pipe()
    report = processes.ChildReport(w)
    snap = Snapshot(total=10, done=3, completed=3)
    report(snap)
    err = BillingError("You exceeded your current quota", status=429, code="insufficient_quota")
    report.end(RunResult(StopReason.BILLING, err, snap, problems=["a line"]))
    os.close(w)
    child = processes._Child(1, proc=None)  # type: ignore[arg-type]  # reading needs no process
    lines = _read(r)
    os.close(r)
    assert len(lines) == 2
    for line in [*lines, b"not json", b'{"end": {"reason": "nonsense"}}']:  # the last two are skipped
        processes._take(child, line)
    out = processes._outcome([child], time.monotonic(), caught=None)
    assert out.result.reason is StopReason.BILLING
    assert out.result.billing_error is not None and out.result.billing_error.code == "insufficient_quota"
    assert out.result.billing_error.status == 429 and out.result.problems == ["a line"]
    assert out.finished == [3] and out.died == []


def test_a_worker_whose_parent_is_gone_stops_as_on_ctrl_c(monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    os.close(r)  # nobody reads any more
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    report = processes.ChildReport(w)
    report(Snapshot())
    report(Snapshot())
    report.end(RunResult(StopReason.INTERRUPTED))
    os.close(w)
    assert sent == [(os.getpid(), signal.SIGINT)]  # once, and not for the last line


def test_a_workers_environment_spells_every_setting_as_its_variable() -> None:
    s = Settings(
        db="x.db",
        api_key="sk-test",
        base_url="http://127.0.0.1:9/v1",
        concurrency=9,
        processes=3,
        rpm=0.5,
        lane=Lane.FLEX,
        flex_fallback=1e-05,
    )
    env = processes.child_env(s, 3)
    # The same base URL and key: the workers book from one shared rate budget (runner/store/fleet.py).
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:9/v1" and env["OPENAI_API_KEY"] == "sk-test"
    assert env["RUNNER_DB"] == "x.db"
    assert env["RUNNER_CONCURRENCY"] == "3" and env["RUNNER_PROCESSES"] == "1"
    assert env["RUNNER_RPM"] == "0.5" and env["RUNNER_LANE"] == "flex"
    assert env["RUNNER_FLEX_FALLBACK"] == "0.00001"
    assert "RUNNER_TPM" not in env and env[processes.CHILD_ENV] == str(os.getpid())
    # What the worker reads back is what the parent had.
    back = Settings(rpm=env["RUNNER_RPM"], lane=env["RUNNER_LANE"], flex_fallback=env["RUNNER_FLEX_FALLBACK"])
    assert (back.rpm, back.lane, back.flex_fallback) == (0.5, Lane.FLEX, 1e-05)
