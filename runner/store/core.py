"""The Store's plumbing, shared by its parts: lifetime, transactions (shielded, retried), and "now".

`Store` (store.py) is made of small parts, each owning one kind of question (jobs.py, leases.py,
writeback.py, reading.py); all of them ask through `read()` / `write()` here, and how a given database
answers is its `Backend`'s (backend.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from runner.states import ACTIVE, TERMINAL, RequestState
from runner.store.answer import answer
from runner.store.backend import Backend, retrying
from runner.store.models import JobRow
from runner.store.tables import requests

__all__ = ["StoreCore", "bounded_total", "place_log"]

log = logging.getLogger(__name__)
# Which store a command uses: "created store PATH" (INFO, said by the app once a command that made a new
# store succeeded), "using store PATH" (DEBUG) on every open. The CLI shows the first always and the
# second at -v, each path once.
place_log = logging.getLogger("runner.store.place")
T = TypeVar("T")
X = TypeVar("X")

Q = RequestState.QUEUED.value
IP = RequestState.IN_PROGRESS.value
_TERMINAL_VALUES = sorted(s.value for s in TERMINAL)
_ACTIVE_VALUES = sorted(s.value for s in ACTIVE)


def _job_row(r: Any) -> JobRow:
    return JobRow(
        id=r.id,
        name=r.name,
        source=r.source,
        background=bool(r.background),
        total=r.total,
        created_at=r.created_at,
        started_at=r.started_at,
        cancelled_at=r.cancelled_at,
    )


# How long closing the store waits for reads cancelled while they ran (an SQLite statement runs to its end
# on its thread; a PostgreSQL connection's close is bounded by SQLAlchemy's own 2 s).
_ENDING_WAIT = 10.0
EXPORT_CHUNK = 2000
# A stored body that is not JSON gives NULL, never an error that would stop an export (dialect.json_field);
# a reused row's is its source's (answer.py).
_STORED_OUTPUT_TEXT = answer("output_text")
# What a worker needs of a request it leases (Claimed's fields, in order).
_CLAIMED_COLUMNS = (
    requests.c.id,
    requests.c.job_id,
    requests.c.line_no,
    requests.c.custom_id,
    requests.c.body,
    requests.c.attempts,
)
_USAGE_COLS = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens", "total_tokens")


def bounded_total(value: Any) -> int:
    """A token sum from SQLite's TOTAL() (a float, never an overflow) as a non-negative int.

    Every stored count is bounded (runner/reply.py), so a sum is exact up to 2^53 and close beyond it;
    rows written before the bounds existed may hold negatives, and a sum never goes below 0 for them.
    """
    if isinstance(value, int | float) and math.isfinite(value) and value > 0:
        return int(value)
    return 0


class StoreCore:
    """What every part of the Store uses: the backend, the clock, and the transaction helpers."""

    def __init__(self, backend: Backend, clock: Callable[[], float] = time.time) -> None:
        self._backend = backend
        # Every time the store writes or compares (leases, claims, finished_at) comes from here, so a test can
        # move time on instead of sleeping, and another backend can take it from the database.
        self._clock = clock
        self.created = False  # this open made the file (the caller announces it, or removes it on failure)
        # Reads cancelled while they ran, still ending on their own (see `_cancelled_once`); `aclose` waits.
        self._ending: set[asyncio.Task[Any]] = set()

    def _now(self) -> ColumnElement[float]:
        """ "Now" for a query: the clock's time as a value on SQLite, the database's own clock on PostgreSQL."""
        return self._backend.now_sql(self._clock)

    def now_sql(self) -> ColumnElement[float]:
        """ "Now" for a query of a module beside the Store (fleet, batches, outputs, reuse): see `_now`."""
        return self._now()

    @property
    def clock(self) -> Callable[[], float]:
        """The Store's clock (epoch seconds), for times a module beside the Store computes in Python."""
        return self._clock

    @property
    def place(self) -> str:
        """The store as it may be shown: its file, or its URL with the password masked."""
        return self._backend.place

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine under the store."""
        return self._backend.engine

    @property
    def path(self) -> Path | None:
        """The store's file (absolute), or None when it has none."""
        return self._backend.path

    def check_file(self) -> None:
        """Raise StoreReplaced when the file this store opened is no longer the one at its path."""
        self._backend.check_file()

    def settle(self) -> None:
        """A run's work is done: what closing the store would wait for starts now (see Backend.settle)."""
        self._backend.settle()

    async def aclose(self) -> None:
        """Close every pooled connection (once the reads cancelled while they ran have ended)."""
        if self._ending:
            with anyio.move_on_after(_ENDING_WAIT):
                await asyncio.wait(list(self._ending))
        await self._backend.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self.aclose()

    # -- plumbing ---------------------------------------------------------------------------------

    async def _retry(self, fn: Callable[[], Awaitable[T]]) -> T:
        return await retrying(self._backend.is_transient, fn)

    async def write(self, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run `fn` in one short IMMEDIATE transaction, shielded so a cancel never loses a commit."""

        async def once() -> T:
            async with self.engine.begin() as conn:
                return await fn(conn)

        return await self._hot(once)

    async def _hot(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run one of the backend's hot statements (its own transaction), shielded and retried like `write`."""
        with anyio.CancelScope(shield=True), self.said_as_store_errors():
            result = await self._retry(op)
        return result

    @asynccontextmanager
    async def guarded_stream(
        self, opened: AbstractAsyncContextManager[AsyncGenerator[X, None]]
    ) -> AsyncIterator[AsyncGenerator[X, None]]:
        """`opened`'s stream, with a failure of its reads or of its end said as for `read` (StoreUnavailable: one
        line), such as a server that ends the connection while a slow reader of an export keeps it waiting
        (idle_in_transaction_session_timeout). What the caller's code raises inside goes through as it is,
        and is not hidden by the end of a connection that failed under it."""
        own: BaseException | None = None
        try:
            async with opened as stream:
                try:
                    yield self._guarded(stream)
                except BaseException as e:
                    own = e
                    raise
        except self._backend.errors as e:
            if own is not None:
                raise own from None
            problem = self._backend.file_problem(e)
            if problem is None:
                raise
            raise problem from None

    async def _guarded(self, stream: AsyncGenerator[X, None]) -> AsyncGenerator[X, None]:
        async with aclosing(stream):
            with self.said_as_store_errors():
                async for item in stream:
                    yield item

    @contextmanager
    def said_as_store_errors(self) -> Iterator[None]:
        """Inside, a failed statement about the store itself (its file, its server) is raised as the
        backend's typed error (StoreUnavailable: one line), any other as it is."""
        try:
            yield
        except self._backend.errors as e:
            problem = self._backend.file_problem(e)
            if problem is None:
                raise
            raise problem from None

    async def read(self, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run `fn` in one read-only transaction (a consistent snapshot), retried while the database is busy."""

        async def once() -> T:
            async with self.engine.connect() as conn:
                await conn.execution_options(readonly=True)
                return await fn(conn)

        async def retried() -> T:
            with self.said_as_store_errors():
                return await self._retry(once)

        return await self._cancelled_once(retried())

    async def _cancelled_once(self, op: Coroutine[Any, Any, T]) -> T:
        """`op` in a task of its own, which a cancel of the caller cancels exactly once.

        anyio cancels a task again at every await while its scope is cancelled. A read cut short in its
        checkout or statement makes SQLAlchemy close the connection under `asyncio.shield`; cancelled again,
        it gives up, stops aiosqlite's thread, and strands the close in a task destroyed pending ("Task was
        destroyed but it is pending!"). Cancelled once, the close runs to its end: the caller is free at
        once, and `aclose` waits for what is still ending."""
        task = asyncio.get_running_loop().create_task(op)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.cancel()
            self._ending.add(task)
            task.add_done_callback(self._ended)
            raise

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._ending.discard(task)
        if not task.cancelled():
            task.exception()  # its caller is gone: retrieved here, so that asyncio does not log it
