"""One request's round trip: wait for its turn, send it, and hand on what comes back.

The pool (`pool.Run`) decides which request goes when and keeps the slots full; this decides what happens
to one request: pacing under the RPM/TPM budgets and any pool-wide pause, the send, the outcome handed to
the write-back (or, for a background response, its id recorded and the request handed to the poller), and
what the reply teaches the rate limiter and the adaptive concurrency. A billing error or a doomed job stops
the whole run, which is the pool's business: they go back to it through `on_billing` and `on_doomed`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio
import orjson

from runner.client import ApiClient, ApiReply, advertises_limits
from runner.errors import (
    ApiError,
    BillingError,
    CapacityError,
    DoomedJobError,
    DroppedError,
    PermanentApiError,
    TimeoutApiError,
    TransientApiError,
    UnreachableError,
)
from runner.lanes.flex import FlexLane
from runner.limits import AdaptiveConcurrency, Estimator, RateLimiter, model_of
from runner.reply import read_id
from runner.retry import UNAVAILABLE, Outage, backoff_delay, outage_delay
from runner.states import RequestState
from runner.store.models import Claimed, Outcome, ResponseIdRecord
from runner.store.outputs import CheckRecord
from runner.worker.outcomes import Checker, again_later, from_error, from_response, is_running
from runner.worker.poller import Poller, poll_after_hint
from runner.worker.repeats import Repeated
from runner.worker.writeback import WriteBack

log = logging.getLogger(__name__)

# Failed connections (refused, TLS, no such host) in a row, with no reply from the server yet in this run,
# after which the job is doomed: the server is not there, and every further attempt would fail the same way.
# Once the server has answered, as many in a row must also have gone on for the patience (--timeout).
DOOMED_AFTER_UNREACHABLE = 10


def _request_id(c: Claimed) -> str:
    """The `x-client-request-id` of this attempt: job, line and attempt, so a server log names the line."""
    return f"{c.job_id}/{c.line_no}/{c.attempts}"


class Sender:
    """Sends claimed requests for all of one run's slots (one per run: it remembers whether the server has
    answered anything yet)."""

    def __init__(
        self,
        client: ApiClient,
        writer: WriteBack,
        poller: Poller,
        limiter: RateLimiter,
        concurrency: AdaptiveConcurrency,
        *,
        max_attempts: int,
        stopping: Callable[[], bool],
        in_flight: Callable[[], int],
        cancelled: Callable[[str], bool] = lambda job_id: False,
        on_outcome: Callable[[Outcome], None],
        on_billing: Callable[[BillingError], None],
        on_doomed: Callable[[DoomedJobError], None],
        checker: Checker | None = None,
        flex: FlexLane | None = None,
        on_more_slots: Callable[[], None] | None = None,
        patience: float = 0.0,
    ) -> None:
        self.checker = checker
        self._on_more_slots = on_more_slots  # the pool opens the slots a reply added
        self.client = client
        self.writer = writer
        self.poller = poller
        self.limiter = limiter
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self._stopping = stopping  # a stop (signal, billing, doomed job) came: send nothing more
        self._cancelled = cancelled  # `runner cancel` of this job came: send nothing more of it
        self._in_flight = in_flight
        self._on_outcome = on_outcome
        self._on_billing = on_billing
        self._on_doomed = on_doomed
        self.flex = flex  # the flex lane: its tier, its patient retries and its fallback
        self._replied = False  # the server has answered something (anything) in this run
        self._taken = Repeated(log, "lines whose response id was another line's")
        self._lost = Repeated(log, "lines whose lease was lost before their response id was recorded")
        self.latency: float | None = None  # seconds a reply takes (moving average), once one came
        self._unreachable = 0  # failed connections in a row (before the first answer, or since the last one)
        # Failed connections and 502/503/504 replies in a row: one outage (a restart may refuse connections, then
        # answer 503 while it loads its model), timed from its first sign.
        self._outage = Outage()
        # Seconds an outage after the server has answered is waited out (a restart: vLLM loading its model, a
        # deploy) before the job is doomed: as long as one attempt may take, as for polls.
        self._patience = patience
        self._pacing: set[anyio.CancelScope] = set()  # the waits of requests not sent yet, for their turn

    def said_at_end(self) -> None:
        """Count the warnings of the run that were not said one by one (runner/worker/repeats.py)."""
        for kind in (self._taken, self._lost):
            kind.said_at_end()
        self.poller.said_at_end()

    def _put(self, o: Outcome, check: CheckRecord | None = None) -> int:
        self._on_outcome(o)
        return self.writer.put(o, check)

    def _book(self, raw: float) -> tuple[float, bool]:
        """Book one request of `raw` estimated tokens under the RPM/TPM budgets: (seconds to wait, whether it
        was booked on the local pacer rather than left to the fleet's shared slots)."""
        limiter = self.limiter
        booked_alone = not limiter.sharing
        return limiter.delay_for(raw * limiter.estimator.ratio), booked_alone

    def wake(self) -> None:
        """A stop came: requests waiting for their turn stop waiting, and go back to the queue unsent."""
        for scope in self._pacing:
            scope.cancel()

    async def _pace(self, raw: float, wait: float, booked_alone: bool) -> None:
        """Wait for the turn just booked (`_book`), and any pool-wide pause; book again if a pause began meanwhile.
        Cut short by `wake`: a stopping run kept a 300 s Retry-After's wait until its grace ran out."""
        limiter = self.limiter
        with anyio.CancelScope() as scope:
            self._pacing.add(scope)
            try:
                while True:
                    # Booked again when a 429 paused the pool while we slept, or the pace was dropped (`wait_turn`).
                    if wait > 0 and (await limiter.wait_turn(wait) or limiter.remaining_pause() > 0):
                        wait, booked_alone = self._book(raw)
                        continue
                    # With other runners on the store, the request also waits for its slot of the fleet's budget.
                    if limiter.shared is None or await limiter.shared_turn(booked_alone=booked_alone):
                        return
                    wait, booked_alone = self._book(raw)
            finally:
                self._pacing.discard(scope)

    async def submit(self, c: Claimed) -> int | None:
        """Send one request; the write-back ticket of its outcome (None when there is nothing to wait for)."""
        max_attempts = self.max_attempts
        limiter = self.limiter
        raw_tokens = 0.0
        if limiter.needs_tokens:
            body = orjson.loads(c.body)
            raw_tokens = Estimator.raw(body) if isinstance(body, dict) else 1.0
        wait, booked_alone = self._book(raw_tokens)
        # Booked alone with nothing to wait for is the usual case: then the fleet's shared slots have no say
        # (shared_turn would answer True at once), and no coroutine is made for it.
        if wait > 0 or not booked_alone:
            await self._pace(raw_tokens, wait, booked_alone)
        if self._stopping() or self._cancelled(c.job_id):
            # A stop (signal or billing) came while this one waited for its turn: it was never sent,
            # so it goes back to the queue without using up an attempt (in a cancelled job, the store
            # makes it cancelled).
            return self.writer.put(Outcome(c.id, RequestState.QUEUED, refund_attempt=True))
        sent_at = time.time()
        started = time.monotonic()
        try:
            if self.flex is None:  # not through _create: one coroutine less per request
                reply = await self.client.create(c.body.encode(), client_request_id=_request_id(c))
            else:
                reply = await self._create(c)
        except CapacityError as e:
            # Flex has no capacity now: not billed and not this account's rate, so no pause and no shrinking;
            # the request waits (longer each time) without using up an attempt.
            self._replied = True
            wait = self.flex.capacity_wait(c.id, e.retry_after) if self.flex else backoff_delay(c.attempts, e)
            log.debug("line %s: no flex capacity, again in %.1f s", c.line_no, wait)
            return self._requeue(c, e, wait, sent_at)
        except BillingError as e:
            self._on_billing(e)
            return None
        except DoomedJobError as e:
            self._on_doomed(e)
            return None  # stays leased; released at the end with its attempt refunded
        except ApiError as e:
            if isinstance(e, UnreachableError):
                return self._unreached(c, e)
            if isinstance(e, DroppedError) and not self._replied and self._dropped_before_any_answer(e):
                return None  # doomed; stays leased, released at the end with its attempt refunded
            lasted = None
            if e.status is not None:
                self._replied = True
                self._unreachable = 0
                if e.status in UNAVAILABLE:
                    lasted = self._outage.failed(c.id)
                else:
                    self._outage.clear()
            self._on_api_error(e)
            if self.limiter.heard is not None:  # limit headers that changed: the next run of this model starts at them
                self.limiter.learn(model_of(c.body))
            if lasted is not None and self._outage.down and isinstance(e, TransientApiError):
                return self._server_down(c, e, lasted, sent_at)
            if isinstance(e, TransientApiError):
                log.debug("line %s attempt %s: %s", c.line_no, c.attempts, e.describe())
            return self._put(from_error(c, e, max_attempts=max_attempts, sent_at=sent_at))
        self._replied = True
        self._unreachable = 0
        self._outage.clear()
        replied_at = time.monotonic()
        took = replied_at - started
        self.latency = took if self.latency is None else self.latency + 0.1 * (took - self.latency)
        self.limiter.observe(reply.rate_limits, in_flight=self._in_flight(), answered=True)
        if self.limiter.heard is not None:  # limit headers that changed: the next run of this model starts at them
            self.limiter.learn(model_of(c.body))
        if self.concurrency.slow_start:
            # The slow start grows with each healthy reply and ends once the limits are known: the slots it opens
            # start now, not when a commit next frees a slot (under load that came 0.1-0.2 s later).
            before = self.concurrency.limit
            # Known limits pace what follows; a server that sends none has nothing more to teach, and a slow
            # start kept until the window doubled to the concurrency cost 7 round trips (0.62 of the bare loop
            # at 1 s, --concurrency 1000). A limit it keeps to itself shows as 429s: on_overload then cuts the
            # window from the requests in flight.
            if self.limiter.limits_known or not advertises_limits(reply.rate_limits):
                self.concurrency.end_slow_start()
            self.concurrency.on_success()
            if self.concurrency.limit > before and self._on_more_slots is not None:
                self._on_more_slots()
        else:
            self.concurrency.on_success()
        if is_running(reply.body):
            response_id = read_id(reply.body.get("id"))
            if response_id is None:
                # Created (and perhaps billed) but not pollable: sent again, a server that answers so created and
                # billed it up to --max-attempts times, keeping none of the ids.
                error = PermanentApiError(
                    f"the server answered the background create ({reply.body.get('status')}) without a usable"
                    " response id (a string of 1 to 256 characters): it cannot be polled, and it is not sent again,"
                    " as it may be billed",
                    status=reply.status,
                    code="invalid_response_body",
                    request_id=reply.request_id,
                )
                return self._put(from_error(c, error, max_attempts=max_attempts, sent_at=sent_at))
            await self.writer.wait(
                self.writer.put_response_id(ResponseIdRecord(c.id, response_id, reply.request_id, sent_at))
            )
            if c.id in self.writer.taken:
                self._taken.warn("line %s failed: its response id %s is another line's", c.line_no, response_id)
                return None
            if c.id in self.writer.refused:
                self._lost.warn("line %s: lease lost before its response id %s was recorded", c.line_no, response_id)
                return None
            c.response_id = response_id
            c.background = True
            self.poller.add(c, hint=poll_after_hint(reply.rate_limits), replied_at=replied_at)
            return None
        outcome = from_response(
            c,
            reply.body,
            http_status=reply.status,
            request_id=reply.request_id,
            max_attempts=max_attempts,
            sent_at=sent_at,
        )
        if raw_tokens:
            self.limiter.estimator.observe(raw_tokens, outcome.usage.total_tokens)
        checked = None
        # Most lines ask for plain text: a substring test here, not a coroutine per reply.
        if self.checker is not None and (want := self.checker.wants(c, outcome)) is not None:
            outcome, checked = await self.checker.review(c, outcome, reply.body, want)
        return self._put(outcome, checked)

    async def _create(self, c: Claimed) -> ApiReply:
        """POST the request; on the flex lane with its tier, moved to the default tier once it waited too long."""
        request_id = _request_id(c)
        flex = self.flex
        if flex is None:
            return await self.client.create(c.body.encode(), client_request_id=request_id)
        body, left = flex.prepare(c.id, c.body)
        try:
            if left is None:
                reply = await self.client.create(body, client_request_id=request_id)
            else:
                with anyio.move_on_after(left):
                    reply = await self.client.create(body, client_request_id=request_id)
                    flex.forget(c.id)
                    return reply
                # Still unanswered on flex after --flex-fallback: the standard tier answers sooner.
                log.debug("line %s: no flex answer after %.1f s, sending on the default tier", c.line_no, left)
                reply = await self.client.create(flex.fallback_body(c.id, c.body), client_request_id=request_id)
        except CapacityError:
            raise  # remembered: the next try waits longer, and the fallback clock keeps running
        except BaseException:
            flex.forget(c.id)
            raise
        flex.forget(c.id)
        return reply

    def _on_api_error(self, e: ApiError) -> None:
        """A 429 pauses the whole pool once (until its Retry-After) and shrinks concurrency; so does a timeout.

        A 429 whose headers show budget left is load shedding, not the budget running out: only that
        request waits (its own backoff), the pool keeps its size and pace.
        """
        self.limiter.observe(e.rate_limits, in_flight=self._in_flight())
        overload = e.status == 429 and not self.limiter.budget_left(e.rate_limits)
        if isinstance(e, TransientApiError):
            self.limiter.obey_retry_after(e.retry_after, e.retry_after_asked, pool=overload)
        # Unpaced (no limit known), the window is all that holds the pool back, so it is cut from what was in
        # flight: a pool still opening its slots against a server that hides its limit must not go on to 70 %
        # of slots it never used. Paced, the pacer holds it back and the window stays a loose cap: cut from
        # the requests in flight, one 429 would cap the pace at 70 % of itself for the many replies AIMD needs
        # to grow it back.
        in_flight = None if self.limiter.limits_known else self._in_flight()
        if overload:
            if not isinstance(e, TransientApiError):
                self.limiter.pause(1.0)
            self.concurrency.on_overload(in_flight)
        elif isinstance(e, TimeoutApiError):
            self.concurrency.on_overload(in_flight)

    def _dropped_before_any_answer(self, e: DroppedError) -> bool:
        """A connection closed without a reply, before the server has answered anything in this run: whether
        the job is now doomed (DOOMED_AFTER_UNREACHABLE failed connections in a row, of either kind).

        Unlike a refused connection, the request may have reached the server, so its attempt counts; but a
        server that closes every connection (a TLS port sent plain HTTP) would otherwise take every line
        through every attempt, and fail them all.
        """
        self._unreachable += 1
        if self._unreachable < DOOMED_AFTER_UNREACHABLE:
            return False
        base = self.client.base_url
        hint = (
            "if it speaks HTTPS, the base URL should start with https://"
            if base.lower().startswith("http://")
            else "is this the API's address and port?"
        ) + "; a proxy or gateway in between may also be cutting requests off"
        reason = f"the server closed the connection without answering, {self._unreachable} times in a row; {hint}"
        self._on_doomed(DoomedJobError(f"cannot reach {base}: {reason}", code=e.code))
        return True

    def _unreached(self, c: Claimed, e: UnreachableError) -> int | None:
        """A failed connection: the request never reached the API, so it uses up no attempt.

        It waits a moment and is tried again. Before the server has answered anything in this run,
        DOOMED_AFTER_UNREACHABLE such failures in a row doom the job. After, a server going down (a restart) is
        waited out, and dooms the job only once the outage has also lasted the patience: were each try an
        attempt, a minute's outage would fail every line claimed meanwhile.
        """
        down = self._outage.failed(c.id)
        self._unreachable += 1
        if self._unreachable >= DOOMED_AFTER_UNREACHABLE and (not self._replied or down >= self._patience):
            since = f" (no connection for {down:.0f} s)" if self._replied else ""
            self._on_doomed(DoomedJobError(f"cannot reach {self.client.base_url}: {e.reason}{since}", code=e.code))
            return None  # stays leased; released at the end with its attempt refunded
        if self._replied:
            self._on_api_error(e)  # a connect timeout may be overload: the pool shrinks, as for any timeout
            wait = outage_delay(c.attempts, down)
        else:
            wait = backoff_delay(c.attempts)
        log.debug("line %s: %s", c.line_no, e.describe())
        return self._requeue(c, e, wait)

    def _server_down(self, c: Claimed, e: TransientApiError, lasted: float, sent_at: float) -> int | None:
        """A 502/503/504 while the server answers nothing else (`Outage.down`): down as a whole (restarting, or a
        gateway's upstream is), so waited out as a refused connection is, for the same patience; the pool pauses
        rather than every line spending its attempts on the outage."""
        said = " ".join(e.message.split())  # a gateway's HTML page, on one line
        said = said if len(said) <= 100 else said[:100] + "..."
        if lasted >= self._patience:
            why = f"the server at {self.client.base_url} answered {e.status} to every request for {lasted:.0f} s"
            self._on_doomed(DoomedJobError(f"{why}: {said}", code=e.code))
            return None  # stays leased; released at the end with its attempt refunded
        wait = outage_delay(c.attempts, lasted, e)
        limiter = self.limiter
        if not self._outage.told:
            self._outage.told = True
            limiter.say(
                f"the server answers {e.status} to every request ({said}); waiting for it to come back, up to"
                f" {self._patience:g} s (--timeout), without using up attempts",
                limiter.clock() + wait,
            )
        limiter.pause(wait, why=f"the server still answers {e.status} after {lasted:.0f} s; pausing all requests")
        log.debug("line %s: %s (server down for %.1f s)", c.line_no, e.describe(), lasted)
        return self._requeue(c, e, wait, sent_at)

    def _requeue(self, c: Claimed, e: ApiError, wait: float, sent_at: float | None = None) -> int:
        """Back to the queue for `wait` seconds without using up an attempt: what failed was not the line."""
        return self._put(again_later(c, e, wait, refund=True, sent_at=sent_at))
