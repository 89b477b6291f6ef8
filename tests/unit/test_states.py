from __future__ import annotations

import pytest

from runner.states import ACTIVE, ALLOWED_FROM, RESULTS, TERMINAL, RequestState, can_move

S = RequestState


def test_terminal_and_active_partition_all_states() -> None:
    assert TERMINAL.isdisjoint(ACTIVE)
    assert set(RequestState) == TERMINAL | ACTIVE


def test_results_are_terminal() -> None:
    assert RESULTS <= TERMINAL
    assert {S.COMPLETED, S.INCOMPLETE} == RESULTS


def test_every_state_has_an_entry() -> None:
    assert set(ALLOWED_FROM) == set(RequestState)


@pytest.mark.parametrize(
    ("from_", "to"),
    [
        (S.QUEUED, S.IN_PROGRESS),
        (S.IN_PROGRESS, S.IN_PROGRESS),  # a lease renewal or a poll adoption
        (S.IN_PROGRESS, S.COMPLETED),
        (S.IN_PROGRESS, S.INCOMPLETE),
        (S.IN_PROGRESS, S.FAILED),
        (S.IN_PROGRESS, S.CANCELLED),
        (S.IN_PROGRESS, S.QUEUED),  # a retry
        (S.QUEUED, S.CANCELLED),
        (S.FAILED, S.QUEUED),  # `runner retry`
        (S.QUEUED, S.FAILED),  # a line whose parent failed: `parent_failed`, never sent
    ],
)
def test_allowed_moves(from_: RequestState, to: RequestState) -> None:
    assert can_move(from_, to)


@pytest.mark.parametrize(
    ("from_", "to"),
    [
        (S.COMPLETED, S.IN_PROGRESS),
        (S.COMPLETED, S.QUEUED),
        (S.COMPLETED, S.COMPLETED),
        (S.INCOMPLETE, S.QUEUED),
        (S.CANCELLED, S.QUEUED),
        (S.CANCELLED, S.IN_PROGRESS),
        (S.FAILED, S.IN_PROGRESS),
        (S.FAILED, S.COMPLETED),
        (S.QUEUED, S.COMPLETED),
        (S.QUEUED, S.INCOMPLETE),
        (S.QUEUED, S.QUEUED),
    ],
)
def test_forbidden_moves(from_: RequestState, to: RequestState) -> None:
    assert not can_move(from_, to)


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_nothing_moves_from_a_terminal_state_to_another_terminal_state(terminal: RequestState) -> None:
    for to in TERMINAL:
        assert not can_move(terminal, to)


def test_results_are_final() -> None:
    for result in RESULTS:
        for to in RequestState:
            assert not can_move(result, to), (result, to)


def test_every_terminal_state_is_reached_only_from_in_progress_or_queued() -> None:
    for to in TERMINAL:
        assert ALLOWED_FROM[to] <= ACTIVE
