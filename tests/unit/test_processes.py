"""The parts of `--processes` that need no process: the concurrency split, the sum of the figures, what
a worker reports to its parent read back as the run's verdict (through a real pipe), and the hand-over of a
share from the parent, which sends while a worker starts, to that worker once it is ready."""

from __future__ import annotations

import io
import os
import signal
import time
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from runner import processes
from runner.config import Lane, Settings
from runner.errors import BillingError
from runner.limits import AdaptiveConcurrency
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
    child = processes._Child(2, proc=None, share=1, released=True)  # type: ignore[arg-type]  # reading needs no process
    lines = _read(r)
    os.close(r)
    assert len(lines) == 2
    for line in [*lines, b"not json", b'{"end": {"reason": "nonsense"}}']:  # the last two are skipped
        processes._take(child, line)
    out = processes._outcome([child], None, time.monotonic(), caught=None)
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


class _Stdin:
    """What the parent writes to a child's stdin."""

    def __init__(self) -> None:
        self.words: list[bytes] = []

    async def send(self, data: bytes) -> None:
        self.words.append(data)


def _handover(concurrency: int, in_flight: int) -> tuple[processes._Own, Any, processes._Child, _Stdin]:
    run: Any = SimpleNamespace(concurrency=AdaptiveConcurrency(concurrency), snap=Snapshot(in_flight=in_flight))
    stdin = _Stdin()
    proc: Any = SimpleNamespace(stdin=stdin)
    return processes._Own(run), run, processes._Child(2, proc, share=concurrency // 2), stdin


@pytest.mark.anyio
async def test_a_ready_worker_goes_only_once_the_parents_requests_in_flight_fit_in_what_it_keeps() -> None:
    own, run, child, stdin = _handover(8, in_flight=8)  # the parent sends over all 8 slots while its child starts
    async with anyio.create_task_group() as tg:
        tg.start_soon(processes._release, child, [], own)
        await anyio.wait_all_tasks_blocked()
        # It lent 4 at once (the parent opens no more than 4), but 8 are still out: the child waits.
        assert (run.concurrency.maximum, run.concurrency.limit) == (4, 4)
        assert stdin.words == [] and not child.released
        run.snap.in_flight = 5
        await anyio.wait_all_tasks_blocked()
        assert stdin.words == []
        run.snap.in_flight = 4  # 4 + the child's 4: never more than the 8 asked for
    assert stdin.words == [b"go\n"] and child.released


@pytest.mark.anyio
async def test_a_worker_ready_after_a_ctrl_c_is_told_to_stop_and_the_parent_keeps_its_slots() -> None:
    own, run, child, stdin = _handover(8, in_flight=8)
    await processes._release(child, [signal.SIGINT], own)
    assert stdin.words == [b"stop\n"] and not child.released
    assert run.concurrency.maximum == 8


@pytest.mark.anyio
async def test_a_worker_ready_after_the_parents_run_ended_is_ended_not_let_go() -> None:
    own, _, child, stdin = _handover(8, in_flight=0)
    killed: list[bool] = []
    child.proc.returncode = None  # type: ignore[misc]
    child.proc.kill = lambda: killed.append(True)  # type: ignore[method-assign]
    own.running = False  # its run is over: every request of the job is final
    await processes._release(child, [], own)
    assert stdin.words == [] and not child.released and killed == [True]


def test_a_dead_workers_share_goes_back_to_the_parent() -> None:
    own, run, _, _ = _handover(8, in_flight=0)
    own.lend(4)
    own.take_back(4)
    assert (run.concurrency.maximum, run.concurrency.limit) == (8, 8)


@pytest.mark.parametrize(("word", "goes"), [(b"go\n", True), (b"stop\n", False), (b"", False)])
def test_a_worker_says_it_is_ready_then_sends_only_on_its_parents_go(
    word: bytes, goes: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(word)))  # b"": the parent is gone
    r, w = os.pipe()
    assert processes.ChildReport(w).wait_for_turn() is goes
    os.close(w)
    lines = _read(r)
    os.close(r)
    assert lines[0] == b'{"ready":true}'
    # One that does not go ends at once, as interrupted: the parent counts it as stopped, not as dead.
    child = processes._Child(2, proc=None, share=1)  # type: ignore[arg-type]
    for line in lines:
        processes._take(child, line)
    assert (child.end is not None and child.end.reason is StopReason.INTERRUPTED) is not goes
    assert child.last is None  # no figures of the job from a worker that never sent
