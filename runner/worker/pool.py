"""The worker pool: claim leased requests from the store, keep the concurrency's slots busy, stop cleanly.

One task group owns everything: a claim loop that keeps claimed requests ready and starts a task per
free slot (never more than the concurrency; a task takes the next ready request itself when its own is
written back), a poller for background responses, and the heartbeat (runner/worker/heartbeat.py: alive in
the store's `runners`, leases renewed, the fleet's shared rate budget). What happens to each request
once its slot has it (pacing, the send, reading the reply) is `send.Sender`'s. A separate write-back
task commits outcomes in small batches and is drained, shielded, on every way out.

Over 400 lines on purpose: the slots, the ready buffer, the ramp, the --max-cost gate and the stops all
read and change the same few counters in one event loop; split across modules they would need those
counters passed around or shared, which is where slot-accounting bugs come from.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup
from anyio.lowlevel import checkpoint

from runner.chains import PARENT_FAILED
from runner.client import ApiClient
from runner.errors import BillingError, DoomedJobError, StoreUnavailable
from runner.lanes.flex import FlexLane
from runner.limits import AdaptiveConcurrency, RateLimiter, model_of
from runner.owners import new_owner, owner_is_dead
from runner.states import ACTIVE, RequestState, count
from runner.store import Store
from runner.store.chains import fail_orphans, has_chains, resolve_parents
from runner.store.models import Claimed, Outcome
from runner.worker.collector import quiet_collector
from runner.worker.heartbeat import Heartbeat
from runner.worker.outcomes import Checker
from runner.worker.poller import Poller
from runner.worker.ramp import SlotRamp
from runner.worker.send import Sender
from runner.worker.types import RunOptions, RunResult, Snapshot, StopReason, count_outcome
from runner.worker.writeback import WriteBack

if TYPE_CHECKING:  # --max-cost's budget comes from the app; its price table is ~10 ms to import for every run
    from runner.budget import Budget

log = logging.getLogger(__name__)

CLAIM_BATCH = 256
IDLE_CHECK = 0.5  # seconds between looks at the store when nothing is claimable
POLL_ADOPT_INTERVAL = 5.0  # how often to look for background responses whose runner died
STORE_CHECK_INTERVAL = 1.0  # how often to check that the store file is still the one opened (one stat)
# How often to look for a `runner cancel` of the run's jobs. The run holds claimed requests not sent yet (the
# ready buffer, and slots waiting for the pacer): after a cancel it sent 46-53 more of them at --rpm 6000. One
# read of the jobs table by its key each time, on the backend's own connection: through SQLAlchemy (~1 ms of
# CPU) every 0.1 s it cost 2-4 % of the CPU per request at zero latency (bench scenario 2: 0.36 of the bare
# loop against 0.38-0.40).
CANCEL_CHECK_INTERVAL = 0.25


def _store_problem(group: BaseExceptionGroup[BaseException]) -> StoreUnavailable | None:
    """The first StoreUnavailable among a task group's errors, if any."""
    for e in group.exceptions:
        if isinstance(e, StoreUnavailable):
            return e
        if isinstance(e, BaseExceptionGroup) and (inner := _store_problem(e)) is not None:
            return inner
    return None


class Run:
    """Runs the selected jobs until every request is final, a billing or doomed-job error stops it, or `stop()`."""

    def __init__(
        self,
        store: Store,
        client: ApiClient,
        job_ids: Sequence[str],
        options: RunOptions,
        *,
        on_progress: Callable[[Snapshot], None] | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.store = store
        self.budget = budget  # --max-cost: a request starts only if it fits (runner/budget.py)
        self._budget_blocked = self._budget_stop = False  # the next request did not fit; and nothing was out
        self.client = client
        self.job_ids = list(job_ids)
        self.opts = options
        self.owner = new_owner()
        self.writer = WriteBack(store, self.owner)
        self.limiter = RateLimiter(options.rpm, options.tpm)
        # No budget given: start gently until the first reply's x-ratelimit-* headers say the limits.
        self.concurrency = AdaptiveConcurrency(options.concurrency, slow_start=not (options.rpm or options.tpm))
        self.checker = Checker(store, options.repair)
        self.heartbeat = Heartbeat(
            store,
            self.owner,
            lease_seconds=options.lease_seconds,
            limiter=self.limiter,
            budget=options.rate_budget,
            in_flight=lambda: self._in_flight,
        )
        self.poller = Poller(
            client,
            self.writer,
            max_attempts=options.max_attempts,
            max_in_flight=options.poll_slots,
            patience=options.poll_patience,
            on_outcome=self._count,
            limiter=self.limiter,
            on_doomed=self._on_doomed,
            checker=self.checker,
            on_empty=lambda: self._slot_freed.set(),  # the claim loop checks at once whether the jobs are done
        )
        self.snap = Snapshot()
        self._on_progress = on_progress
        self._in_flight = 0
        self._slot_freed = anyio.Event()
        self._stop_claiming = anyio.Event()
        self._billing: BillingError | None = None
        self._doomed: DoomedJobError | None = None
        self._interrupted = False
        self._work_scope: anyio.CancelScope | None = None
        self._grace_deadline = 0.0
        self._ready: deque[Claimed] = deque()  # claimed ahead, not yet started
        self._cancelled_jobs: set[str] = set()  # jobs `runner cancel` stopped while this run held some of them
        self._want_more = anyio.Event()
        self._tg: TaskGroup | None = None
        self._ramp = SlotRamp()  # many free slots open over a round trip, not in one burst
        self._ramping = False
        # The slow start just ended: every free slot opens at once, paced by the limits just learnt, until the
        # slots are full or nothing is left to claim (spread over a round trip, they cost half a round trip).
        self._open_all = False
        self._seed_tried = False  # the first claim looked for limits remembered from an earlier run
        self._store_lost: StoreUnavailable | None = None
        self._idle_closed = False  # the creates' idle connections were closed once only polls were left
        self.sender = Sender(
            client,
            self.writer,
            self.poller,
            self.limiter,
            self.concurrency,
            max_attempts=options.max_attempts,
            stopping=self._stop_claiming.is_set,
            in_flight=lambda: self._in_flight,
            cancelled=lambda job_id: job_id in self._cancelled_jobs,
            on_outcome=self._count,
            on_billing=self._on_billing,
            on_doomed=self._on_doomed,
            checker=self.checker,
            flex=FlexLane(options.flex_fallback) if options.flex else None,
            on_more_slots=self._more_slots,
            patience=options.poll_patience,  # --timeout: an outage of the server is waited out as long as a poll's
        )
        # Slots wait for their results' commits: the shorter the round trip, the shorter the window. Not while
        # background responses are polled (their creates answer at once, and no slot waits for a poll's commit).
        self.writer.round_trip = lambda: self.sender.latency if self.poller.size == 0 else None

    # -- control ----------------------------------------------------------------------------------

    def stop(self, *, grace: float | None = None) -> None:
        """Stop claiming; in-flight requests get `grace` seconds (default from options) to finish."""
        self._interrupted = True
        self._stop_claiming.set()
        self._slot_freed.set()
        self.sender.wake()  # what waits for its turn is not in flight: it goes back to the queue now
        self._grace_deadline = time.monotonic() + (self.opts.grace if grace is None else grace)
        self.snap.stopping, self.snap.grace_deadline = True, self._grace_deadline  # the display says so

    def abort(self) -> None:
        """Stop now: cancel in-flight work (everything already received is still committed)."""
        self._interrupted = True
        self._stop_claiming.set()
        if self._work_scope is not None:
            self._work_scope.cancel()

    # -- the run ----------------------------------------------------------------------------------

    async def execute(self) -> RunResult:
        """Run to the end; always drains the write-back and releases this process's leases."""
        with quiet_collector():  # the garbage collector off the per-request path (runner/worker/collector.py)
            return await self._execute()

    async def _execute(self) -> RunResult:
        counts, _ = await self.store.progress(self.job_ids)
        self.snap.total = sum(counts.values())
        self.snap.done = sum(v for k, v in counts.items() if k not in ACTIVE)
        self.snap.done_before = self.snap.done
        await self.heartbeat.start()  # registered (and its clock checked) before it judges others' leases
        await self.store.reclaim_expired(self.job_ids, owner_is_dead)
        await self.store.mark_started(self.job_ids)
        # Lines that continue others (runner/chains.py): only then is any of the chain work done at all.
        self.writer.chains = await has_chains(self.store, self.job_ids)
        self.writer.on_orphans = self._count_orphans
        if self.writer.chains:
            self._count_orphans(await fail_orphans(self.store, self.job_ids))  # below a parent of an earlier run
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self.writer.run)
                try:
                    with anyio.CancelScope() as self._work_scope:
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(self._check_store)
                            tg.start_soon(self._watch_cancels)
                            tg.start_soon(self.heartbeat.run)
                            tg.start_soon(self.poller.run, tg)
                            if self._on_progress is not None:
                                tg.start_soon(self._report)
                            await self._claim_loop(tg)
                            await self._drain_in_flight()
                            tg.cancel_scope.cancel()
                finally:
                    if self._store_lost is None:
                        await self.writer.aclose()
                    else:
                        outer.cancel_scope.cancel()  # the store is gone: nothing pending can reach it
        except BaseExceptionGroup as group:
            self._store_lost = _store_problem(group)  # a write failed because of the file itself
            if self._store_lost is None:
                raise
        finally:
            with anyio.CancelScope(shield=True):
                # Claimed ahead but never sent: back to the queue without using up an attempt.
                while self._ready and self._store_lost is None:
                    self.writer.put(Outcome(self._ready.popleft().id, RequestState.QUEUED, refund_attempt=True))
                if self._store_lost is None:  # writing now could create an empty file where the store was
                    await self.writer.aclose()
                    stopped = self._billing is not None or self._doomed is not None or self._budget_stop
                    await self.store.release(self.owner, refund=stopped)
                    await self.heartbeat.stop()
                self.sender.said_at_end()
                if self.writer.refused:
                    log.warning(
                        "%d requests were finished by another process meanwhile (`runner cancel`, or another runner"
                        " that took them over); what this run received for them was not recorded",
                        len(self.writer.refused),
                    )
                if self._on_progress is not None:
                    self._on_progress(self.snap)
        if self._store_lost is not None:
            raise self._store_lost
        if self._billing is not None:
            return RunResult(StopReason.BILLING, self._billing, self.snap)
        if self._doomed is not None:
            return RunResult(StopReason.DOOMED, None, self.snap, doomed_error=self._doomed)
        if self._interrupted:
            return RunResult(StopReason.INTERRUPTED, None, self.snap)
        if self._budget_stop:
            return RunResult(StopReason.BUDGET, None, self.snap, budget=self.budget)
        return RunResult(StopReason.DONE, None, self.snap)

    async def _claim_loop(self, tg: TaskGroup) -> None:
        """Keep about one concurrency's worth of claimed requests ready, and notice when the jobs are done.

        A slot whose request is written back takes the next one from the ready buffer at once (`_take_ready`),
        and `_fill` starts tasks for slots left free, so no slot waits for a claim transaction behind a
        burst of replies.
        """
        self._tg = tg
        last_adopt = 0.0
        while not self._stop_claiming.is_set():
            if self._ready_low():
                # Leased, so invisible to other runners; one claim per request would cost more CPU than the
                # request itself at high throughput.
                want = min(max(self._claim_target(), 64) - len(self._ready), CLAIM_BATCH * 4)
                claimed = await self.store.claim(self.owner, self.job_ids, want, self.opts.lease_seconds)
                if self.writer.chains and claimed:
                    claimed = await self._continue_parents(claimed)
                if claimed and self.concurrency.slow_start and not self._seed_tried:
                    self._start_at_remembered_limits(claimed[0])
                self._ready.extend(claimed)
                self._fill()
                if claimed:
                    self.limiter.submissions_done(False)
                    await checkpoint()  # the requests just started go out before the next claim
                    continue
                self._open_all = False
            else:
                await self._wait_more(IDLE_CHECK)
                continue
            if self._ready:
                await self._wait_more(IDLE_CHECK / 5)
                continue
            now = time.monotonic()
            if now - last_adopt >= POLL_ADOPT_INTERVAL:
                last_adopt = now
                await self.store.reclaim_expired(self.job_ids, owner_is_dead)
                for c in await self.store.claim_polls(self.owner, self.job_ids, self.opts.lease_seconds):
                    self.poller.add(c, first_poll=0.0)
            if self._in_flight == 0 and self.poller.size == 0:
                await self.writer.flush()
                if self.writer.chains:  # e.g. below a parent that failed in a batch
                    self._count_orphans(await fail_orphans(self.store, self.job_ids))
                counts, due = await self.store.progress(self.job_ids)
                if count(counts, *ACTIVE) == 0:
                    self.store.settle()  # the store's last copying starts beside the run's last statements
                    # Nothing more will be sent: the keep-alive connections close now, while the run's end waits
                    # for the store's thread, not in the client's close after it (~256 after a background run,
                    # 11-15 ms of the event loop).
                    self.client.close_idle(0)
                    return
                wait = IDLE_CHECK
                if due is not None and count(counts, RequestState.QUEUED):
                    wait = min(max(due - time.time(), 0.01), IDLE_CHECK)
                await self._wait_slot(wait)
            else:
                if self._in_flight == 0:
                    self.limiter.submissions_done(True)  # polls may use the whole request budget
                if self._in_flight == 0 and not self._idle_closed:
                    # Only background polls are left: the creates' idle connections close while the run waits,
                    # not after its last result (runner/client.py: close_idle).
                    self._idle_closed = True
                    self.client.close_idle(self.opts.poll_slots)
                await self._wait_slot(IDLE_CHECK / 5)

    async def _continue_parents(self, claimed: list[Claimed]) -> list[Claimed]:
        """The claimed lines with their parents' response ids in place; those whose parent completed without
        a response to continue fail unsent (and, once committed, the lines below them)."""
        ready, orphans = await resolve_parents(self.store, claimed)
        for c, why in orphans:
            o = Outcome(c.id, RequestState.FAILED, error_code=PARENT_FAILED, error_message=why, refund_attempt=True)
            self.writer.put(o)
            self._count(o)
        return ready

    def _count_orphans(self, n: int) -> None:
        """Lines failed unsent below a parent that ended without a response to continue (`parent_failed`)."""
        self.snap.done += n
        self.snap.failed += n

    def _start_at_remembered_limits(self, first: Claimed) -> None:
        """No slow start where an earlier run on this store read the limits for this key and the first
        request's model: every slot opens now, paced at them, until this run's first reply says its own."""
        self._seed_tried = True
        if self.limiter.seed(model_of(first.body)):
            self.concurrency.end_slow_start()
            self._open_all = True

    def _claim_target(self) -> int:
        """How many requests the ready buffer aims at: the slots' worth; during the slow start, once its first
        requests are out, the whole concurrency's, so that every slot can open as soon as the limits are known."""
        if self.concurrency.slow_start and self._in_flight:
            return self.concurrency.maximum
        return self.concurrency.limit

    def _more_slots(self) -> None:
        """A reply grew the slow start's window (the sender calls this); when it ended it, every slot opens now."""
        # With limits learnt the pacer spreads the sends; a server that advertises none gets the ramp instead.
        if not self.concurrency.slow_start and self.limiter.limits_known:
            self._open_all = True
        self._fill()

    def _fill(self) -> None:
        """Start claimed requests while slots are free; ask the claim loop for more when the buffer runs low."""
        if self._tg is None:
            return
        limit = self.concurrency.limit
        free = min(limit - self._in_flight, len(self._ready))
        if free > 0 and not self._stop_claiming.is_set():
            n = free if self._open_all else min(free, self._ramp.allow(limit, self.sender.latency))
            started = 0
            while started < n and self._ready and self._admit(self._ready[0]):
                self._in_flight += 1
                self._tg.start_soon(self._handle, self._ready.popleft())
                started += 1
            self._ramp.took(started)
            if self._in_flight >= limit:
                self._open_all = False
            # Slots held back by the ramp open later; slots the budget refused wait for a reply instead.
            if started == n < free and not self._ramping:
                self._ramping = True
                self._tg.start_soon(self._ramp_up)
        if self._ready_low():
            self._want_more.set()

    async def _ramp_up(self) -> None:
        """Open the slots `_fill` held back, a few every 10 ms, until none is free or nothing is ready."""
        try:
            while self._ready and self._in_flight < self.concurrency.limit and not self._stop_claiming.is_set():
                await anyio.sleep(0.01)
                self._fill()
                if self._budget_blocked:
                    return
        finally:
            self._ramping = False

    def _admit(self, c: Claimed) -> bool:
        """Whether `c` fits in the budget (always, without one). When it does not and nothing is out any more,
        the run stops at the budget: in-flight requests have come back, and the rest stays queued."""
        if self.budget is None:
            return True
        if self.budget.admit(c.id, c.body):
            self._budget_blocked = False
            return True
        self._budget_blocked = True
        if self._in_flight == 0 and self.poller.size == 0 and not self._budget_stop:
            self._budget_stop = True
            self._stop_claiming.set()
            self._slot_freed.set()
        return False

    def _ready_low(self) -> bool:
        """Fewer than half a concurrency's worth of claimed requests wait: time to claim more."""
        return len(self._ready) < max(self._claim_target() // 2, 1)

    async def _wait_more(self, within: float) -> None:
        with anyio.move_on_after(within):
            await self._want_more.wait()
        self._want_more = anyio.Event()

    async def _wait_slot(self, within: float) -> None:
        with anyio.move_on_after(within):
            await self._slot_freed.wait()
        self._slot_freed = anyio.Event()

    async def _drain_in_flight(self) -> None:
        """After a stop: give in-flight requests the grace period, then cancel what is left."""
        if not self._interrupted and self._billing is None and self._doomed is None:
            return
        deadline = self._grace_deadline
        while self._in_flight > 0 and time.monotonic() < deadline:
            await self._wait_slot(min(0.1, max(deadline - time.monotonic(), 0.0)))

    async def _check_store(self) -> None:
        """Every second, check the store file is still ours (the heartbeat renews the leases).

        A store deleted or replaced under the run takes every later write without an error (into a file
        nobody will read again), so the run would report success and lose its results: stop at once.
        """
        while True:
            await anyio.sleep(STORE_CHECK_INTERVAL)
            try:
                self.store.check_file()
            except StoreUnavailable as e:
                self._store_lost = e
                self.abort()
                return

    async def _watch_cancels(self) -> None:
        """Every CANCEL_CHECK_INTERVAL, look for a `runner cancel` of the run's jobs: their requests claimed but
        not sent go back to the queue, where the store makes them cancelled, and none is sent from then on."""
        while True:
            await anyio.sleep(CANCEL_CHECK_INTERVAL)
            # Replaced, not added to: `runner retry` un-cancels a job.
            now_cancelled = await self.store.cancelled_among(self.job_ids)
            found, self._cancelled_jobs = now_cancelled - self._cancelled_jobs, now_cancelled
            if not found:
                continue
            kept: deque[Claimed] = deque()
            for c in self._ready:
                if c.job_id in found:
                    self.writer.put(Outcome(c.id, RequestState.QUEUED, refund_attempt=True))
                else:
                    kept.append(c)
            self._ready = kept

    async def _report(self) -> None:
        assert self._on_progress is not None
        while True:
            self.snap.in_flight = self._in_flight
            self.snap.polling = self.poller.size
            self.snap.concurrency = self.concurrency.limit
            self.snap.max_concurrency = self.concurrency.maximum
            if self.concurrency.slow_start:
                why = "slow start: until the server's limits are known"
            elif self.snap.rate_limited:
                why = "backing off after 429s"
            else:
                why = "backing off after timeouts"
            self.snap.concurrency_reason = why if self.snap.concurrency < self.snap.max_concurrency else None
            self.snap.pauses = self.limiter.pauses
            self.snap.notice = self.limiter.notice  # the long wait in force, if any (said once on stderr)
            self._on_progress(self.snap)
            await anyio.sleep(0.25)

    # -- slots and stops ---------------------------------------------------------------------------

    def _count(self, o: Outcome) -> None:
        if self.budget is not None:
            self.budget.settle(o.request_id, o.usage)
            if self._budget_blocked and self._tg is not None:
                self._fill()  # what came back may make room, or was the last one out: then the run stops
        count_outcome(self.snap, o)

    async def _handle(self, c: Claimed) -> None:
        """Send `c`; then, while the slot may stay taken, the next claimed request, in this same task."""
        ended = False  # cancelled or failed: the run is ending, and the slot must not start another request
        try:
            while True:
                ticket = await self.sender.submit(c)
                if ticket is not None:
                    # The slot stays taken until the result is durable: a crash then loses at most the
                    # requests in flight (the concurrency), never a backlog of answers not yet written.
                    await self.writer.wait(ticket)
                nxt = self._take_ready()
                if nxt is None:
                    return
                c = nxt
        except BaseException:
            # A store that went away mid-run cancels the slots waiting for their commits; refilling them
            # sent more requests whose answers could not be written, past the --concurrency bound.
            ended = True
            raise
        finally:
            self._in_flight -= 1
            self._slot_freed.set()
            if not ended:
                self._fill()

    def _take_ready(self) -> Claimed | None:
        """The next claimed request for a slot that is free again, or None (stopping, none ready, or the
        concurrency limit shrank below the slots in use). A task per request would cost more CPU."""
        limit = self.concurrency.limit
        if (
            not self._ready
            or self._in_flight > limit
            or self._stop_claiming.is_set()
            or not self._admit(self._ready[0])
        ):
            return None
        c = self._ready.popleft()
        if self._ready_low():
            self._want_more.set()
        return c

    def _on_billing(self, e: BillingError) -> None:
        """Stop claiming at once; the request stays queued (released with its attempt refunded at the end).

        Requests already on the wire are not cancelled: each comes back either with a result, which is
        kept (it was paid for), or with the same billing error. Cancelling them would throw away answers
        the API may already have billed, and the next run would pay for them again.
        """
        if self._billing is None:
            self._billing = e
            log.error("billing error, stopping the run: %s", e.describe())
            self._grace_deadline = time.monotonic() + self.opts.grace
        self._stop_claiming.set()
        self._slot_freed.set()
        self.sender.wake()

    def _on_doomed(self, e: DoomedJobError) -> None:
        """Stop claiming at once, as for a billing error: nothing of the job can succeed as configured.

        The requests that met the error stay queued with their attempt refunded; results of requests already
        on the wire are kept. The CLI prints the error's one line and exits 5.
        """
        if self._doomed is None:
            self._doomed = e
            log.debug("the job is doomed, stopping the run: %s", e.describe())
            self._grace_deadline = time.monotonic() + self.opts.grace
        self._stop_claiming.set()
        self._slot_freed.set()
        self.sender.wake()
