"""Rate limiting with a fake clock: pacing windows, headers, the shared pause, AIMD, token estimates."""

from __future__ import annotations

import bisect
import itertools
import logging
import random

import pytest

from runner.limits import (
    BURST,
    HEADER_SAFETY,
    SLOW_START_WINDOW,
    AdaptiveConcurrency,
    Estimator,
    Pacer,
    RateLimiter,
    model_of,
    parse_duration,
)


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1m30.5s", 90.5),
        ("14.981s", 14.981),
        ("119ms", 0.119),
        ("1h2m3s", 3723.0),
        ("3", 3.0),  # Azure sends bare integer seconds
        ("0", 0.0),
        ("-1", None),
        ("", None),
        (None, None),
        ("soon", None),
        ("5x", None),
        ("1s2", None),
    ],
)
def test_parse_duration(value: str | None, seconds: float | None) -> None:
    got = parse_duration(value)
    if seconds is None:
        assert got is None
    else:
        assert got == pytest.approx(seconds)


def _send_times(pacer: Pacer, clock: FakeClock, n: int, units: float = 1.0) -> list[float]:
    """Times at which n callers that each book then sleep would actually send."""
    return [clock.t + pacer.reserve(units) for _ in range(n)]


@pytest.mark.parametrize("rpm", [60, 600, 1200, 3000, 60_000])
def test_no_one_second_window_holds_more_than_its_share_plus_burst_from_the_first_request(rpm: int) -> None:
    clock = FakeClock()
    per_second = rpm / 60
    pacer = Pacer(per_second, clock)
    rng = random.Random(rpm)
    # Fifty callers book at once (a full pool at the start), then each reaches the server a little late:
    # 0-5 ms of jitter between booking and arrival, as the event loop and the network add.
    booked = _send_times(pacer, clock, int(per_second * 5) + 50)
    times = sorted(t + rng.uniform(0.0, 0.005) for t in booked)
    # Slide a one-second window over every arrival: even the first second holds no more than its share
    # plus BURST.
    busiest = max(bisect.bisect_left(times, s + 1.0) - i for i, s in enumerate(times))
    assert busiest <= per_second * (1 + BURST)
    # And the budget is used: the sends take about as long as the budget allows, no longer.
    assert booked[-1] - booked[0] == pytest.approx((len(booked) - 1) / per_second, rel=0.06, abs=1.1 / per_second)


def test_token_pacing_spaces_large_requests() -> None:
    clock = FakeClock()
    pacer = Pacer(300_000 / 60, clock)  # 5,000 tokens a second
    waits = [pacer.reserve(2500) for _ in range(4)]
    assert waits[0] == 0
    assert 1.5 - BURST <= waits[-1] <= 1.5  # at most BURST of a second early


def test_a_429_pauses_the_pool_once_and_bookings_restart_evenly_after_it() -> None:
    clock = FakeClock()
    lim = RateLimiter(rpm=600, clock=clock)  # 10 a second
    assert lim.delay_for(0) == 0
    lim.pause(2.0)
    lim.pause(1.0)  # an earlier end does not shorten the pause
    assert lim.pauses == 1
    waits = [lim.delay_for(0) for _ in range(6)]
    assert min(waits) == pytest.approx(2.0)  # nobody goes before the pause ends
    # No burst when the pause ends: at most the pacer's burst allowance (one request at 10/s) shares
    # the first instant, then sends are 0.1 s apart.
    assert sum(1 for w in waits if w == pytest.approx(2.0)) <= 1 + 10 * BURST
    gaps = [b - a for a, b in itertools.pairwise(waits[1:])]
    assert all(g == pytest.approx(0.1, abs=1e-6) for g in gaps)


def test_headers_set_the_pace_when_no_budget_was_given() -> None:
    clock = FakeClock()
    lim = RateLimiter(clock=clock)
    assert lim.delay_for(0) == 0 and lim.requests is None
    lim.observe(
        {
            "x-ratelimit-limit-requests": "600",
            "x-ratelimit-remaining-requests": "599",
            "x-ratelimit-reset-requests": "100ms",
            "x-ratelimit-limit-tokens": "60000",
            "x-ratelimit-remaining-tokens": "59000",
            "x-ratelimit-reset-tokens": "1s",
        }
    )
    assert lim.requests is not None and lim.tokens is not None
    assert lim.requests.rate == pytest.approx(10 * 0.97)
    assert lim.tokens.rate == pytest.approx(1000 * 0.97)
    assert lim.paused_until <= clock.t  # plenty left: no pause


def test_user_budget_below_the_servers_limit_wins() -> None:
    lim = RateLimiter(rpm=120, clock=FakeClock())
    lim.observe({"x-ratelimit-limit-requests": "6000"})
    assert lim.requests is not None and lim.requests.rate == pytest.approx(2.0)


def test_an_exhausted_window_pauses_until_its_reset() -> None:
    clock = FakeClock()
    lim = RateLimiter(clock=clock)
    lim.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1m30.5s"})
    assert lim.remaining_pause() == pytest.approx(60.0)  # capped
    lim2 = RateLimiter(clock=clock)
    lim2.observe({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "750ms"})
    assert lim2.remaining_pause() == pytest.approx(0.75)


@pytest.mark.parametrize("value", ["-1", "", "abc"])
def test_unknown_header_values_are_ignored(value: str) -> None:
    clock = FakeClock()
    lim = RateLimiter(clock=clock)
    lim.observe(
        {
            "x-ratelimit-limit-requests": value,
            "x-ratelimit-remaining-requests": value,
            "x-ratelimit-reset-requests": value,
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": value,
        }
    )
    assert lim.requests is None and lim.remaining_pause() == 0


def test_polls_use_their_own_share_and_the_request_budget_only_when_the_server_counts_them() -> None:
    clock = FakeClock()
    lim = RateLimiter(rpm=600, clock=clock)
    poll_waits = [lim.poll_delay() for _ in range(3)]
    assert poll_waits[1] > 0  # polls are paced at a quarter of the request rate
    assert lim.delay_for(0) == 0  # and did not eat the submissions' budget
    lim.observe({"x-ratelimit-remaining-requests": "500"}, poll=True)
    assert lim.polls_count


def test_polls_take_the_whole_request_budget_once_nothing_is_left_to_send_and_their_share_again_after() -> None:
    clock = FakeClock()
    lim = RateLimiter(rpm=6000, clock=clock)  # 100 a second: polls' share 25

    def polls_in_one_second() -> int:
        """Polls sent one after another, each when its booking says, within one second."""
        start, n = clock.t, 0
        while True:
            clock.t += lim.poll_delay()
            if clock.t >= start + 1.0:
                break
            n += 1
        clock.t = start + 3.0  # the next count starts with nothing booked ahead
        return n

    shared = polls_in_one_second()
    lim.submissions_done(True)
    alone = polls_in_one_second()
    lim.submissions_done(False)  # a retry came due: submissions are back, and polls keep to their share
    again = polls_in_one_second()
    assert shared <= 30 and alone >= 90 and again <= 30, (shared, alone, again)
    lim.observe({"x-ratelimit-limit-requests": "3000"})  # a lower limit heard meanwhile: the share follows it
    lim.submissions_done(True)
    assert lim.polls is not None and lim.requests is not None and lim.polls.rate == lim.requests.rate


def test_aimd_shrinks_once_per_burst_and_grows_back_by_one() -> None:
    clock = FakeClock()
    c = AdaptiveConcurrency(100, clock=clock)
    c.on_overload()
    c.on_overload()  # same burst: no second cut
    assert c.limit == 70
    clock.t += 2
    c.on_overload()
    assert c.limit == 49
    for _ in range(49):
        c.on_success()
    assert c.limit == 50
    for _ in range(10_000):
        c.on_success()
    assert c.limit == 100  # never above --concurrency
    one = AdaptiveConcurrency(1, clock=clock)
    one.on_overload()
    assert one.limit == 1  # never below 1


def test_an_overload_cuts_from_the_requests_in_flight_when_fewer_than_the_slots() -> None:
    clock = FakeClock()
    c = AdaptiveConcurrency(1000, clock=clock)
    # A pool still opening its slots met a 429 with 40 requests out: cut below what the server took, not to
    # 700 slots it never used (a server that keeps its limit to itself would answer most of them 429).
    c.on_overload(in_flight=40)
    assert c.limit == 28
    clock.t += 2
    c.on_overload(in_flight=500)  # more in flight than the window allows (it was just cut): cut the window
    assert c.limit == 19
    clock.t += 2
    c.on_overload(in_flight=0)
    assert c.limit == 1  # never below 1


def test_slow_start_opens_a_few_slots_then_all_once_limits_are_known() -> None:
    c = AdaptiveConcurrency(200, slow_start=True)
    assert c.limit == SLOW_START_WINDOW
    c.on_success()
    assert c.limit == SLOW_START_WINDOW + 1  # one more per healthy reply: doubling every round trip
    c.end_slow_start()
    assert c.limit == 200 and not c.slow_start
    # Until told (limits known, or a reply without any limit header), the window doubles each round trip.
    d = AdaptiveConcurrency(50, slow_start=True)
    for _ in range(100):
        d.on_success()
    assert d.limit == 50 and not d.slow_start
    # A budget given up front (no slow start) opens every slot at once, as before.
    assert AdaptiveConcurrency(50).limit == 50


def test_slow_start_ends_at_the_first_429_as_an_overload() -> None:
    clock = FakeClock()
    c = AdaptiveConcurrency(200, clock=clock, slow_start=True)
    for _ in range(20):
        c.on_success()
    c.on_overload()
    assert not c.slow_start and c.limit == int((SLOW_START_WINDOW + 20) * AdaptiveConcurrency.DECREASE)


def test_a_429_with_budget_left_is_load_shedding_not_an_overload() -> None:
    lim = RateLimiter(clock=FakeClock())
    full = {"x-ratelimit-remaining-requests": "512", "x-ratelimit-remaining-tokens": "90000"}
    assert lim.budget_left(full)
    assert lim.budget_left({"x-ratelimit-remaining-requests": "3"})
    # The budget ran out (either kind), or the headers say nothing: an overload.
    assert not lim.budget_left({"x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "90000"})
    assert not lim.budget_left({"x-ratelimit-remaining-requests": "5", "x-ratelimit-remaining-tokens": "0"})
    assert not lim.budget_left({})
    assert not lim.budget_left({"x-ratelimit-remaining-requests": "lots"})


def test_estimate_counts_text_and_max_output_and_converges_to_the_real_ratio() -> None:
    body = {
        "instructions": "x" * 40,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "y" * 360}]}],
        "max_output_tokens": 50,
    }
    assert Estimator.raw(body) == pytest.approx(100 + 50)
    assert Estimator.raw({"input": "abcd" * 10}) == pytest.approx(10)
    est = Estimator()
    for _ in range(50):
        est.observe(150.0, 300)  # the model really uses twice the estimate
    assert est.estimate(body) == pytest.approx(300.0)


# --- what servers send: every wrong kind of header, and long waits said once -------------------------------


@pytest.mark.parametrize("value", ["inf", "1e999s", "nan", "9" * 400 + "h", "-inf", "1e999"])
def test_parse_duration_of_absurd_values_is_unknown(value: str) -> None:
    assert parse_duration(value) is None


@pytest.mark.parametrize("value", ["inf", "1e999", "nan", "-5", "9" * 400, "lots", "1" + "0" * 30])
def test_broken_rate_limit_headers_change_nothing(value: str) -> None:
    rl = RateLimiter(clock=FakeClock())
    headers = {
        name: value
        for name in (
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        )
    }
    rl.observe(headers)
    assert rl.requests is None and rl.tokens is None
    assert rl.remaining_pause() == 0.0 and rl.notice is None


def test_a_dry_window_pause_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    rl = RateLimiter(clock=clock)
    dry = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "58s"}
    for _ in range(5):
        rl.observe(dry)
        clock.t += 1
    said = [r.getMessage() for r in caplog.records if "window exhausted" in r.getMessage()]
    assert said == ["rate-limit request window exhausted; pausing 58 s until reset"]
    assert rl.notice == said[0]
    clock.t += 60
    assert rl.notice is None  # the wait is over
    rl.observe(dry)
    assert len([r for r in caplog.records if "window exhausted" in r.getMessage()]) == 2  # a new stand-still


def test_a_short_pause_is_not_said(caplog: pytest.LogCaptureFixture) -> None:
    rl = RateLimiter(clock=FakeClock())
    rl.observe({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "2s"})
    assert rl.remaining_pause() == 2.0
    assert rl.notice is None and not caplog.records


def test_a_capped_retry_after_is_said_once_for_the_pool(caplog: pytest.LogCaptureFixture) -> None:
    rl = RateLimiter(clock=FakeClock())
    for _ in range(3):
        rl.obey_retry_after(300.0, 1e9, pool=True)
    assert rl.remaining_pause() == 300.0
    assert [r.getMessage() for r in caplog.records] == ["server asked to wait 1e+09 s; waiting the 300 s cap"]


def test_a_capped_retry_after_for_one_request_is_said_without_pausing_the_pool() -> None:
    rl = RateLimiter(clock=FakeClock())
    rl.obey_retry_after(300.0, float("inf"), pool=False)
    assert rl.remaining_pause() == 0.0
    assert rl.notice == "server asked to wait inf s; waiting the 300 s cap"


def test_a_pause_of_inf_or_nan_does_not_crash() -> None:
    rl = RateLimiter(clock=FakeClock())
    rl.pause(float("inf"))
    rl.pause(float("nan"))
    assert rl.remaining_pause() == 0.0


def test_a_long_retry_after_within_the_cap_is_said_plainly(caplog: pytest.LogCaptureFixture) -> None:
    rl = RateLimiter(clock=FakeClock())
    rl.obey_retry_after(60.0, 60.0, pool=True)
    rl.obey_retry_after(2.0, 2.0, pool=True)
    assert [r.getMessage() for r in caplog.records] == ["server asked to wait 60 s; pausing all requests until then"]


def test_a_long_retry_after_for_one_request_is_said_without_pausing_the_pool() -> None:
    rl = RateLimiter(clock=FakeClock())
    rl.obey_retry_after(3.0, 3.0, pool=False)
    assert rl.notice is None
    rl.obey_retry_after(120.0, 120.0, pool=False)
    assert rl.notice == "server asked to wait 120 s before retrying a request"
    assert rl.remaining_pause() == 0.0


def test_limits_remembered_for_the_model_pace_from_the_first_request_until_the_server_says_its_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    lim = RateLimiter(clock=clock)
    lim.remembered = {"gpt-a": (600, None)}
    caplog.set_level(logging.INFO, logger="runner.limits")
    assert not lim.seed("gpt-b") and not lim.seed(None)  # nothing read for these: a slow start
    assert not lim.limits_known and not caplog.records
    assert lim.seed("gpt-a") and lim.limits_known
    assert [r.getMessage() for r in caplog.records] == [
        "no slow start: pacing at the limits an earlier run read for gpt-a (600 requests/min) until a reply says"
        " its own"
    ]
    assert lim.requests is not None and lim.requests.rate == pytest.approx(600 / 60 * 0.97)
    # The first reply's headers replace them, upwards too (a pace learnt in this run only ever goes down) ...
    lim.observe({"x-ratelimit-limit-requests": "1200"})
    assert lim.requests.rate == pytest.approx(1200 / 60 * 0.97)
    # ... after which a higher figure (another model's reply in the same job) does not raise the pace again.
    lim.observe({"x-ratelimit-limit-requests": "6000"})
    assert lim.requests.rate == pytest.approx(1200 / 60 * 0.97)


def test_limits_heard_in_a_reply_are_kept_under_its_model_once_and_a_polls_not_at_all() -> None:
    lim = RateLimiter(clock=FakeClock())
    lim.observe({"x-ratelimit-limit-requests": "500", "x-ratelimit-limit-tokens": "90000"})
    lim.learn("gpt-a")
    assert lim.take_learnt() == {"gpt-a": (500, 90000)}
    assert lim.take_learnt() == {}
    lim.observe({"x-ratelimit-limit-requests": "500", "x-ratelimit-limit-tokens": "90000"})  # unchanged
    assert lim.heard is None
    lim.observe({"x-ratelimit-limit-requests": "700"}, poll=True)  # a GET names no model
    lim.learn("gpt-a")
    assert lim.take_learnt() == {}
    lim.observe({"x-ratelimit-limit-requests": "800"})
    lim.learn(None)  # a body without a model: nothing to key it by
    assert lim.take_learnt() == {}


@pytest.mark.parametrize(
    ("body", "model"),
    [
        ('{"model": "gpt-4.1-mini", "input": "x"}', "gpt-4.1-mini"),
        ('{"input": "x"}', None),
        ('{"model": 7}', None),
        ('{"model": ""}', None),
        ('["model"]', None),
        ("not json", None),
        ('{"model": "' + "m" * 257 + '"}', None),  # not a name any provider gives: nothing is kept under it
    ],
    ids=["model", "no model", "not a string", "empty", "not an object", "not json", "too long"],
)
def test_the_model_limits_are_kept_under_is_read_from_the_body_or_not_at_all(body: str, model: str | None) -> None:
    assert model_of(body) == model


def test_remembered_limits_above_what_the_server_now_says_are_lowered_by_its_first_reply() -> None:
    lim = RateLimiter(clock=FakeClock())
    lim.remembered = {"gpt-a": (6000, 1_000_000)}  # last week's tier
    assert lim.seed("gpt-a")
    lim.observe({"x-ratelimit-limit-requests": "600", "x-ratelimit-limit-tokens": "90000"})  # lowered since
    assert lim.requests is not None and lim.requests.rate == pytest.approx(600 / 60 * 0.97)
    assert lim.tokens is not None and lim.tokens.rate == pytest.approx(90000 / 60 * 0.97)
    lim.learn("gpt-a")
    assert lim.take_learnt() == {"gpt-a": (600, 90000)}  # and the store is told the new ones


@pytest.mark.parametrize("bad", [(-5, -7), (0, 0), (None, None), (2**41, None)])
def test_remembered_limits_no_header_could_have_said_give_a_slow_start(bad: tuple[int | None, int | None]) -> None:
    # The store is a file: a row edited to a negative limit once paced a run at one request per 1e9 s.
    lim = RateLimiter(clock=FakeClock())
    lim.remembered = {"gpt-a": bad}
    assert not lim.seed("gpt-a")
    assert not lim.limits_known


def test_a_first_answer_without_limit_headers_drops_the_remembered_limits() -> None:
    lim = RateLimiter()
    lim.remembered["m"] = (1, None)
    assert lim.seed("m") and lim.limits_known
    lim.observe({}, answered=False)  # an error reply (a proxy's 502 page) says nothing of the server's limits
    assert lim.limits_known
    lim.observe({}, answered=True)
    assert not lim.limits_known
    assert lim.heard == (None, None)  # kept as "no limits": the next run does not start at them either
    lim.learn("m")
    seeded = RateLimiter()
    seeded.remembered["m"] = lim.remembered["m"]
    assert not seeded.seed("m")


def test_a_first_answer_that_says_its_limits_replaces_the_remembered_ones() -> None:
    lim = RateLimiter(rpm=600)
    lim.remembered["m"] = (1, None)
    assert lim.seed("m")
    lim.observe({"x-ratelimit-limit-requests": "300"}, answered=True)
    assert lim.requests is not None and lim.requests.rate == pytest.approx(300 / 60 * HEADER_SAFETY)
