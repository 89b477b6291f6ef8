"""The write-back's commit window: counted from the last commit's start, so results are not held longer than needed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import anyio
import pytest
from anyio.lowlevel import checkpoint

from runner.states import RequestState
from runner.store import Store
from runner.store.models import Outcome, Refused, ResponseIdRecord
from runner.worker.writeback import WriteBack

pytestmark = pytest.mark.anyio
HOUR = 3600.0


class FakeStore:
    """Records the request ids of each commit."""

    def __init__(self) -> None:
        self.commits: list[list[int]] = []

    async def apply(self, owner: str, outcomes: Sequence[Outcome], ids: Sequence[ResponseIdRecord] = ()) -> Refused:
        self.commits.append([o.request_id for o in outcomes] + [x.request_id for x in ids])
        await checkpoint()
        return Refused()


async def settle() -> None:
    for _ in range(20):  # let the writer task run whatever it can without the clock moving
        await checkpoint()


async def test_commits_start_a_window_apart_and_a_result_after_a_quiet_spell_waits_for_nothing() -> None:
    store = FakeStore()
    now = [1000.0]
    # A window of an hour: any wait for it would fail the test's 5 s bound.
    w = WriteBack(cast(Store, store), "me", window=HOUR, clock=lambda: now[0])
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(w.run)
            await w.wait(w.put(Outcome(1, RequestState.COMPLETED)))  # the first commit: nothing to wait for
            assert store.commits == [[1]]

            now[0] += HOUR  # a window since the last commit started: the next result goes at once
            await w.wait(w.put(Outcome(2, RequestState.COMPLETED)))
            assert store.commits == [[1], [2]]

            # Within the window of the last commit: these wait and share one commit.
            t3 = w.put(Outcome(3, RequestState.COMPLETED))
            t4 = w.put(Outcome(4, RequestState.FAILED))
            await settle()
            assert store.commits == [[1], [2]]
            await w.flush()  # a flush does not wait for the window
            assert w.written == 4 and store.commits == [[1], [2], [3, 4]]
            assert max(t3, t4) == 4

            # A background response id never waits for the window.
            await w.wait(w.put_response_id(ResponseIdRecord(5, "resp_5", None, None)))
            assert store.commits[-1] == [5]
            await w.aclose()
            tg.cancel_scope.cancel()


def test_the_window_shrinks_with_the_round_trip_within_its_bounds() -> None:
    w = WriteBack(cast(Store, FakeStore()), "me", window=0.01)
    assert w.window() == 0.01  # no round trip given (background runs): the whole window
    rt: list[float | None] = [None]
    w.round_trip = lambda: rt[0]
    assert w.window() == 0.01  # no reply seen yet
    rt[0] = 1.0
    assert w.window() == pytest.approx(0.01)  # 1 % of a second is the whole window
    rt[0] = 0.6
    assert w.window() == pytest.approx(0.006)
    rt[0] = 0.2
    assert w.window() == pytest.approx(0.004)  # never below MIN_WINDOW
    rt[0] = 0.001
    assert w.window() == pytest.approx(0.004)  # never below MIN_WINDOW: a commit costs CPU whatever its size
    rt[0] = 30.0
    assert w.window() == pytest.approx(0.01)  # never above the configured window


async def test_a_short_round_trip_commits_sooner() -> None:
    store = FakeStore()
    now = [1000.0]
    w = WriteBack(cast(Store, store), "me", window=HOUR, clock=lambda: now[0])
    w.round_trip = lambda: 0.2  # 2 ms: the clock below moves by that much only
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(w.run)
            await w.wait(w.put(Outcome(1, RequestState.COMPLETED)))
            now[0] += 0.002
            await w.wait(w.put(Outcome(2, RequestState.COMPLETED)))  # with the hour's window this would hang
            assert store.commits == [[1], [2]]
            await w.aclose()
            tg.cancel_scope.cancel()
