"""Rate limits: RPM/TPM pacing, `x-ratelimit-*` headers, one pool-wide pause on 429, adaptive concurrency.

Providers enforce per-minute limits over short windows (60,000 RPM may mean 1,000 per second), so the
budgets are paced evenly rather than spent in bursts: a GCRA pacer lets no one-second window hold more
than a second's share of the budget plus BURST (10 %). Everything takes an injectable clock.

Several runners on one store share one budget (`SharedSlots`): while more than one is live, each sends
requests only in send slots booked from one GCRA row in the store (the worker's heartbeat books them, a
block at a time), tokens are paced at the runner's share of the budget, and a pause is published to the
others. A runner alone never touches any of it, and paces exactly as before.

Over 400 lines on purpose: the shared slots are one more gate of the same limiter, and the pool's pacing
reads best with every gate in one place; the store side of the budget is runner/store/fleet.py.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import orjson

from runner.reply import MAX_COUNT, finite_seconds, header_count

log = logging.getLogger(__name__)

BURST = 0.10  # a second's share may be exceeded by this fraction inside any one-second window
SEND_JITTER = 0.005  # seconds a request may reach the server later than booked (event loop, network)
HEADER_SAFETY = 0.97  # pace at this share of a limit learnt from headers, to stay under it
MAX_HEADER_PAUSE = 60.0
LONG_WAIT = 5.0  # a pool-wide pause longer than this is said, once, in plain words
POLL_SHARE = 0.25  # polls may use at most this share of a request budget, so they never starve submissions
# ... while there are submissions to starve: once a run has nothing left to send but polls, they may use all of it.
# At the mock's notional 1,000,000 RPM the share held 2,000 GETs to ~4,000 a second (`make bench` scenario 4),
# while the responses, made by creates that went out faster, came due at up to 10,000 a second: the last ones
# were polled ~100 ms after they were due, and the run ended as much later.
CHARS_PER_TOKEN = 4.0
SLOW_START_WINDOW = 8  # requests in flight before the server's limits are known (no --rpm/--tpm given)
# Limits an earlier run of the store read in the same key's headers for the same model are used this long: a
# nightly or weekly job starts paced at them instead of a slow start. A server's limits seldom change, and the
# first reply's headers replace them whichever way they moved.
REMEMBER_LIMITS_FOR = 7 * 86_400.0
SHARED_BLOCK_SECONDS = 0.5  # a runner books this much of the fleet's request budget at a time ...
MAX_SHARED_BLOCK = 256  # ... but never more slots than this in one booking (one store write per block)
# A shared slot whose time passed more than this ago is dropped, not used late: a late send bunched with
# the next runner's on-time one could put more than a second's share into one window.
STALE_SLOT = BURST / 2
# Salts the hash that names a shared budget, so the store holds no plain hash of an API key.
_BUDGET_SALT = b"runner/rate-budget/v1\0"

Clock = Callable[[], float]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


@functools.lru_cache(maxsize=4096)  # every reply carries two of these, and the same few values repeat
def parse_duration(value: str | None) -> float | None:
    """Seconds in a Go-style duration (`1s`, `6m0s`, `20ms`, `1m30.5s`, `14.981s`); a bare number is seconds.

    Missing, negative (`-1`), unparsable, infinite, nan or absurd (over a year) values mean "unknown" and
    give None.
    """
    if value is None:
        return None
    v = value.strip()
    if not v or v.startswith("-") or len(v) > 64:
        return None
    try:
        return finite_seconds(float(v))
    except ValueError:
        pass
    pos = 0
    total = 0.0
    for m in _DURATION.finditer(v):
        if m.start() != pos:
            return None
        n = float(m.group(1))
        total += {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}[m.group(2)] * n
        pos = m.end()
    return finite_seconds(total) if pos == len(v) and pos > 0 else None


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    return header_count(headers.get(name))


def model_of(body: str) -> str | None:
    """The `model` a request body names (None if it names none, or is not a JSON object)."""
    try:
        model = orjson.loads(body).get("model")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    # A name no provider gives (over 256 characters) is not kept: it would not fit a PostgreSQL index entry.
    return model if isinstance(model, str) and 0 < len(model) <= 256 else None


class Pacer:
    """Generic cell rate algorithm: spaces out units at `rate` per second with a small burst tolerance.

    `reserve(n)` books n units and returns how long the caller must wait before using them; bookings are
    first come, first served, so concurrent callers queue instead of racing.
    """

    def __init__(self, rate: float, clock: Clock = time.monotonic, burst: float = BURST) -> None:
        self.clock = clock
        self._tat = 0.0  # theoretical arrival time of the next unit
        self.burst = burst
        self.rate = rate

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, rate: float) -> None:
        self._rate = max(rate, 1e-9)
        # Seconds of budget that may be used early. A window of one second then holds at most
        # ceil((1 + tolerance) * rate) bookings; half of BURST is kept back for the jitter between booking
        # and the request reaching the server, so the server's count stays within a second's share + BURST
        # from the first request on. At low rates (20/s and below) nothing is sent early at all.
        self._tolerance = max(0.0, self.burst / 2 - 1.0 / self._rate)
        # Below 1/BURST a second, a second's share + BURST is the share itself: a request that arrives a
        # little late and the next one on time would share a window. Spacing them a little wider than the
        # rate keeps them apart, at a cost of under 5 % of the budget.
        self._margin = SEND_JITTER if self._rate * self.burst < 1.0 else 0.0

    def forget_bookings(self) -> None:
        """Book from now on as if nothing were booked (the turns booked so far are booked again by their takers)."""
        self._tat = min(self._tat, self.clock())

    def hold_until(self, t: float) -> None:
        """Book nothing before `t` (after a pause, bookings restart evenly from its end, not in a burst)."""
        self._tat = max(self._tat, t)

    def reserve(self, units: float = 1.0) -> float:
        now = self.clock()
        tat = max(self._tat, now)
        start = max(now, tat - self._tolerance)
        self._tat = tat + units / self._rate + self._margin
        return start - now


@dataclass
class Estimator:
    """Estimates the tokens a request will be charged, calibrated by the usage that comes back."""

    ratio: float = 1.0  # actual / raw estimate, learnt
    _raw_sum: float = 0.0
    _actual_sum: float = 0.0

    @staticmethod
    def raw(body: Mapping[str, Any]) -> float:
        """Input text and instructions at ~4 characters a token, plus max_output_tokens when given."""
        out = body.get("max_output_tokens")
        return Estimator.input_tokens(body) + (out if isinstance(out, int) else 0)

    @staticmethod
    def input_tokens(body: Mapping[str, Any]) -> float:
        """Input text and instructions at ~4 characters a token (at least 1)."""
        chars = 0
        instr = body.get("instructions")
        if isinstance(instr, str):
            chars += len(instr)
        chars += _text_len(body.get("input"))
        return max(chars / CHARS_PER_TOKEN, 1.0)

    def estimate(self, body: Mapping[str, Any]) -> float:
        return self.raw(body) * self.ratio

    def observe(self, raw: float, actual: int) -> None:
        """Feed back one request's real total tokens; the ratio is the running total, so it converges."""
        if actual <= 0 or raw <= 0:
            return
        self._raw_sum += raw
        self._actual_sum += actual
        self.ratio = self._actual_sum / self._raw_sum


def _text_len(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_len(v) for v in value)
    if isinstance(value, dict):
        n = 0
        for k in ("content", "text", "output"):
            n += _text_len(value.get(k))
        return n
    return 0


class AdaptiveConcurrency:
    """AIMD: +1 slot after a window of healthy replies, x0.7 on a 429 or timeout (at most once per cooldown).

    With `slow_start`, the pool opens at SLOW_START_WINDOW slots and grows by one per healthy reply (doubling
    every round trip) until `end_slow_start()`, called once the server's limits are known (or a reply shows it
    sends none): the first full-concurrency burst must not go out before the limit it may break is known. It
    does not grow with time while no reply has come: a server with real latencies (1-30 s) enforcing 20
    requests a second would answer every request sent beyond those in its first second with a 429 (tried: at
    1 s latency, up to 11 % 429s).
    """

    DECREASE = 0.7

    def __init__(
        self, maximum: int, clock: Clock = time.monotonic, cooldown: float = 1.0, *, slow_start: bool = False
    ) -> None:
        self.maximum = max(1, maximum)
        self.limit = min(self.maximum, SLOW_START_WINDOW) if slow_start else self.maximum
        self.slow_start = self.limit < self.maximum
        self._clock = clock
        self._cooldown = cooldown
        self._healthy = 0
        self._last_decrease = -math.inf

    def end_slow_start(self) -> None:
        """The limits are known (pacing takes over): open every slot at once."""
        if self.slow_start:
            self.slow_start = False
            self.limit = self.maximum

    def on_success(self) -> None:
        if self.limit >= self.maximum:
            return
        if self.slow_start:
            self.limit += 1
            self.slow_start = self.limit < self.maximum
            return
        self._healthy += 1
        if self._healthy >= self.limit:
            self._healthy = 0
            self.limit += 1

    def on_overload(self, in_flight: int | None = None) -> None:
        """A 429 or a timeout: cut the window, from the requests in flight when fewer are (a pool still
        opening its slots is cut to below what the server took, not to 70 % of slots never used)."""
        now = self._clock()
        if now - self._last_decrease < self._cooldown:
            return  # one decrease per burst of 429s, not one per failing request
        self._last_decrease = now
        self._healthy = 0
        self.slow_start = False
        window = self.limit if in_flight is None else min(self.limit, max(in_flight, 1))
        self.limit = max(1, int(window * self.DECREASE))


def budget_id(base_url: str, api_key: str | None) -> str:
    """The name of the rate budget of one API endpoint and key, as stored: a salted hash, never the key."""
    h = hashlib.sha256(_BUDGET_SALT)
    h.update(base_url.rstrip("/").encode())
    h.update(b"\0")
    h.update((api_key or "").encode())
    return f"requests:{h.hexdigest()[:32]}"


class SharedSlots:
    """Request send slots booked ahead from a budget shared with the other runners of one store.

    Inactive (and untouched) while this runner is alone. When active, each request takes the next booked
    slot (a time on the limiter's own clock: the store hands out offsets from its "now") and waits for it.
    A booking task (the worker's heartbeat) is asked for another block when few remain, and publishes the
    pauses this runner met to the others.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.active = False
        self.runners = 1  # live runners on the store, this one included
        self._slots: deque[float] = deque()
        self._low = 1
        self._demand = False  # a request took a slot and few are left (or none): book another block
        self._want = anyio.Event()
        self._added = anyio.Event()
        self.pause_to_publish = 0.0  # when a pause this runner met ends, not yet published (0: none)
        self.last_slot = 0.0  # the last slot booked
        self.not_before = 0.0  # no slot may be booked before this (set when sharing starts)

    def add(self, slots: list[float]) -> None:
        """Slots just booked (in order, after every slot booked before)."""
        self._slots.extend(slots)
        self._low = max(len(slots) // 2, 1)
        self._demand = False
        if slots:
            self.last_slot = slots[-1]
        self._added.set()
        self._added = anyio.Event()

    def clear(self) -> None:
        """Forget the booked slots (sharing ended); waiters are released to pace locally."""
        self._slots.clear()
        self._added.set()
        self._added = anyio.Event()

    @property
    def wants_more(self) -> bool:
        """Whether the booking task should book another block now (only on demand: an idle runner books none)."""
        return self.active and self._demand

    async def wanted(self) -> None:
        """Wait until a block should be booked or a pause published."""
        while not (self.wants_more or self.pause_to_publish):
            await self._want.wait()
            self._want = anyio.Event()

    def note_pause(self, until: float) -> None:
        """Publish this pause (a 429, a window run dry) to the other runners."""
        if until > self.pause_to_publish:
            self.pause_to_publish = until
            self._want.set()

    async def next_slot(self, not_before: float) -> float | None:
        """The next usable slot at or after `not_before`, waiting for a booking if none is left; None when
        sharing ended meanwhile."""
        while self.active:
            now = self.clock()
            while self._slots and (self._slots[0] < now - STALE_SLOT or self._slots[0] < not_before):
                self._slots.popleft()
            if self._slots:
                slot = self._slots.popleft()
                if len(self._slots) <= self._low:
                    self._demand = True
                    self._want.set()
                return slot
            self._demand = True
            self._want.set()
            await self._added.wait()
        return None


class RateLimiter:
    """The pool's gate: request and token pacing, header-driven slow-down, and one shared 429 pause."""

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.clock = clock
        self.user_rpm = rpm
        self.user_tpm = tpm
        self.requests: Pacer | None = None
        self.tokens: Pacer | None = None
        self.polls: Pacer | None = None
        self._polls_alone = False  # nothing left to send but polls (see POLL_SHARE)
        self._polls_repaced = anyio.Event()  # set when they are: polls waiting for a turn at the share book again
        self._pace_as_given()
        self.polls_count = False  # learnt: the server's request budget moves on GET polls too
        self.paused_until = 0.0
        self.pauses = 0
        self.estimator = Estimator()
        self._seen_limits: tuple[str | None, str | None] = (None, None)
        # Limits an earlier run read for this budget, by model (the heartbeat loads them), and those this run
        # read (`heard`: in the last reply whose limit headers changed, waiting for the sender to name its
        # model; `learnt`: by model, waiting for the heartbeat to keep them).
        self.remembered: dict[str, tuple[int | None, int | None]] = {}
        self.heard: tuple[int | None, int | None] | None = None
        self.learnt: dict[str, tuple[int | None, int | None]] = {}
        self._seeded = False  # pacing at remembered limits: the first headers replace them, up or down
        self._repaced: anyio.Event | None = None  # set when the pace is dropped: turns booked at it are booked again
        self._notice: str | None = None
        self._notice_until = -math.inf
        self.shared: SharedSlots | None = None  # set by a run that may share its budget with other runners

    @property
    def sharing(self) -> bool:
        """Whether requests take the fleet's shared slots (more than one runner is live on the store)."""
        return self.shared is not None and self.shared.active

    def share(self, runners: int) -> None:
        """The number of live runners changed: share the budget with the others, or pace alone again."""
        shared = self.shared
        if shared is None:
            return
        shared.runners = max(runners, 1)
        sharing = runners > 1 and (self.requests is not None or self.tokens is not None)
        if sharing == shared.active:
            return
        shared.active = sharing
        if sharing and self.requests is not None:
            # The last request paced alone may be going out now: the first shared slot comes one interval later.
            # (Requests booked alone but still waiting take shared slots instead.)
            shared.not_before = self.clock() + 1.0 / self.requests.rate
        if not sharing:
            shared.clear()
            req = self.requests
            if req is not None:  # no burst when pacing alone again: one interval after the last shared slot
                after = max(shared.last_slot - self.clock(), 0.0) + 1.0 / req.rate
                req.hold_until(self.clock() + after + req.burst)  # a booking may come `burst` early

    async def shared_turn(self, *, booked_alone: bool) -> bool:
        """Wait for this request's shared send slot; False when it must book again (a pause began meanwhile,
        or sharing ended after `delay_for` left the request to the shared budget)."""
        shared = self.shared
        if shared is None or self.requests is None:
            return True
        if not shared.active:
            return booked_alone
        slot = await shared.next_slot(self.clock() + self.remaining_pause())
        if slot is None:  # sharing ended while waiting: book again, alone
            return False
        wait = slot - self.clock()
        if wait > 0:
            await anyio.sleep(wait)
        return self.remaining_pause() <= 0

    @property
    def limits_known(self) -> bool:
        """Whether requests are paced (a budget was given or learnt from headers)."""
        return self.requests is not None or self.tokens is not None

    def budget_left(self, headers: Mapping[str, str]) -> bool:
        """Whether a 429's own headers show room left in the server's window: a random 429 (load shedding),
        not the budget running out, so it must not pause the pool or shrink it as an overload does."""
        rem_req = _int_header(headers, "x-ratelimit-remaining-requests")
        rem_tok = _int_header(headers, "x-ratelimit-remaining-tokens")
        if rem_req is None and rem_tok is None:
            return False
        return (rem_req is None or rem_req > 0) and (rem_tok is None or rem_tok > 0)

    @property
    def needs_tokens(self) -> bool:
        """Whether request bodies must be read to estimate tokens."""
        return self.tokens is not None

    def delay_for(self, est_tokens: float) -> float:
        """Book one request of `est_tokens`; seconds to wait before sending it.

        While the budget is shared, requests wait for a shared slot instead (`shared_turn`), and tokens are
        paced at this runner's share of the budget: each booking counts once per live runner.
        """
        now = self.clock()
        wait = max(self.paused_until - now, 0.0)
        shared = self.shared
        if self.requests is not None and (shared is None or not shared.active):
            wait = max(wait, self.requests.reserve(1))
        if self.tokens is not None and est_tokens > 0:
            share = shared.runners if shared is not None and shared.active else 1
            wait = max(wait, self.tokens.reserve(est_tokens * share))
        return wait

    def poll_delay(self) -> float:
        """Book one poll; polls have their own, smaller share and only touch the request budget if it counts them."""
        now = self.clock()
        wait = max(self.paused_until - now, 0.0)
        if self.polls is not None:
            wait = max(wait, self.polls.reserve(1))
        if self.polls_count and self.requests is not None:
            wait = max(wait, self.requests.reserve(1))
        return wait

    def say(self, text: str, until: float) -> None:
        """Tell the user about a long wait once: on stderr (WARNING) and in the progress display.

        Waits announced while an earlier one still runs are the same stand-still, and are not said again.
        """
        now = self.clock()
        if now < self._notice_until:
            self._notice_until = max(self._notice_until, until)
            return
        self._notice_until = until
        self._notice = text
        log.warning("%s", text)

    @property
    def notice(self) -> str | None:
        """The long wait now in force, in plain words (None when there is none)."""
        return self._notice if self.clock() < self._notice_until else None

    def obey_retry_after(self, seconds: float | None, asked: float | None, *, pool: bool) -> None:
        """A server's Retry-After: for a 429 (`pool`) the whole pool pauses (1 s if none was given), else only
        that request waits. Either way a wait cut to the cap, or longer than LONG_WAIT, is said."""
        capped = seconds is not None and asked is not None and asked > seconds
        why = f"server asked to wait {asked:g} s; waiting the {seconds:g} s cap" if capped else None
        if pool:
            wait = 1.0 if seconds is None else seconds
            self.pause(wait, why=why or f"server asked to wait {wait:g} s; pausing all requests until then")
        elif seconds is not None and seconds > LONG_WAIT:
            self.say(why or f"server asked to wait {seconds:g} s before retrying a request", self.clock() + seconds)

    def remaining_pause(self) -> float:
        return max(self.paused_until - self.clock(), 0.0)

    def pause(self, seconds: float, *, why: str | None = None) -> None:
        """Hold the whole pool for `seconds` (a 429): later pauses extend, earlier ones do not shorten.

        A pause longer than LONG_WAIT is said (`why`, or a plain default) unless one already said covers it.
        """
        seconds = seconds if math.isfinite(seconds) else 0.0
        until = self.clock() + max(seconds, 0.0)
        if seconds > LONG_WAIT:
            self.say(why or f"pausing all requests for {seconds:.0f} s", until)
        if until > self.paused_until:
            if self.shared is not None and self.shared.active:
                self.shared.note_pause(until)
            self.paused_until = until
            self.pauses += 1
            for p in (self.requests, self.tokens, self.polls):
                if p is not None:
                    p.hold_until(until)

    def observe(
        self, headers: Mapping[str, str], *, in_flight: int = 0, poll: bool = False, answered: bool = False
    ) -> None:
        """Read `x-ratelimit-*` on a reply (`answered`: a 2xx one): adopt the server's limits, and pause before a
        window runs dry."""
        if answered and self._seeded and not poll:
            self._unless_said(headers)
        if not headers:
            return
        if poll and "x-ratelimit-remaining-requests" in headers:
            self.polls_count = True
        limits = (headers.get("x-ratelimit-limit-requests"), headers.get("x-ratelimit-limit-tokens"))
        if limits != self._seen_limits:  # they rarely change: parse them only when they do
            self._seen_limits = limits
            self._adopt_limits(headers)
            if poll:  # a poll's request names no model: its limits are not kept for later runs
                self.heard = None
        self._check_remaining(headers)

    def seed(self, model: str | None) -> bool:
        """Pace from the first request at the limits an earlier run read for `model` (`remembered`), as if
        this run's first reply had said them; False when there are none. The first reply that does say limits
        replaces these, higher or lower."""
        known = self.remembered.get(model) if model is not None else None
        if known is None:
            return False
        # Read back from a file anyone may edit: a limit a header could not have said is none (a negative one
        # paced the run at one request per 1e9 s).
        rpm, tpm = (v if isinstance(v, int) and 0 < v <= MAX_COUNT else None for v in known)
        if rpm is None and tpm is None:
            return False
        self._set_limits(rpm, tpm, replace=False)
        self._seeded = True
        # Said (at --log-level info) because a run that opens every slot at once is otherwise unexplained.
        said = ", ".join(f"{v:,} {unit}/min" for v, unit in ((rpm, "requests"), (tpm, "tokens")) if v is not None)
        log.info(
            "no slow start: pacing at the limits an earlier run read for %s (%s) until a reply says its own",
            model,
            said,
        )
        return True

    def _pace_as_given(self) -> None:
        """Pace at `--rpm` / `--tpm` alone (none: unpaced), as a run starts."""
        rpm, tpm = self.user_rpm, self.user_tpm
        self.requests = Pacer(rpm / 60.0, self.clock) if rpm else None
        self.tokens = Pacer(tpm / 60.0, self.clock) if tpm else None
        self.polls = Pacer(rpm / 60.0 * self._poll_share(), self.clock) if rpm else None

    def _poll_share(self) -> float:
        return 1.0 if self._polls_alone else POLL_SHARE

    def submissions_done(self, done: bool) -> None:
        """Whether the run has nothing left to send but polls: polls may then use the whole request budget, as
        there are no submissions their share (POLL_SHARE) would keep from starving."""
        if done == self._polls_alone:
            return
        self._polls_alone = done
        if self.polls is not None and self.requests is not None:
            self.polls.rate = self.requests.rate * self._poll_share()
            if done:
                # The turns booked ahead are all polls' (no submission waits for one: nothing is left to send), at
                # the share: they are booked again at the whole budget's pace, once each on each pacer.
                self.polls.forget_bookings()
                self.requests.forget_bookings()
                self._polls_repaced.set()
                self._polls_repaced = anyio.Event()

    async def wait_poll_turn(self, seconds: float) -> bool:
        """Sleep until a poll's booked turn, `seconds` away; True when woken early because polls were given the
        whole budget (`submissions_done`): the turn is then booked again at that pace."""
        repaced = self._polls_repaced
        with anyio.move_on_after(seconds):
            await repaced.wait()
            return True
        return False

    def _unless_said(self, headers: Mapping[str, str]) -> None:
        """Paced at remembered limits, the first answer says none: the server no longer advertises limits (the
        limit was lifted, or the URL now fronts vLLM), so the run goes unpaced, and later runs forget them."""
        if _int_header(headers, "x-ratelimit-limit-requests") or _int_header(headers, "x-ratelimit-limit-tokens"):
            return  # said: _adopt_limits replaces them
        self._seeded = False
        self._pace_as_given()
        self.heard = (None, None)  # kept as "no limits" for this model: the next run does not pace at them either
        if self._repaced is not None:
            self._repaced.set()
            self._repaced = None
        log.info("the server's reply says no rate limits: no longer pacing at the limits an earlier run read")

    async def wait_turn(self, seconds: float) -> bool:
        """Sleep until a booked turn, `seconds` away; True when woken early because the pace was dropped (the
        turn is then booked again: requests booked a minute apart at a limit the server no longer has must not
        keep those turns)."""
        if self._repaced is None:
            self._repaced = anyio.Event()
        repaced = self._repaced
        with anyio.move_on_after(seconds):
            await repaced.wait()
            return True
        return False

    def learn(self, model: str | None) -> None:
        """The limits just `heard` came with a reply to a request for `model`: keep them for later runs."""
        heard, self.heard = self.heard, None
        if heard is not None and model is not None and self.remembered.get(model) != heard:
            self.remembered[model] = self.learnt[model] = heard

    def take_learnt(self) -> dict[str, tuple[int | None, int | None]]:
        """The limits learnt since the last call, by model (for the store)."""
        learnt, self.learnt = self.learnt, {}
        return learnt

    def _adopt_limits(self, headers: Mapping[str, str]) -> None:
        limit_req = _int_header(headers, "x-ratelimit-limit-requests")
        limit_tok = _int_header(headers, "x-ratelimit-limit-tokens")
        if limit_req or limit_tok:
            self.heard = (limit_req or None, limit_tok or None)
        self._set_limits(limit_req, limit_tok, replace=self._seeded)
        if limit_req or limit_tok:
            self._seeded = False

    def _set_limits(self, limit_req: int | None, limit_tok: int | None, *, replace: bool) -> None:
        """Pace at these limits (per minute); a known pace only goes down (a job of several models keeps the
        lowest), unless `replace` (remembered limits meeting the server's own)."""
        if limit_req:
            rate = limit_req / 60.0 * HEADER_SAFETY
            if self.user_rpm is not None:
                rate = min(rate, self.user_rpm / 60.0)
            if self.requests is None:
                self.requests = Pacer(rate, self.clock)
                self.polls = Pacer(rate * self._poll_share(), self.clock)
            elif replace or rate < self.requests.rate:
                self.requests.rate = rate
                if self.polls is not None:
                    self.polls.rate = rate * self._poll_share()
        if limit_tok:
            rate = limit_tok / 60.0 * HEADER_SAFETY
            if self.user_tpm is not None:
                rate = min(rate, self.user_tpm / 60.0)
            if self.tokens is None:
                self.tokens = Pacer(rate, self.clock)
            elif replace or rate < self.tokens.rate:
                self.tokens.rate = rate

    def _check_remaining(self, headers: Mapping[str, str]) -> None:
        rem_req = _int_header(headers, "x-ratelimit-remaining-requests")
        reset_req = parse_duration(headers.get("x-ratelimit-reset-requests"))
        # Pacing keeps us under the limit; this catches a budget shared with other clients running dry.
        if rem_req is not None and reset_req is not None and rem_req <= 0:
            self._window_dry("request", min(reset_req, MAX_HEADER_PAUSE))
        rem_tok = _int_header(headers, "x-ratelimit-remaining-tokens")
        reset_tok = parse_duration(headers.get("x-ratelimit-reset-tokens"))
        if rem_tok is not None and reset_tok is not None and rem_tok <= 0:
            self._window_dry("token", min(reset_tok, MAX_HEADER_PAUSE))

    def _window_dry(self, kind: str, seconds: float) -> None:
        self.pause(seconds, why=f"rate-limit {kind} window exhausted; pausing {seconds:.0f} s until reset")
