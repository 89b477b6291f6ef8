"""Group commit of everything a run learns: results within a few ms, background response ids at once.

Request tasks hand their outcome over and wait until it is durable (`wait`), so a concurrency slot is
only free again once its result is committed: a crash can lose at most the requests in flight, never
a backlog of answers waiting for the disk. Commits still carry many rows each, because every request
that finishes while one commit runs joins the next.

The window is counted from the start of the previous commit, not from the first result waiting: commits
start at most once a window (as many rows each as before), but a result that arrives after a quiet spell,
or while a slow commit runs, does not wait a whole window more. Measured at 200 ms latency and
concurrency 200 on a loaded 2-core VM, a result waited 21 ms (median) from its arrival to its commit, its
slot held all that time; a commit seen from the event loop took 1.75 ms (median) and 17 ms (p90).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from runner.config import WRITE_BATCH_WINDOW
from runner.store import Store
from runner.store.chains import DEAD_ENDS, fail_orphans
from runner.store.models import Outcome, ResponseIdRecord
from runner.store.outputs import CheckRecord, record_checks

MAX_BATCH = 1000
# The window shrinks with the round trip: a result's slot waits for its commit, so the wait costs that slot
# wait / (round trip + wait) of its throughput. At 1 s the whole window (10 ms) is 1 %; at 200 ms it was 5 %
# (a reply's median wait to its next send 10-13 ms, measured at concurrency 200). WINDOW_SHARE of the round
# trip keeps it about 1 % there too, at the price of more commits (each 0.3-0.6 ms of CPU whatever its size):
# at 200 ms and concurrency 200 on a quiet VM, 0.15-0.25 ms of CPU more per request (fewer when the event loop
# is busy, as results then gather while it catches up); at zero latency, 78-107 -> 134-155 commits for 2,000.
# Below 400 ms the floor holds: 4 ms, not 2, since at zero latency (concurrency 64) the commits were ~16 % of
# the CPU per request (0.23-0.24 -> 0.20 ms, 4.2k -> 4.8k requests/s), while at 200 ms and concurrency 200 the
# runner kept 0.89-0.90 of the bare loop either way (three interleaved runs each, 2026-12-04).
WINDOW_SHARE = 0.01
MIN_WINDOW = 0.004


class WriteBack:
    """Collects outcomes and response ids from many tasks and commits them together.

    `put`/`put_response_id` never block and return a ticket; `wait(ticket)` returns once that write is
    committed. Response ids are committed without waiting for the batching window: nothing may happen to
    a background response before its id is stored. `aclose` drains, shielded from cancellation.
    """

    def __init__(
        self,
        store: Store,
        owner: str,
        window: float = WRITE_BATCH_WINDOW,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        # The requests' round trip (seconds), when the slots wait for their commits; None: the whole window.
        self.round_trip: Callable[[], float | None] | None = None
        self._owner = owner
        self._window = window
        self._clock = clock
        self._last_start = -window  # no commit yet: the first one need not wait
        self._pending: list[Outcome] = []
        self._checks: list[CheckRecord] = []
        self._ids: list[ResponseIdRecord] = []
        self._wake = anyio.Event()
        self._urgent = anyio.Event()
        self._progress = anyio.Event()
        self._put_seq = 0
        self._done_seq = 0
        self._closed = False
        self.written = 0
        self.refused: set[int] = set()  # request ids whose write was refused (no longer leased by us)
        # Request ids failed by the store, as the server answered them with a response id another line holds.
        self.taken: set[int] = set()
        # The jobs have lines that continue others (runner/chains.py): a line that ends failed, cancelled or
        # incomplete fails the queued lines below it, right after its own commit.
        self.chains = False
        self.on_orphans: Callable[[int], None] | None = None  # told how many lines below a dead end failed

    def put(self, outcome: Outcome, check: CheckRecord | None = None) -> int:
        """Queue an outcome (and the structured-output check of its answer) for the next commit; its ticket."""
        self._pending.append(outcome)
        if check is not None:
            self._checks.append(check)
        self._put_seq += 1
        self._wake.set()
        return self._put_seq

    def put_response_id(self, record: ResponseIdRecord) -> int:
        """Queue a background response's id for an immediate commit; returns its ticket."""
        self._ids.append(record)
        self._put_seq += 1
        self._wake.set()
        self._urgent.set()
        return self._put_seq

    async def run(self) -> None:
        """The writer task: wait for work; commit once a window has passed since the last commit started
        (at once for response ids, a full batch, or a flush), repeat."""
        while True:
            if not self._pending and not self._ids:
                if self._closed:
                    return
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            if not self._ids and not self._closed and len(self._pending) < MAX_BATCH:
                wait = self._last_start + self.window() - self._clock()
                if wait > 0:
                    with anyio.move_on_after(wait):
                        await self._urgent.wait()
            self._last_start = self._clock()
            await self._commit()

    def window(self) -> float:
        """How long after the previous commit's start the next one starts (see WINDOW_SHARE)."""
        rt = self.round_trip() if self.round_trip is not None else None
        if rt is None:
            return self._window
        return min(self._window, max(MIN_WINDOW, rt * WINDOW_SHARE))

    async def _commit(self) -> None:
        batch, self._pending = self._pending, []
        ids, self._ids = self._ids, []
        checks, self._checks = self._checks, []
        self._urgent = anyio.Event()
        seq = self._put_seq
        if checks:  # before the outcomes: see record_checks (only lines that asked for JSON have any)
            await record_checks(self._store, self._owner, checks)
        refused = await self._store.apply(self._owner, batch, ids)  # shielded inside the store
        self.written += len(batch) + len(ids) - len(refused)
        self.refused.update(refused)
        self.taken.update(refused.taken)
        if self.chains and (
            ended := [o.request_id for o in batch if o.to in DEAD_ENDS and o.request_id not in refused]
        ):
            orphans = await fail_orphans(self._store, parent_ids=ended)
            if orphans and self.on_orphans is not None:
                self.on_orphans(orphans)
        self._done_seq = seq
        self._progress.set()
        self._progress = anyio.Event()

    async def wait(self, ticket: int) -> None:
        """Return once the write with this ticket (and everything before it) is committed."""
        while self._done_seq < ticket:
            progress = self._progress
            await progress.wait()

    async def flush(self) -> None:
        """Wait until everything queued before this call is committed."""
        self._urgent.set()
        await self.wait(self._put_seq)

    async def aclose(self) -> None:
        """Commit whatever is pending, even while being cancelled."""
        self._closed = True
        self._wake.set()
        self._urgent.set()
        with anyio.CancelScope(shield=True):
            if self._pending or self._ids:
                await self._commit()
