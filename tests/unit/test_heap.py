"""The collector is given back everything a bulk pass froze, whether the pass ends well or not."""

from __future__ import annotations

import gc

import pytest

from runner.heap import gc_spares_the_heap


def test_the_heap_is_frozen_during_the_pass_and_given_back_after() -> None:
    assert gc.get_freeze_count() == 0
    with gc_spares_the_heap():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_the_heap_is_given_back_when_the_pass_fails() -> None:
    with pytest.raises(KeyError), gc_spares_the_heap():
        raise KeyError("x")
    assert gc.get_freeze_count() == 0
