"""Background responses: GET /responses/{id} with backoff until the response is final.

Polling never holds a submission slot: it has its own small pool of in-flight GETs, and requests wait
in a heap keyed by when they are next due.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup

from runner.client import ApiClient
from runner.config import POLL_BACKOFF, POLL_INITIAL_DELAY, POLL_MAX_DELAY
from runner.errors import ApiError, BillingError, DoomedJobError, PermanentApiError, TransientApiError
from runner.limits import RateLimiter
from runner.reply import RESPONSE_ID_MISMATCH, read_id
from runner.store.models import Claimed, Outcome
from runner.store.outputs import CheckRecord
from runner.worker.outcomes import Checker, from_error, from_response, is_running
from runner.worker.writeback import WriteBack

log = logging.getLogger(__name__)


MAX_ID_MISMATCHES = 3  # polls answered with another response's id before the request fails


@dataclass
class _Item:
    claimed: Claimed
    delay: float
    mismatches: int = 0


class Poller:
    """Polls every background response this runner holds until it is final, then hands over the outcome."""

    def __init__(
        self,
        client: ApiClient,
        writer: WriteBack,
        *,
        max_attempts: int,
        max_in_flight: int,
        on_outcome: Callable[[Outcome], None] | None = None,
        limiter: RateLimiter | None = None,
        on_doomed: Callable[[DoomedJobError], None] | None = None,
        checker: Checker | None = None,
    ) -> None:
        self._checker = checker
        self._on_doomed = on_doomed
        self._limiter = limiter or RateLimiter()
        self._client = client
        self._writer = writer
        self._max_attempts = max_attempts
        self._limit = anyio.Semaphore(max_in_flight)
        self._heap: list[tuple[float, int, _Item]] = []
        self._seq = itertools.count()
        self._wake = anyio.Event()
        self._active = 0
        self._on_outcome = on_outcome
        self.polls = 0

    @property
    def size(self) -> int:
        """Responses waiting for or in a poll."""
        return len(self._heap) + self._active

    def add(self, claimed: Claimed, first_poll: float = POLL_INITIAL_DELAY) -> None:
        """Start polling a response (its id is already committed); the first GET after `first_poll` seconds.

        Backoff starts from POLL_INITIAL_DELAY whatever the first wait, so a response adopted from a
        crashed runner (first poll at once) is not then polled in a tight loop.
        """
        self._push(_Item(claimed, POLL_INITIAL_DELAY), first_poll)

    def _push(self, item: _Item, wait: float) -> None:
        heapq.heappush(self._heap, (time.monotonic() + wait, next(self._seq), item))
        self._wake.set()

    async def run(self, tg: TaskGroup) -> None:
        """Dispatch due polls into `tg` forever (the caller cancels it)."""
        while True:
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                _, _, item = heapq.heappop(self._heap)
                self._active += 1
                tg.start_soon(self._poll, item)
            timeout = (self._heap[0][0] - now) if self._heap else 1.0
            with anyio.move_on_after(max(timeout, 0.0)):
                await self._wake.wait()
            self._wake = anyio.Event()

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
        log.warning("line %s: %s", c.line_no, error.message)
        self._finish(from_error(c, error, max_attempts=0))

    async def _poll(self, item: _Item) -> None:
        c = item.claimed
        assert c.response_id is not None
        try:
            async with self._limit:
                wait = self._limiter.poll_delay()
                if wait > 0:
                    await anyio.sleep(wait)
                self.polls += 1
                try:
                    reply = await self._client.retrieve(c.response_id)
                except (TransientApiError, BillingError) as e:
                    self._limiter.observe(e.rate_limits, poll=True)
                    if isinstance(e, TransientApiError):
                        self._limiter.obey_retry_after(e.retry_after, e.retry_after_asked, pool=e.status == 429)
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
                    log.warning("polling %s failed: %s", c.response_id, e.describe())
                    self._finish(from_error(c, e, max_attempts=0))
                    return
            self._limiter.observe(reply.rate_limits, poll=True)
            got = read_id(reply.body.get("id"))
            if got != c.response_id:
                self._mismatch(item, got, reply.status, reply.request_id)
                return
            if is_running(reply.body):
                item.delay = min(item.delay * POLL_BACKOFF, POLL_MAX_DELAY)
                self._push(item, item.delay)
                return
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
            self._wake.set()
