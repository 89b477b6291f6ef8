"""Batched, shielded write-back of outcomes: a result that arrived is committed within a few tens of ms."""

from __future__ import annotations

import anyio

from runner.config import WRITE_BATCH_WINDOW
from runner.store import Store
from runner.store.models import Outcome

MAX_BATCH = 1000


class WriteBack:
    """Collects outcomes from many tasks and commits them together, at most `window` seconds late.

    `put` never blocks, so a request task hands its result over without waiting for SQLite; `flush`
    waits until everything put so far is committed; `aclose` drains, shielded from cancellation.
    """

    def __init__(self, store: Store, owner: str, window: float = WRITE_BATCH_WINDOW) -> None:
        self._store = store
        self._owner = owner
        self._window = window
        self._pending: list[Outcome] = []
        self._wake = anyio.Event()
        self._progress = anyio.Event()
        self._put_seq = 0
        self._done_seq = 0
        self._closed = False
        self.written = 0
        self.refused = 0

    def put(self, outcome: Outcome) -> None:
        """Queue an outcome for the next commit."""
        self._pending.append(outcome)
        self._put_seq += 1
        self._wake.set()

    async def run(self) -> None:
        """The writer task: wait for outcomes, let a short window fill, commit, repeat until closed."""
        while True:
            if not self._pending:
                if self._closed:
                    return
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            if not self._closed and len(self._pending) < MAX_BATCH:
                await anyio.sleep(self._window)
            await self._commit()

    async def _commit(self) -> None:
        batch, self._pending = self._pending, []
        seq = self._put_seq
        refused = await self._store.apply(self._owner, batch)  # shielded inside the store
        self.written += len(batch) - len(refused)
        self.refused += len(refused)
        self._done_seq = seq
        self._progress.set()
        self._progress = anyio.Event()

    async def flush(self) -> None:
        """Wait until every outcome put before this call is committed."""
        target = self._put_seq
        while self._done_seq < target:
            self._wake.set()
            await self._progress.wait()

    async def aclose(self) -> None:
        """Commit whatever is pending, even while being cancelled."""
        self._closed = True
        self._wake.set()
        with anyio.CancelScope(shield=True):
            if self._pending:
                await self._commit()
