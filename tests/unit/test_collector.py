"""The garbage collector's tuning for a run (runner/worker/collector.py): put back as found, cycles still go."""

from __future__ import annotations

import gc
import weakref

from runner.worker.collector import YOUNG_THRESHOLD, quiet_collector


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_tuned_inside_and_put_back_after_nested_runs() -> None:
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    with quiet_collector():
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD
        assert gc.get_freeze_count() > frozen_before  # what existed before the run is not scanned again
        with quiet_collector():  # a second run in the same process
            assert gc.get_threshold()[0] == YOUNG_THRESHOLD
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD  # the outer run still works
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_put_back_when_the_run_raises() -> None:
    before = gc.get_threshold()
    try:
        with quiet_collector():
            raise KeyError("boom")
    except KeyError:
        pass
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_cycles_made_during_the_run_are_still_collected() -> None:
    with quiet_collector():
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
