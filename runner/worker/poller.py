"""Background responses: GET /responses/{id} until the response is final.

Polling never holds a submission slot: it has its own small pool of in-flight GETs, and requests wait
in a heap keyed by when they are next due. When to poll comes from `PollSchedule`, which learns how long
this run's responses take, so most are fetched by their first or second GET soon after they end.

Until a response of the run has ended nothing is known, and the first PROBES responses are enough to
find out: only they take the first rung of the ladder; the others wait for its second rung or the learnt
estimate, whichever is known when they come due. Measured with 2,000 responses that take 2 s (`make bench`
scenario 4): 2.00 GETs per request before (each polled at 1 s and at 2 s), 1.0x after, and the 2,000 wasted
GETs no longer compete with the last creates.

A first poll goes at its create reply plus the estimate as it is when that comes, not as it was when the
response was added: a run's first burst is all added before any response has ended, and the replies of its
last creates were read later after the server made them (the event loop was busy), so at the first
response's age they were polled late by as much (simulated, 2,000 replies over 0.5 s read 5-65 ms after
their response began: the last 100 seen final 65-70 ms after they ended, now within 15 ms, 1.12 GETs each).

GETs run in worker tasks (at most the poll slots) that take the next due poll themselves or park until
handed one. A task per GET, and a wake of the dispatcher per poll ended and per response added, cost 113-127
us of CPU a poll; now 22-31 (20,000 polls due over 1 s, a client that answers after 1 ms, interleaved).

Over 400 lines on purpose: the schedule times the dispatcher's queue of first polls as it learns (each is due
at its reply plus the estimate as it is then), and its steps are bounded by how densely that queue fills;
apart, the two would have to share the queue's timing and the schedule's state both ways.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from runner.client import POLL_AFTER_HEADER, ApiClient
from runner.config import POLL_BACKOFF, POLL_INITIAL_DELAY, POLL_MAX_DELAY
from runner.errors import ApiError, BillingError, DoomedJobError, PermanentApiError, TransientApiError
from runner.limits import RateLimiter
from runner.reply import RESPONSE_ID_MISMATCH, header_count, read_id
from runner.states import POLL_FAILED, RequestState
from runner.store.models import Claimed, Outcome
from runner.store.outputs import CheckRecord
from runner.worker.outcomes import Checker, from_error, from_response, has_unknown_status, is_running
from runner.worker.repeats import Repeated
from runner.worker.writeback import WriteBack

log = logging.getLogger(__name__)


MAX_ID_MISMATCHES = 3  # polls answered with another response's id before the request fails


# The schedule aims for this share of first polls finding the response already final: higher wastes
# less time waiting past the end, lower spends fewer GETs.
FIRST_POLL_DONE_SHARE = 0.75
LEARN_RATE = 0.05  # the estimate's largest step (a share of it), while completion times vary widely or are unknown
MIN_LEARN_RATE = 0.002
# Before anything is known, GETs go at these ages (seconds since the create reply), then back off.
UNKNOWN_LADDER = (POLL_INITIAL_DELAY, 2 * POLL_INITIAL_DELAY)
AFTER_ESTIMATE_STEP = 0.1  # after a first poll at the estimate, the next is at most this share of it later
MIN_STEP = 0.01  # seconds: never two GETs of one response closer together than this
FIRST_LATE_STEP = 0.05  # seconds: the step after a miss until one response has shown how late misses end
LATE_LEARN_RATE = 0.2
# One observation moves the estimate by at most the mean gap between two responses' create replies (and
# never by less than this share of it): see PollSchedule.learn.
MIN_STEP_SHARE = 0.0001

PROBES = 8  # responses polled at the first rung while nothing is known (see the module's docstring)


class PollSchedule:
    """When to GET a background response, from what this run has seen of how long responses take.

    The first poll goes at the learnt estimate (a running quantile of completion ages: each first poll
    that finds the response final nudges it down, each that finds it running nudges it up, so it settles
    where FIRST_POLL_DONE_SHARE of first polls succeed); later polls follow at short, growing steps. A
    server's `openai-poll-after-ms` hint, when sent, wins. Before any response has ended the schedule is
    a fixed ladder.

    The step after a first poll that found the response running starts from how late such responses were
    (`late`, learnt), not from a fixed share of the estimate: when completion times hardly vary, a response
    missed at the estimate ends a few ms later, and waiting a tenth of the estimate (0.2 s of a 2 s job)
    for it was what the last responses of a run, and so the whole run, waited. When they vary widely,
    `late` grows and the steps with it, up to that tenth, so the GETs per response stay few.
    """

    def __init__(self) -> None:
        self.estimate: float | None = None
        self.late: float | None = None  # seconds past the estimate that responses missed there ended (EWMA)
        self._bases = 0  # responses whose ages count from a create reply (`added`), the first and last of them
        self._first_base = self._last_base = 0.0

    def added(self, at: float) -> None:
        """A response whose age counts from `at` (monotonic) will be polled at the estimate."""
        if not self._bases:
            self._first_base = at
        self._bases += 1
        self._last_base = max(self._last_base, at)

    def gap(self) -> float | None:
        """Mean seconds between two responses' create replies, once two have come."""
        if self._bases < 2:
            return None
        return (self._last_base - self._first_base) / (self._bases - 1)

    def first(self, *, probe: bool = True) -> float:
        """Seconds after the create reply for the first GET. Before anything is known, a `probe` takes the
        ladder's first rung and any other response its second."""
        if self.estimate is not None:
            return self.estimate
        return UNKNOWN_LADDER[0] if probe else UNKNOWN_LADDER[1]

    def next(self, age: float, polls: int) -> float:
        """Seconds until the next GET of a response still running at `age` after `polls` GETs."""
        if self.estimate is None:
            for rung in UNKNOWN_LADDER:  # the next rung above this age
                if rung > age + MIN_STEP:
                    return rung - age
            return min(max(age, UNKNOWN_LADDER[-1]) * (POLL_BACKOFF - 1), POLL_MAX_DELAY)
        if age < self.estimate * (1 - AFTER_ESTIMATE_STEP):
            return self.estimate - age  # polled early (a hint, or before the first response ended)
        return min(self._step() * POLL_BACKOFF ** max(polls - 1, 0), POLL_MAX_DELAY)

    def _step(self) -> float:
        """The first step after a poll at (or past) the estimate found the response running: half of how late
        such responses were, between MIN_STEP and AFTER_ESTIMATE_STEP of the estimate (FIRST_LATE_STEP until
        known: many responses may miss at once before then, and steps of MIN_STEP would cost each many GETs)."""
        assert self.estimate is not None
        ceiling = max(self.estimate * AFTER_ESTIMATE_STEP, MIN_STEP)
        late = FIRST_LATE_STEP if self.late is None else self.late / 2
        return min(max(late, MIN_STEP), ceiling)

    def learn(self, age: float, first_poll_done: bool | None) -> None:
        """A response ended, seen final `age` seconds after its create reply. `first_poll_done` says whether
        the first GET already found it final (None when its first GET did not go at the estimate)."""
        if self.estimate is None:
            self.estimate = min(age, POLL_MAX_DELAY)  # an upper bound: nudged down by the next ones
            return
        if first_poll_done is None:
            return
        if not first_poll_done:  # seen final only by a later GET: at most this late past the estimate
            excess = max(age - self.estimate, 0.0)
            self.late = excess if self.late is None else self.late + LATE_LEARN_RATE * (excess - self.late)
        step = -(1 - FIRST_POLL_DONE_SHARE) if first_poll_done else FIRST_POLL_DONE_SHARE
        # Steps as fine as the completion times are alike: with 2 s responses that vary by a few ms, steps of
        # 5 % (0.1 s) kept the estimate swinging 25-50 ms above their end, and every response waited that.
        rate = LEARN_RATE if self.late is None else min(max(self.late / self.estimate, MIN_LEARN_RATE), LEARN_RATE)
        size = rate * self.estimate
        # First polls wait for `create reply + estimate` as it is when they come due, so a step down makes every
        # response within it due at once, and their answers (found final: the estimate was still high) step it
        # down again before the first misses come back. With 2,000 responses replied within 0.5 s, steps of
        # 0.25 x 5 % (25 ms, 100 responses) fell to 1.2 s for 2 s responses, 2.8 GETs each (simulated); no
        # larger than the gap between two replies, the estimate follows them and none falls due early.
        gap = self.gap()
        if gap is not None:
            size = min(size, max(gap, MIN_STEP_SHARE * self.estimate))
        self.estimate = min(max(self.estimate + step * size, 0.05), POLL_MAX_DELAY)


def poll_after_hint(headers: Mapping[str, str]) -> float | None:
    """The server's `openai-poll-after-ms` hint in seconds, when sent and sane."""
    ms = header_count(headers.get(POLL_AFTER_HEADER))
    return None if ms is None else min(ms / 1000.0, POLL_MAX_DELAY)


# A first poll sent this much after it was due that finds the response final teaches the estimate nothing.
LATE_SEND = MIN_STEP

# A poll may go this much before it is due: one wake of the dispatcher serves every poll due within it
# (with 2,000 responses ending over half a second, one wake a poll otherwise).
DISPATCH_SLACK = 0.002


@dataclass
class _Item:
    claimed: Claimed
    delay: float
    added: float = 0.0  # monotonic time of the create reply (or of adoption)
    polls: int = 0
    learn: bool = True  # adopted from another runner: its age is unknown, so it teaches nothing
    first_at_estimate: bool = False
    due: float = 0.0  # when a first poll at the estimate was due (monotonic)
    hinted: bool = False  # first polled when the server said (`openai-poll-after-ms`)
    mismatches: int = 0
    hint_floor: float = MIN_STEP  # the least wait after a server's hint (see `_poll`)
    failures: int = 0  # GETs in a row that failed with a transient error other than 429 (see `_unreadable`)
    failing_since: float | None = None  # monotonic time of the first of those failures
    unknown: int = 0  # polls in a row that found a status the runner does not know (see `_poll`)
    unknown_since: float | None = None  # monotonic time of the first of those
    ladder: bool = False  # waiting for its next rung, booked while no estimate was known (`_repoll_at_estimate`)


@dataclass(slots=True, eq=False)  # compared by identity: 256 parked workers cancelled at a run's end
class _Parked:
    """A worker task waiting to be handed a due poll."""

    event: anyio.Event = field(default_factory=anyio.Event)
    item: _Item | None = None


class Poller:
    """Polls every background response this runner holds until it is final, then hands over the outcome."""

    def __init__(
        self,
        client: ApiClient,
        writer: WriteBack,
        *,
        max_attempts: int,
        max_in_flight: int,
        patience: float = 0.0,
        on_outcome: Callable[[Outcome], None] | None = None,
        limiter: RateLimiter | None = None,
        on_doomed: Callable[[DoomedJobError], None] | None = None,
        checker: Checker | None = None,
        on_empty: Callable[[], None] | None = None,
    ) -> None:
        self._checker = checker
        # Told when the last response polled is handed over: the run may be over, and its owner need not
        # find out at its next look (up to 0.1 s later, at the end of every background run).
        self._on_empty = on_empty
        self._on_doomed = on_doomed
        self._limiter = limiter or RateLimiter()
        self._client = client
        self._writer = writer
        self._max_attempts = max_attempts
        # A paid response is given up only when its GETs have failed for this long too, not after a count
        # alone: --max-attempts backs off over ~20 s, and a network blip that long would have failed every
        # response of a long background run, each then needing `runner retry`.
        self._patience = patience
        self._max_workers = max_in_flight  # GETs in flight at once: one per worker task
        self._workers = 0
        self._idle: list[_Parked] = []  # workers waiting for a response to come due
        self._tg: TaskGroup | None = None
        self._heap: list[tuple[float, int, _Item]] = []  # polls due at a set time, by it
        # Responses whose first poll goes at the estimate, by their create reply: each is due at its reply plus
        # the estimate as it is then, not as it was when it was added. Every response of a run's first burst
        # (2,000 replied within 0.5 s) is added before any has ended; due at their reply + the first response's
        # age, the later ones, whose replies the busy event loop had read later after they were made, were
        # polled as late as that (the last ones decide the run's wall time).
        self._firsts: list[tuple[float, int, _Item]] = []
        self._seq = itertools.count()
        self._wake = anyio.Event()
        # When the dispatcher wakes by itself: a push due sooner wakes it early (inf: nothing to wait for;
        # -inf: every worker is busy, and the first to run out of due polls wakes it).
        self._wake_at = math.inf
        self._starved = False
        self._active = 0
        self._on_outcome = on_outcome
        self.polls = 0
        self.schedule = PollSchedule()
        self._probes = 0
        self._mismatched = Repeated(log, "responses polled with another response's id")
        self._unpollable = Repeated(log, "responses whose GETs kept failing (poll_failed)")
        self._gone = Repeated(log, "responses whose GET the server refused (gone, or not allowed)")

    def said_at_end(self) -> None:
        """Count the warnings of the run that were not said one by one (runner/worker/repeats.py)."""
        for kind in (self._mismatched, self._unpollable, self._gone):
            kind.said_at_end()

    @property
    def size(self) -> int:
        """Responses waiting for or in a poll."""
        return len(self._heap) + len(self._firsts) + self._active

    def add(
        self,
        claimed: Claimed,
        first_poll: float | None = None,
        hint: float | None = None,
        *,
        replied_at: float | None = None,
    ) -> None:
        """Start polling a response (its id is already committed).

        The first GET goes after `first_poll` seconds when given (0 for a response adopted from a crashed
        runner, whose age is unknown: it teaches the schedule nothing), else after the server's `hint`,
        else at the schedule's estimate as it is when that comes (see `_firsts`). Ages count from
        `replied_at` (monotonic) when given: the create reply, not the commit of the id after it.
        """
        now = time.monotonic()
        added = now if replied_at is None else min(replied_at, now)
        item = _Item(claimed, POLL_INITIAL_DELAY, added=added, learn=first_poll is None, hinted=hint is not None)
        if first_poll is None:
            if hint is None and (self.schedule.estimate is not None or self._probes >= PROBES):
                self.schedule.added(added)
                heapq.heappush(self._firsts, (added, next(self._seq), item))
                if self._first_due() < self._wake_at:
                    self._wake.set()
                return
            if hint is not None:
                first_poll = hint
            else:
                self._probes += 1
                first_poll = self.schedule.first(probe=True)
            first_poll = max(first_poll - (now - added), 0.0)
        self._push(item, first_poll)

    def _repoll_at_estimate(self) -> None:
        """The first estimate was just learnt: a response found running on the ladder waits no longer than its
        create reply plus the estimate. A probe polled at its 2 s rung a hair before it ended (DISPATCH_SLACK)
        was booked at the next rung, 1 s later, while the others ended and were fetched at the estimate: in
        ~5 % of runs of `make bench` scenario 4 that probe was the run's last response, 0.47 s past the rest."""
        estimate, now = self.schedule.estimate, time.monotonic()
        assert estimate is not None
        moved = False
        for i, (due, seq, item) in enumerate(self._heap):
            sooner = max(item.added + estimate, now)
            if item.ladder and sooner < due:
                self._heap[i] = (sooner, seq, item)
                moved = True
        if moved:
            heapq.heapify(self._heap)
            self._wake.set()

    def _first_due(self) -> float:
        """When the first of `_firsts` is due: its create reply plus the estimate (the ladder's second rung
        until a response has ended)."""
        if not self._firsts:
            return math.inf
        return self._firsts[0][0] + self.schedule.first(probe=False)

    def _push(self, item: _Item, wait: float) -> None:
        due = time.monotonic() + wait
        heapq.heappush(self._heap, (due, next(self._seq), item))
        if due < self._wake_at:  # most pushes come due after the head of the heap: no wake for them
            self._wake.set()

    def _next_due(self) -> float:
        return min(self._heap[0][0] if self._heap else math.inf, self._first_due())

    def _take(self, now: float) -> _Item | None:
        """The poll due soonest if it is due by `now` (+ DISPATCH_SLACK), off its queue."""
        first = self._first_due()
        if self._heap and self._heap[0][0] <= first:
            if self._heap[0][0] > now + DISPATCH_SLACK:
                return None
            return heapq.heappop(self._heap)[2]
        if first > now + DISPATCH_SLACK:
            return None
        item = heapq.heappop(self._firsts)[2]
        item.first_at_estimate = self.schedule.estimate is not None
        item.due = first
        return item

    async def run(self, tg: TaskGroup) -> None:
        """Hand due polls to worker tasks in `tg` forever (the caller cancels it)."""
        self._tg = tg
        while True:
            now = time.monotonic()
            self._dispatch(now)
            if self._starved:  # no push wakes it: a worker that runs out of due polls does
                self._wake_at, timeout = -math.inf, math.inf
            else:
                self._wake_at = self._next_due() - DISPATCH_SLACK
                timeout = max(self._wake_at - now, 0.0)
            with anyio.move_on_after(timeout):
                await self._wake.wait()
            self._wake = anyio.Event()

    def _dispatch(self, now: float) -> None:
        """Hand every poll due by `now` (+ DISPATCH_SLACK) to an idle worker, or to a new one below the limit."""
        assert self._tg is not None
        self._starved = False
        while self._next_due() <= now + DISPATCH_SLACK:
            if self._idle:
                parked = self._idle.pop()
                parked.item = self._take(now)
                self._active += 1
                parked.event.set()
            elif self._workers < self._max_workers:
                self._workers += 1
                self._active += 1
                self._tg.start_soon(self._work, self._take(now))
            else:
                self._starved = True  # the busy workers take the due polls as they finish
                return

    async def _work(self, item: _Item | None) -> None:
        """A worker: polls `item`, then every poll that is due when it finishes, then waits to be handed more
        (starting a task through anyio costs ~0.04 ms of CPU, handing a parked worker a poll a tenth of that)."""
        parked: _Parked | None = None
        try:
            while True:
                assert item is not None
                await self._poll(item)
                item = self._take(time.monotonic())
                if item is not None:
                    self._active += 1
                    continue
                if not self._heap and not self._firsts:
                    # Nothing left to poll (a background run's end, most often): the worker ends here, and so do
                    # those parked while polls were still waiting to come due. Parked, the run's ~256 workers were
                    # cancelled one by one after its last result, 4-13 ms of its tail.
                    if self._starved:
                        self._wake.set()
                    while self._idle:
                        self._idle.pop().event.set()  # handed no poll: it ends
                    return
                parked = _Parked()
                self._idle.append(parked)
                if self._starved:  # the dispatcher waits for a free worker: this one is
                    self._wake.set()
                await parked.event.wait()
                item, parked = parked.item, None
                if item is None:
                    return
        finally:
            self._workers -= 1
            if parked is not None and parked in self._idle:
                self._idle.remove(parked)

    def _finish(self, outcome: Outcome, check: CheckRecord | None = None) -> None:
        self._writer.put(outcome, check)
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    def _mismatch(self, item: _Item, got: str | None, status: int, request_id: str | None) -> None:
        """A poll answered with another response's id: never this request's result. Asked again a few
        times (a proxy's passing mix-up), then the request fails; its own response is not re-sent."""
        c = item.claimed
        item.mismatches += 1
        if item.mismatches < MAX_ID_MISMATCHES:
            log.debug("polling %s returned response %r; asking again", c.response_id, got)
            self._push(item, POLL_INITIAL_DELAY)
            return
        error = PermanentApiError(
            f"polling {c.response_id} returned a response with another id ({got!r}) {item.mismatches} times;"
            " not accepted as this request's result",
            status=status,
            code=RESPONSE_ID_MISMATCH,
            request_id=request_id,
        )
        self._mismatched.warn("line %s: %s", c.line_no, error.message)
        self._finish(from_error(c, error, max_attempts=0))

    def _unreadable(self, item: _Item, error: TransientApiError) -> None:
        """Every GET of a response failed with a transient error, as many times in a row as a create may be tried:
        the request fails with POLL_FAILED instead of being polled every 30 s for ever (a run that never ended).
        Its response id is kept, so `runner retry` polls it again; it is never created a second time here."""
        c = item.claimed
        message = (
            f"GET /responses/{c.response_id} failed {item.failures} times in a row (last: {error.describe()});"
            " the response may still finish on the server: `runner retry` polls it again, it is not sent again"
        )
        self._unpollable.warn("line %s: %s", c.line_no, message)
        self._finish(
            Outcome(
                c.id,
                RequestState.FAILED,
                http_status=error.status,
                api_request_id=error.request_id,
                error_code=POLL_FAILED,
                error_message=message,
            )
        )

    def _given_up_on_status(self, item: _Item, sent: float) -> bool:
        """One more poll found a status the runner does not know: whether it has for as long as a response whose
        GETs keep failing is polled (`--max-attempts` polls in a row, over the patience)."""
        item.unknown += 1
        if item.unknown_since is None:
            item.unknown_since = sent
        return item.unknown >= max(self._max_attempts, 1) and time.monotonic() - item.unknown_since >= self._patience

    async def _poll(self, item: _Item) -> None:
        c = item.claimed
        assert c.response_id is not None
        item.ladder = False  # a wait booked for any other reason (a Retry-After, a backoff) is kept
        try:
            wait = self._limiter.poll_delay()
            while wait > 0 and await self._limiter.wait_poll_turn(wait):
                wait = self._limiter.poll_delay()  # polls were given the whole budget: booked again at its pace
            self.polls += 1
            sent = time.monotonic()
            try:
                reply = await self._client.retrieve(c.response_id)
            except (TransientApiError, BillingError) as e:
                self._limiter.observe(e.rate_limits, poll=True)
                if isinstance(e, TransientApiError):
                    self._limiter.obey_retry_after(e.retry_after, e.retry_after_asked, pool=e.status == 429)
                    # A 429 asks for slower polls, which the limiter gives; it says nothing against the response.
                    if e.status != 429:
                        item.failures += 1
                        if item.failing_since is None:
                            item.failing_since = sent
                    if (
                        item.failures >= max(self._max_attempts, 1)
                        and item.failing_since is not None
                        and time.monotonic() - item.failing_since >= self._patience
                    ):
                        self._unreadable(item, e)
                        return
                wait = e.retry_after if isinstance(e, TransientApiError) and e.retry_after else item.delay
                item.delay = min(item.delay * POLL_BACKOFF, POLL_MAX_DELAY)
                self._push(item, max(wait, item.delay))
                return
            except DoomedJobError as e:
                # The key stopped working: the response keeps its id and the next run polls it.
                if self._on_doomed is not None:
                    self._on_doomed(e)
                return
            except ApiError as e:
                # 404 and friends: the response is gone (expired, or never stored); it cannot be re-sent
                # without paying twice, so it fails here and `runner retry` is the user's call.
                self._gone.warn("line %s: polling %s failed: %s", c.line_no, c.response_id, e.describe())
                self._finish(from_error(c, e, max_attempts=0))
                return
            self._limiter.observe(reply.rate_limits, poll=True)
            item.failures, item.failing_since = 0, None
            got = read_id(reply.body.get("id"))
            if got != c.response_id:
                self._mismatch(item, got, reply.status, reply.request_id)
                return
            item.polls += 1
            age = time.monotonic() - item.added
            if has_unknown_status(reply.body) and not self._given_up_on_status(item, sent):
                # Not final as far as the README goes (polled "until completed, incomplete, failed or cancelled"):
                # a status added to the API, or a proxy's own word, may yet end. Polled on, backing off, with the
                # patience of a GET that keeps failing; then it fails as `unknown_status`, its body and id kept.
                item.delay = min(item.delay * POLL_BACKOFF, POLL_MAX_DELAY)
                self._push(item, item.delay)
                return
            item.unknown, item.unknown_since = 0, None
            if is_running(reply.body):
                hint = poll_after_hint(reply.rate_limits)
                if hint is None:
                    item.ladder = item.learn and self.schedule.estimate is None
                    self._push(item, self.schedule.next(age, item.polls))
                    return
                # A hint that came due with the response still running (`0` on every reply, from a server that
                # means "now") must not become a loop of GETs as fast as the round trip: each such poll doubles
                # the least wait, from MIN_STEP up to the longest gap. Right hints find the response final first.
                self._push(item, max(hint, item.hint_floor))
                item.hint_floor = min(item.hint_floor * 2, POLL_MAX_DELAY)
                return
            if item.learn:
                done_first = (item.polls == 1) if item.first_at_estimate else None
                if done_first and sent - item.due > LATE_SEND:
                    # Sent late (a busy event loop, every worker taken) and found final: nothing says the estimate
                    # was too high. Counted, such answers took it from 2.0 to 1.6 s under a load of 8 on 2 cores,
                    # and a too-low estimate climbs back one reply gap a miss, each missed response polled again.
                    done_first = None
                # The age the GET went at: its round trip (tens of ms on a loaded VM) is not the response's.
                unknown = self.schedule.estimate is None
                self.schedule.learn(sent - item.added, done_first)
                if unknown:
                    self._repoll_at_estimate()
                if self._first_due() < self._wake_at:  # the estimate fell: the dispatcher may have to wake sooner
                    self._wake.set()
            outcome = from_response(
                c,
                reply.body,
                http_status=reply.status,
                request_id=reply.request_id,
                max_attempts=self._max_attempts,
            )
            checked = None
            if self._checker is not None:
                outcome, checked = await self._checker.review(c, outcome, reply.body)
            self._finish(outcome, checked)
        finally:
            self._active -= 1
            if self._on_empty is not None and self.size == 0:
                self._on_empty()
