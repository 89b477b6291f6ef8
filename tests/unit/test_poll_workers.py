"""The poller's workers: never more GETs at once than its slots, none before it is due, every response handed over."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from runner.client import ApiReply
from runner.errors import TransientApiError
from runner.states import POLL_FAILED, RequestState
from runner.store.models import Claimed, Outcome
from runner.store.outputs import CheckRecord
from runner.worker import poller as poller_module
from runner.worker.poller import DISPATCH_SLACK, Poller


class _Server:
    """Answers GET /responses/{id}: completed, except the first GET of a response in `slow`; counts GETs in flight."""

    def __init__(self, slow: frozenset[str] = frozenset()) -> None:
        self.slow = slow
        self.in_flight = 0
        self.most_in_flight = 0
        self.gets: dict[str, list[float]] = {}

    async def retrieve(self, response_id: str) -> ApiReply:
        self.gets.setdefault(response_id, []).append(time.monotonic())
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await anyio.sleep(0.002)
        finally:
            self.in_flight -= 1
        status = "in_progress" if response_id in self.slow and len(self.gets[response_id]) == 1 else "completed"
        body: dict[str, Any] = {"id": response_id, "status": status, "output": []}
        if status == "completed":
            body["usage"] = {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}
        return ApiReply(200, body, b"", "req_1", {})


class _Writer:
    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def put(self, outcome: Outcome, check: CheckRecord | None = None) -> int:
        self.outcomes.append(outcome)
        return len(self.outcomes)


def _claimed(i: int) -> Claimed:
    c = Claimed(i, "job_1", i, f"r{i}", "{}", 1)
    c.response_id = f"resp_{i}"
    c.background = True
    return c


async def _until_empty(poller: Poller, empty: anyio.Event) -> None:
    """Run `poller` until it has handed over every response it holds (`empty`: its on_empty)."""
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(poller.run, tg)
            await empty.wait()
            tg.cancel_scope.cancel()


async def _poll_all(server: _Server, first_polls: list[float], slots: int) -> tuple[_Writer, dict[str, float]]:
    writer = _Writer()
    empty = anyio.Event()
    poller = Poller(server, writer, max_attempts=3, max_in_flight=slots, on_empty=empty.set)  # type: ignore[arg-type]
    due: dict[str, float] = {}
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(poller.run, tg)
            for i, first in enumerate(first_polls):
                c = _claimed(i)
                assert c.response_id is not None
                due[c.response_id] = time.monotonic() + first
                poller.add(c, first_poll=first)
            await empty.wait()
            tg.cancel_scope.cancel()
    assert poller.size == 0
    return writer, due


@pytest.mark.anyio
async def test_no_more_gets_at_once_than_the_poll_slots_and_every_response_is_handed_over_once() -> None:
    n = 300
    server = _Server()
    writer, _ = await _poll_all(server, [0.0] * n, slots=8)
    assert server.most_in_flight == 8
    assert sorted(o.request_id for o in writer.outcomes) == list(range(n))
    assert all(len(g) == 1 for g in server.gets.values()) and len(server.gets) == n


@pytest.mark.anyio
async def test_no_response_is_polled_before_it_is_due_and_one_still_running_is_polled_again() -> None:
    n = 200
    firsts = [0.001 * i for i in range(n)]  # due over 0.2 s
    server = _Server(frozenset(f"resp_{i}" for i in range(0, n, 10)))  # every tenth is still running at its first GET
    writer, due = await _poll_all(server, firsts, slots=4)
    assert len(writer.outcomes) == n
    for rid, gets in server.gets.items():
        assert gets[0] >= due[rid] - DISPATCH_SLACK
    assert all(len(server.gets[f"resp_{i}"]) == 2 for i in range(0, n, 10))
    assert sum(len(g) for g in server.gets.values()) == n + n // 10


@pytest.mark.anyio
async def test_the_dispatcher_sleeps_while_every_worker_is_busy() -> None:
    # With every slot taken and polls due, the workers take them as they finish; a dispatcher that kept
    # looking meanwhile would burn the event loop's CPU, thousands of turns here.
    class Counting(Poller):
        turns = 0

        def _dispatch(self, now: float) -> None:
            Counting.turns += 1
            super()._dispatch(now)

    server = _Server()
    empty = anyio.Event()
    poller = Counting(server, _Writer(), max_attempts=3, max_in_flight=2, on_empty=empty.set)  # type: ignore[arg-type]
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(poller.run, tg)
            for i in range(100):
                poller.add(_claimed(i), first_poll=0.0)
            await empty.wait()
            tg.cancel_scope.cancel()
    assert len(server.gets) == 100
    assert Counting.turns <= 10


@pytest.mark.anyio
async def test_a_first_poll_goes_at_the_estimate_as_it_is_when_due_not_as_it_was_when_the_response_came() -> None:
    # A run's first 2,000 responses are all added before any has ended; due at their create reply plus the
    # estimate of that moment, each was polled as late as that first guess was high.
    server = _Server()
    writer = _Writer()
    empty = anyio.Event()
    poller = Poller(server, writer, max_attempts=3, max_in_flight=8, on_empty=empty.set)  # type: ignore[arg-type]
    poller.schedule.learn(10.0, None)  # the first response to end took 10 s
    replied = time.monotonic() - 5.0
    for i in range(50):
        poller.add(_claimed(i), replied_at=replied)
    poller.schedule.estimate = 5.1  # what the next responses taught it before these came due
    await _until_empty(poller, empty)
    firsts = [gets[0] for gets in server.gets.values()]
    assert len(firsts) == 50 and len(writer.outcomes) == 50
    assert min(firsts) >= replied + 5.1 - DISPATCH_SLACK
    assert max(firsts) < replied + 10.0  # not at the estimate they were added under


@pytest.mark.anyio
async def test_a_response_teaches_the_age_its_get_went_at_not_the_age_its_answer_came() -> None:
    class Slow(_Server):
        async def retrieve(self, response_id: str) -> ApiReply:
            await anyio.sleep(0.5)  # a loaded server, or a busy event loop reading the answer late
            return await super().retrieve(response_id)

    empty = anyio.Event()
    poller = Poller(Slow(), _Writer(), max_attempts=3, max_in_flight=8, on_empty=empty.set)  # type: ignore[arg-type]
    poller.add(_claimed(1), replied_at=time.monotonic() - 0.99)  # a probe: first polled 1 s after its reply
    await _until_empty(poller, empty)
    assert poller.schedule.estimate is not None
    assert 1.0 - DISPATCH_SLACK <= poller.schedule.estimate < 1.3  # not 1.5: the answer's half second is not its age


@pytest.mark.anyio
async def test_a_first_poll_sent_late_that_finds_the_response_final_does_not_lower_the_estimate() -> None:
    # Under a load of 8 on 2 cores every first poll went out 0.3-0.6 s late and found its response final; counted,
    # those answers took the estimate of 2 s responses down to 1.6 s, where every later response would miss.
    empty = anyio.Event()
    writer = _Writer()
    poller = Poller(_Server(), writer, max_attempts=3, max_in_flight=8, on_empty=empty.set)  # type: ignore[arg-type]
    poller.schedule.learn(2.0, None)
    poller.add(_claimed(1), replied_at=time.monotonic() - 3.0)  # due a second ago
    await _until_empty(poller, empty)
    assert len(writer.outcomes) == 1
    assert poller.schedule.estimate == 2.0


@pytest.mark.anyio
@pytest.mark.parametrize("one_later", [False, True], ids=["all-due-now", "one-due-later"])
async def test_workers_end_once_nothing_is_left_to_poll_not_parked_until_the_run_cancels_them(one_later: bool) -> None:
    # Parked, a background run's ~256 workers were cancelled one by one after its last result (4-13 ms of its tail),
    # those parked while a poll was still to come (`one_later`) too.
    empty = anyio.Event()
    poller = Poller(_Server(), _Writer(), max_attempts=3, max_in_flight=16, on_empty=empty.set)  # type: ignore[arg-type]
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(poller.run, tg)
            for i in range(100):
                poller.add(_claimed(i), first_poll=0.0)
            if one_later:
                poller.add(_claimed(100), first_poll=0.3)
                await anyio.sleep(0.15)
                assert len(poller._idle) > 1  # parked, waiting for it
            await empty.wait()
            await anyio.sleep(0.05)
            workers, parked = poller._workers, len(poller._idle)
            # More comes after all: a worker starts for it.
            poller.add(_claimed(101), first_poll=0.0)
            empty = anyio.Event()
            poller._on_empty = empty.set
            await empty.wait()
            tg.cancel_scope.cancel()
    assert (workers, parked) == (0, 0)
    assert poller.size == 0 and poller.polls == 101 + one_later


class _Failing(_Server):
    """GET answers 503 for the first `fails` GETs of each response, then as _Server does."""

    def __init__(self, fails: int) -> None:
        super().__init__()
        self.fails = fails

    async def retrieve(self, response_id: str) -> ApiReply:
        if len(self.gets.get(response_id, [])) < self.fails:
            self.gets.setdefault(response_id, []).append(time.monotonic())
            raise TransientApiError("server error", status=503, code="server_error")
        return await super().retrieve(response_id)


async def _poll_one(server: _Server, patience: float) -> Outcome:
    empty = anyio.Event()
    writer = _Writer()
    poller = Poller(server, writer, max_attempts=2, max_in_flight=4, patience=patience, on_empty=empty.set)  # type: ignore[arg-type]
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(poller.run, tg)
            poller.add(_claimed(1), first_poll=0.0)
            await empty.wait()
            tg.cancel_scope.cancel()
    assert len(writer.outcomes) == 1
    return writer.outcomes[0]


@pytest.mark.anyio
async def test_a_response_is_given_up_after_max_attempts_failed_gets_only_once_they_span_the_patience(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(poller_module, "POLL_INITIAL_DELAY", 0.1)  # the backoff ladder, ten times shorter
    # Without patience, two 503s in a row (--max-attempts 2) give the response up: poll_failed, its id kept.
    given_up = await _poll_one(_Failing(fails=2), patience=0.0)
    assert (given_up.to, given_up.error_code) == (RequestState.FAILED, POLL_FAILED)
    # With patience (a run's --timeout), failures that have lasted less than it are waited out: GETs 0.15 s apart
    # are still within 0.3 s at the second failure, and the third GET finds the response completed.
    server = _Failing(fails=2)
    done = await _poll_one(server, patience=0.3)
    assert done.to == RequestState.COMPLETED and len(server.gets["resp_1"]) == 3
    # A GET outage longer than the patience still ends: never polled for ever.
    server = _Failing(fails=100)
    ended = await _poll_one(server, patience=0.3)
    assert ended.error_code == POLL_FAILED and 2 < len(server.gets["resp_1"]) < 6


@pytest.mark.anyio
async def test_a_probe_found_running_on_the_ladder_is_polled_again_at_the_estimate_once_one_is_learnt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A probe polled at its second rung a hair before it ended was booked at the next rung (half its age later)
    # while the other responses ended and were fetched at the estimate: it was the run's last by 0.47 s.
    monkeypatch.setattr(poller_module, "UNKNOWN_LADDER", (0.5, 1.0))  # the ladder at half its size

    class Server(_Server):
        async def retrieve(self, response_id: str) -> ApiReply:
            reply = await super().retrieve(response_id)
            running = {"resp_1": 2, "resp_2": 1}[response_id]  # GETs that find it still running
            if len(self.gets[response_id]) <= running:
                return ApiReply(200, {"id": response_id, "status": "in_progress"}, b"", "req_1", {})
            return reply

    server, writer, empty = Server(), _Writer(), anyio.Event()
    poller = Poller(server, writer, max_attempts=3, max_in_flight=8, on_empty=empty.set)  # type: ignore[arg-type]
    start = time.monotonic()
    poller.add(_claimed(1), replied_at=start)  # probes: at 0.5 s and 1 s, then (unknown) 0.5 s later
    poller.add(_claimed(2), replied_at=start + 0.05)  # ends by its 1 s rung: the estimate is then 1 s
    await _until_empty(poller, empty)
    assert len(writer.outcomes) == 2
    _, second, third = server.gets["resp_1"]
    assert second - start < 1.1 and third - start < 1.3, [round(t - start, 3) for t in server.gets["resp_1"]]
    assert poller.schedule.estimate is not None and poller.schedule.estimate < 1.1


@pytest.mark.anyio
async def test_a_poll_backing_off_after_a_failed_get_keeps_its_wait_when_the_estimate_is_learnt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only waits booked on the ladder move to the estimate: a backoff after a 503 (or a server's Retry-After) stays.
    monkeypatch.setattr(poller_module, "UNKNOWN_LADDER", (0.2, 0.4))

    class Server(_Server):
        async def retrieve(self, response_id: str) -> ApiReply:
            if response_id == "resp_1" and not self.gets.get(response_id):
                self.gets[response_id] = [time.monotonic()]
                raise TransientApiError("server error", status=503, code="server_error")
            reply = await super().retrieve(response_id)
            if response_id == "resp_2" and len(self.gets[response_id]) == 1:  # ends by its second rung
                return ApiReply(200, {"id": response_id, "status": "in_progress"}, b"", "req_1", {})
            return reply

    server, writer, empty = Server(), _Writer(), anyio.Event()
    poller = Poller(server, writer, max_attempts=3, max_in_flight=8, on_empty=empty.set)  # type: ignore[arg-type]
    start = time.monotonic()
    poller.add(_claimed(1), replied_at=start)  # 503 at 0.2 s: backs off (at least a second)
    poller.add(_claimed(2), replied_at=start)  # the estimate is learnt at 0.4 s
    await _until_empty(poller, empty)
    assert len(writer.outcomes) == 2 and poller.schedule.estimate is not None
    failed, again = server.gets["resp_1"]
    assert again - failed >= 1.0 - DISPATCH_SLACK, round(again - failed, 3)
