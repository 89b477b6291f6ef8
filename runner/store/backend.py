"""The seam between the Store (what to ask, and when) and one database (how to ask it there).

`Store` holds the typed API, portable SQLAlchemy Core queries, transaction boundaries, shielding and
retries. A `Backend` holds what differs between databases: the engine and its set-up, the hot statements
(claim, write-back, bulk insert) with their own connection, which errors are worth another try, the
migration lock, and the file (or server) behind the store. A second database adds a module that implements
this Protocol and one line in `backend_for`, not branches in the Store.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Literal, Protocol, TypeVar, runtime_checkable

import anyio
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from runner.config import control_at
from runner.errors import StoreUnavailable
from runner.store.models import Claimed, ExportRow, NewRequest, Outcome, ReadyLines, Refused, ResponseIdRecord

T = TypeVar("T")

# "create": make the file when there is none (submit, spec runs). "existing": raise StoreMissing instead
# (every other command: reading a store must never leave an empty one behind in the wrong directory).
OpenMode = Literal["create", "existing"]


class Backend(Protocol):
    """How one kind of database stores jobs. Methods that take `now` get it from the Store's clock."""

    engine: AsyncEngine
    path: Path | None  # the store's file (absolute), or None when it has none
    place: str  # the store as it may be shown: the file, or the URL with its password masked
    errors: tuple[type[BaseException], ...]  # what a failed statement raises here (checked by `file_problem`)

    def prepare(self, mode: OpenMode) -> bool:
        """Make the store's file when `mode` allows and it is missing; whether it was made here.

        StoreMissing when it is missing and may not be made; StoreUnavailable when it cannot be made.
        """
        ...

    def is_transient(self, exc: BaseException) -> bool:
        """Whether `exc` is a passing conflict with another writer that another try may get past."""
        ...

    async def migrate(self) -> bool:
        """Bring the schema to the newest revision, under this database's migration lock.

        Whether this made the schema of a new store (SQLite's new files are `prepare`'s: always False).
        """
        ...

    def opened(self) -> None:
        """Remember which file was opened (see `check_file`)."""
        ...

    def check_file(self) -> None:
        """Raise StoreReplaced when the file that was opened is no longer the one at its path."""
        ...

    def why_unusable(self, exc: BaseException) -> str | None:
        """A plain reason why the store cannot be used, if `exc` is about the file or server; else None."""
        ...

    def file_problem(self, exc: BaseException) -> StoreUnavailable | None:
        """A failed statement that is about the file itself (replaced, read-only, disk full), as a typed error."""
        ...

    def now_sql(self, clock: Callable[[], float]) -> ColumnElement[float]:
        """ "Now" in SQL, as epoch seconds: the Store's `clock` bound as a value, or the database's own clock."""
        ...

    async def metadata_keys(self, conn: AsyncConnection, job_id: str) -> list[str]:
        """Every text key of the `metadata` objects of a job's request bodies, sorted."""
        ...

    async def cancelled_among(self, job_ids: Sequence[str]) -> set[str]:
        """Which of `job_ids` were cancelled: one small read, on the backend's own connection (a run asks four
        times a second, and through SQLAlchemy each read cost ~1 ms of CPU)."""
        ...

    async def claim(
        self, owner: str, job_ids: Sequence[str], n: int, lease_seconds: float, now: float
    ) -> list[Claimed]:
        """Lease up to `n` due, queued requests of `job_ids` in claim order (one transaction): job by job, each
        by (sched, id), see `models.claim_by_job`."""
        ...

    async def apply(
        self, owner: str, outcomes: Sequence[Outcome], response_ids: Sequence[ResponseIdRecord], now: float
    ) -> Refused:
        """Write response ids and outcomes, each guarded (one transaction); the ids of the requests refused."""
        ...

    async def insert(self, job_id: str, rows: Sequence[NewRequest], now: float) -> None:
        """Insert a chunk of a staging job's lines (one transaction); DuplicateCustomId for a used custom_id."""
        ...

    async def cancel_requeued(self, conn: AsyncConnection, now: float) -> None:
        """Inside the caller's transaction: every queued request of a cancelled job becomes cancelled."""
        ...

    async def integrity(self, conn: AsyncConnection) -> str:
        """The database's own verdict on the store ("ok" when sound)."""
        ...

    def file_size(self) -> int:
        """Bytes the store takes on disk (0 when it has no file)."""
        ...

    async def reclaim_space(self) -> None:
        """Give the space of deleted rows back to the file system."""
        ...

    def settle(self) -> None:
        """A run's work is done: start now, beside its last statements, what closing would wait for."""
        ...

    async def aclose(self) -> None:
        """Close every connection."""
        ...


@runtime_checkable
class InsertsAnswered(Protocol):
    """A backend with a hot statement for `submit --reuse` (SQLite: sqlite/hot.py `insert_answered`)."""

    async def insert_answered(
        self, job_id: str, rows: Sequence[NewRequest], now: float, newer_than: float | None
    ) -> int | None:
        """Insert a chunk of a staging job's lines, each answered from an original answer to its question where
        one exists; how many were, or None, with nothing inserted, when a custom_id is used twice."""
        ...


@runtime_checkable
class WritesBatchLines(Protocol):
    """A backend that can write the batch export format's common lines itself (SQLite: sqlite/export.py)."""

    def batch_lines(
        self, job_id: str, id_start: str, chunk: int
    ) -> AbstractAsyncContextManager[AsyncGenerator[Sequence[ReadyLines | ExportRow], None]] | None:
        """A job's rows in line order, in chunks: ready lines where it could write them, else ExportRows;
        None when it cannot here (the caller then reads ExportRows)."""
        ...


class _ClosesCutByCancel(logging.Filter):
    """Drops the pool's "Exception closing connection" record when the exception is a cancellation.

    A Ctrl-C while a store is opening or closing (see runner/interrupt.py) cancels the task mid-statement;
    the pool then throws the connection away, and the cancellation reaches that close too. SQLAlchemy logs it
    at ERROR with a traceback, though nothing is lost: the transaction was not committed and the process is
    ending. The user is owed the one line `runner: interrupted`, not that traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[0] if record.exc_info else None
        return not (exc is not None and issubclass(exc, asyncio.CancelledError))


_CLOSES_CUT_BY_CANCEL = _ClosesCutByCancel()


def quiet_cancelled_closes(engine: AsyncEngine) -> AsyncEngine:
    """`engine`, its pool no longer logging a connection close that a cancellation cut short as an error."""
    logger = engine.sync_engine.pool.logger
    if isinstance(logger, logging.Logger):  # with echo_pool it is a per-instance adapter; not ours to tune
        logger.addFilter(_CLOSES_CUT_BY_CANCEL)  # once per logger: a Filter added twice is kept once
    return engine


_RETRY_WAIT = wait_exponential_jitter(multiplier=0.05, max=2.0)


async def retrying(is_transient: Callable[[BaseException], bool], fn: Callable[[], Awaitable[T]]) -> T:
    """`fn()`, tried again with jittered backoff (up to 10 times) while it fails with a transient error."""
    # The first try without tenacity: its loop cost 30-50 us of CPU a call, and a run's hot transactions (claims,
    # group commits) come hundreds a second and almost all succeed at once.
    try:
        return await fn()
    except Exception as e:
        if not is_transient(e):
            raise
    await anyio.sleep(_RETRY_WAIT(RetryCallState(AsyncRetrying(), None, (), {})))  # tenacity's wait after a first try
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(9),
        wait=_RETRY_WAIT,
        sleep=anyio.sleep,
        reraise=True,
    ):
        with attempt:
            return await fn()
    raise AssertionError("unreachable")  # pragma: no cover


def refuse_in_memory(db: str) -> None:
    """StoreUnavailable for an SQLite URL that names no file (`sqlite://`, `sqlite:///:memory:`): a store in
    this process's memory, gone when the command ends (tests open one; a command must not)."""
    from runner.store.postgres import is_postgres_url, masked

    if is_postgres_url(db) or not _in_memory(db):
        return
    reason = "an in-memory database keeps nothing once the command ends; give a file path"
    raise StoreUnavailable(masked(db), reason)


def _in_memory(db: str) -> bool:
    """Whether `db` is an SQLite path or URL that names no file (a PostgreSQL URL is not asked about)."""
    scheme, sep, _ = db.partition("://")
    if sep and scheme.lower().partition("+")[0] != "sqlite":
        return False
    from runner.store.sqlite.engine import database_path

    try:
        return database_path(db) is None
    except (ValueError, ArgumentError):
        return False  # not a URL at all: opening it says why


def store_file(db: str) -> Path | None:
    """The file an SQLite store `db` is kept in (absolute), found without opening it; None for PostgreSQL, a
    store in memory, or a name that opening it would refuse."""
    from runner.store.postgres import is_postgres_url

    scheme, sep, _ = db.partition("://")
    if is_postgres_url(db) or (sep and scheme.lower().partition("+")[0] != "sqlite"):
        return None
    from runner.store.sqlite.engine import database_path

    try:
        found = database_path(db)
    except (ValueError, ArgumentError):
        return None
    return Path(os.path.abspath(found)) if found is not None else None


def backend_for(db: str) -> Backend:
    """The backend for `db` (a path or an SQLAlchemy URL): the one place a database is chosen."""
    from runner.store.postgres import URL_FORM, is_postgres_url, masked

    if not db.strip():  # RUNNER_DB= : the working directory was opened, "it is a directory"
        raise StoreUnavailable(
            db, "empty", "the store's name is empty (RUNNER_DB or --db set to nothing): give a file path"
        )
    if control_at(db) is not None or db != db.strip():
        # Read from a file with its line end (a Kubernetes secret, a wrapper's `$(cat ...)`), or a space left in
        # an .env file: `submit` made a store named `runner.db\n` (or `runner.db `) beside the one meant, and the
        # next command did not find its jobs. Shown quoted and escaped, so that what is wrong can be seen (a tab
        # or a space is not, printed as it is). No position: counted in a URL, it would tell the password's length.
        shown = repr(masked(db) if "://" in db else db)
        what = "a control character" if control_at(db) is not None else "white space at its start or end"
        raise StoreUnavailable(shown, what, f"cannot use the store {shown}: the name has {what}; check how it was set")
    if is_postgres_url(db):
        from runner.store.postgres import PostgresBackend

        return PostgresBackend(db)
    scheme, sep, _ = db.partition("://")
    if sep and scheme.lower().partition("+")[0] != "sqlite":
        # mysql://, a typo of postgresql://: SQLAlchemy went looking for the driver, and a traceback said it
        # was not installed.
        raise StoreUnavailable(
            masked(db), f"not a store runner can use: give a file path, sqlite:///PATH or {URL_FORM}"
        )
    from runner.store.sqlite import SqliteBackend

    try:
        return SqliteBackend(db)
    except (ValueError, ArgumentError) as e:
        # `sqlite://[::1`, `sqlite://user@/x.db`, `?timeout=abc`: SQLAlchemy's parse of the URL raised, and the
        # traceback was all a user saw. Its first line says what is wrong, unless it shows the URL again (it
        # would show the password too).
        why = (str(e).strip().splitlines() or [""])[0]
        detail = f" ({why})" if why and "://" not in why else ""
        reason = f"not a valid SQLite URL{detail}; give a file path or sqlite:///PATH"
        raise StoreUnavailable(masked(db), reason) from None
