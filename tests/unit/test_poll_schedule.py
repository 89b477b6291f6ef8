"""When background responses are polled: a fixed ladder until one ends, then the learnt completion time."""

from __future__ import annotations

import heapq
import math
import random

import pytest

from runner.worker.poller import (
    AFTER_ESTIMATE_STEP,
    FIRST_POLL_DONE_SHARE,
    UNKNOWN_LADDER,
    PollSchedule,
    poll_after_hint,
)


def _polls_until_done(schedule: PollSchedule, completes_at: float) -> tuple[int, float]:
    """GETs one response needs under `schedule`, and the age at which it was seen final; teaches it."""
    at_estimate = schedule.estimate is not None
    age = schedule.first()
    polls = 1
    while age < completes_at:
        age += schedule.next(age, polls)
        polls += 1
    schedule.learn(age, (polls == 1) if at_estimate else None)
    return polls, age


def test_before_anything_ended_polls_follow_the_ladder_then_back_off() -> None:
    s = PollSchedule()
    assert s.first() == UNKNOWN_LADDER[0]
    assert UNKNOWN_LADDER[0] + s.next(UNKNOWN_LADDER[0], 1) == pytest.approx(UNKNOWN_LADDER[1])
    later = s.next(10.0, 5)
    assert 1.0 < later <= 30.0  # backing off, never beyond the cap


@pytest.mark.parametrize("completion", [0.3, 2.0, 7.5])
def test_the_schedule_learns_completion_times_so_responses_are_fetched_soon_after_they_end(
    completion: float,
) -> None:
    rng = random.Random(7)
    s = PollSchedule()
    results = [_polls_until_done(s, completion * rng.uniform(0.95, 1.05)) for _ in range(400)]
    settled = results[200:]
    assert s.estimate is not None
    assert completion * 0.9 <= s.estimate <= completion * 1.2
    mean_polls = sum(p for p, _ in settled) / len(settled)
    assert mean_polls <= 2.0
    first_done = sum(1 for p, _ in settled if p == 1) / len(settled)
    assert first_done == pytest.approx(FIRST_POLL_DONE_SHARE, abs=0.2)
    # Seen final soon after ending: well within the 1.3x of the completion time.
    worst_wait = max(age / completion for _, age in settled)
    assert worst_wait <= 1.3


def test_a_server_hint_is_read_in_milliseconds_and_bad_ones_are_ignored() -> None:
    assert poll_after_hint({"openai-poll-after-ms": "1500"}) == pytest.approx(1.5)
    assert poll_after_hint({"openai-poll-after-ms": "-5"}) is None
    assert poll_after_hint({"openai-poll-after-ms": "soon"}) is None
    assert poll_after_hint({}) is None
    assert poll_after_hint({"openai-poll-after-ms": str(10**9)}) == pytest.approx(30.0)  # capped


def test_before_anything_ended_only_a_probe_takes_the_first_rung() -> None:
    s = PollSchedule()
    assert s.first(probe=False) == UNKNOWN_LADDER[1]
    # A response first polled at the second rung and still running backs off from there, never at once.
    assert s.next(UNKNOWN_LADDER[1], 1) >= 0.5 * UNKNOWN_LADDER[1]


def test_a_response_polled_before_the_estimate_is_polled_next_at_the_estimate() -> None:
    s = PollSchedule()
    s.learn(6.0, None)  # the first response seen ended at 6 s
    assert s.first(probe=False) == s.first() == 6.0
    assert 2.0 + s.next(2.0, 1) == pytest.approx(6.0)  # not 3 s (the ladder), not 1 s apart


def test_when_completion_times_hardly_vary_a_response_missed_at_the_estimate_is_fetched_within_a_tenth() -> None:
    # 2 s responses, +- 0.5 %: the run's last responses decide its wall time, and a quarter of them miss the
    # estimate by a few ms. Waiting a tenth of the estimate (0.2 s) for each such miss was most of the tail.
    rng = random.Random(3)
    s = PollSchedule()
    runs = [(c, _polls_until_done(s, c)) for c in (2.0 * rng.uniform(0.995, 1.005) for _ in range(2000))][500:]
    missed = [age - c for c, (polls, age) in runs if polls > 1]
    assert len(missed) > 100  # the schedule still aims at FIRST_POLL_DONE_SHARE: misses happen
    assert max(missed) <= 0.1
    assert sum(polls for _, (polls, _) in runs) / len(runs) <= 1.5


def test_when_completion_times_vary_widely_the_steps_after_a_miss_grow_to_a_tenth_of_the_estimate() -> None:
    rng = random.Random(3)
    s = PollSchedule()
    runs = [_polls_until_done(s, rng.uniform(1.0, 30.0)) for _ in range(2000)][500:]
    assert s.estimate is not None and s.late is not None
    assert 0.5 * s.estimate * AFTER_ESTIMATE_STEP <= s.next(s.estimate, 1) <= s.estimate * AFTER_ESTIMATE_STEP
    assert sum(polls for polls, _ in runs) / len(runs) <= 2.0  # few GETs, not MIN_STEP's many


def test_when_completion_times_hardly_vary_every_response_is_seen_final_within_20_ms_of_its_end() -> None:
    # 2 s responses, ending up to 5 ms apart: steps of 5 % of the estimate (0.1 s) kept it swinging 25-50 ms
    # above their end, and every response, the run's last ones too, waited that long past it.
    rng = random.Random(5)
    s = PollSchedule()
    ends = [2.0 - rng.uniform(0.0, 0.005) for _ in range(2000)]
    runs = [(c, _polls_until_done(s, c)) for c in ends][500:]
    waits = [age - c for c, (_, age) in runs]
    assert max(waits) <= 0.02
    assert sum(polls for _, (polls, _) in runs) / len(runs) <= 1.5


def test_one_answer_moves_the_estimate_by_no_more_than_the_gap_between_two_create_replies() -> None:
    s = PollSchedule()
    for i in range(2000):  # replied 0.25 ms apart
        s.added(i * 0.00025)
    s.learn(2.0, None)
    s.learn(1.9, True)  # found final at its first poll: down, a quarter of a gap at most
    assert 2.0 - 0.00025 <= s.estimate < 2.0
    low = s.estimate
    s.learn(2.1, False)  # still running at its first poll: up
    assert low < s.estimate <= low + 0.00025


def _run(completions: list[tuple[float, float]], get_rtt: float = 0.003) -> tuple[list[float], float]:
    """Polls responses (create reply, completion) with each first GET at its reply plus the estimate as it is when
    that comes (as the poller does); (seconds each was seen final after it ended, GETs per response)."""
    s = PollSchedule()
    events: list[tuple[float, int, int]] = []  # (time, kind 0 = first poll due / 1 = GET answered / 2 = retry due, i)
    for replied, _ in completions:
        s.added(replied)
    firsts = sorted(range(len(completions)), key=lambda i: completions[i][0])
    polls = [0] * len(completions)
    at_estimate = [False] * len(completions)
    seen_late = [0.0] * len(completions)
    gets = 0
    now = 0.0
    while firsts or events:
        first_due = completions[firsts[0]][0] + s.first(probe=False) if firsts else math.inf
        if events and events[0][0] <= first_due:
            now, kind, i = heapq.heappop(events)
        else:
            now, kind, i = first_due, 0, firsts.pop(0)
            at_estimate[i] = s.estimate is not None
        if kind in (0, 2):
            gets += 1
            heapq.heappush(events, (now + get_rtt, 1, i))
            continue
        polls[i] += 1
        replied, ends = completions[i]
        age = now - replied
        if now - get_rtt / 2 < ends:
            heapq.heappush(events, (now + s.next(age, polls[i]), 2, i))
        else:
            s.learn(age, (polls[i] == 1) if at_estimate[i] else None)
            seen_late[i] = now - ends
    return seen_late, gets / len(completions)


def test_when_later_replies_are_read_later_after_their_response_began_the_first_polls_follow() -> None:
    # A burst of 2,000 creates over 0.5 s: the busy event loop reads the last replies 60 ms after the server
    # made their responses, the first ones 5 ms after, so the last responses (which decide the run's wall
    # time) end 2 s after their create was made but only 1.94 s after its reply was read. Their first polls
    # at the first responses' age came as late as that; they follow the estimate as it moves.
    rng = random.Random(4)
    runs = []
    for i in range(2000):
        made = 0.5 * i / 2000
        lag = 0.005 + 0.06 * i / 2000 + rng.uniform(0.0, 0.01)
        runs.append((made + lag, made + 2.0))
    late, gets = _run(runs)
    assert max(late[-100:]) <= 0.03  # at their replies plus the first response's age: 0.065-0.07
    assert gets <= 1.5
