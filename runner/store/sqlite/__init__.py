"""The SQLite backend: one file, WAL, BEGIN IMMEDIATE writers, and the hot statements on a plain sqlite3
connection in a worker thread (see hot.py for why)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import Connection, Float, literal, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from runner.errors import StoreMissing, StoreReplaced, StoreUnavailable
from runner.store.backend import OpenMode, retrying
from runner.store.models import (
    Claimed,
    DuplicateCustomId,
    ExportRow,
    NewRequest,
    Outcome,
    ReadyLines,
    Refused,
    ResponseIdRecord,
)
from runner.store.sqlite import export, hot
from runner.store.sqlite.engine import (
    BUSY_TIMEOUT_MS,
    EMPTY_FILE,
    create_engine,
    create_file,
    database_path,
    file_identity,
    holds_no_store,
    is_busy,
    migrate,
    rw_uri,
    why_unusable,
)
from runner.store.sqlite.hot import HotConnection

__all__ = ["SqliteBackend"]

T = TypeVar("T")


def _dbapi(sync: Connection) -> hot.DBAPIConnection:
    """The DB-API connection under an engine connection, for the hot module's functions."""
    dbapi = sync.connection.dbapi_connection
    assert dbapi is not None
    return dbapi


class SqliteBackend:
    """The store in one SQLite file (or in memory, for a URL that names no file)."""

    errors: tuple[type[BaseException], ...] = (sqlite3.Error, DBAPIError)

    def __init__(self, db: str) -> None:
        found = database_path(db)
        # The file (absolute), and which file it was when opened: a store deleted or replaced under a run
        # keeps taking writes (into the old, unlinked inode) without an error, so only this tells.
        self.path = Path(os.path.abspath(found)) if found is not None else None
        self.place = str(self.path) if self.path is not None else db
        self._identity: tuple[int, int] | None = None
        self.engine = create_engine(db)
        self._hot = HotConnection(self.path, BUSY_TIMEOUT_MS / 1000) if self.path is not None else None

    def prepare(self, mode: OpenMode) -> bool:
        path = self.path
        if path is None:
            return False
        if path.exists():
            found = holds_no_store(path)
            if found is None:
                return False
            # A command that only reads turned such a file into a store without a word (an empty file, even
            # another program's database, got the store's tables): it is told, and the file left as it is.
            if mode == "existing":
                raise StoreMissing(str(path), found)
            if found != EMPTY_FILE:
                return False  # submit makes the store's tables beside what is there, as it always did
            # An empty file (`touch`, or a submit killed as it made the file) becomes a new store, made as one.
        elif mode == "existing":
            raise StoreMissing(str(path))
        try:
            create_file(path)
        except (OSError, sqlite3.Error) as e:
            raise StoreUnavailable(str(path), why_unusable(path, e) or str(e)) from None
        return True

    def is_transient(self, exc: BaseException) -> bool:
        return is_busy(exc)

    async def migrate(self) -> bool:
        await migrate(self.engine, self.place)
        return False

    def now_sql(self, clock: Callable[[], float]) -> ColumnElement[float]:
        """One host, one clock: the Store's (a test's fake one moves leases on without sleeping)."""
        return literal(clock(), Float)

    async def metadata_keys(self, conn: AsyncConnection, job_id: str) -> list[str]:
        # SQLite walks the JSON in C; bodies without the word are never parsed. A metadata that is not an
        # object gives no text keys (null gives no row, an array integer keys).
        sql = text(
            "SELECT DISTINCT m.key FROM requests AS r, json_each(r.body, '$.metadata') AS m"
            " WHERE r.job_id = :job AND instr(r.body, '\"metadata\"') > 0 AND typeof(m.key) = 'text'"
            " ORDER BY m.key"
        )
        return [str(k) for (k,) in await conn.execute(sql, {"job": job_id})]

    def opened(self) -> None:
        if self.path is not None:
            self._identity = file_identity(self.path)

    def check_file(self) -> None:
        if self.path is None or self._identity is None:
            return
        now = file_identity(self.path)
        if now != self._identity:
            raise StoreReplaced(str(self.path), "deleted" if now is None else "replaced by another file")

    def why_unusable(self, exc: BaseException) -> str | None:
        return why_unusable(self.path, exc) if self.path is not None else None

    def file_problem(self, exc: BaseException) -> StoreUnavailable | None:
        if self.path is None:
            return None
        try:
            self.check_file()
        except StoreReplaced as lost:
            return lost
        reason = why_unusable(self.path, exc)
        return StoreUnavailable(str(self.path), reason) if reason is not None else None

    # -- the hot statements -------------------------------------------------------------------------

    async def _transaction(self, fn: Callable[[hot.DBAPIConnection], T], *, inline: bool = True) -> T:
        """Run `fn` (DB-API, no SQLAlchemy) in one IMMEDIATE transaction: on the hot connection (see
        HotConnection.transaction for `inline`), or, for a store without a file, inside the engine's own
        transaction."""
        conn = self._hot
        if conn is None:
            async with self.engine.begin() as c:
                return await c.run_sync(lambda sync: fn(_dbapi(sync)))
        return await conn.transaction(fn, inline=inline)

    async def cancelled_among(self, job_ids: Sequence[str]) -> set[str]:
        return await self._transaction(lambda db: hot.cancelled_jobs(db, job_ids))

    async def claim(
        self, owner: str, job_ids: Sequence[str], n: int, lease_seconds: float, now: float
    ) -> list[Claimed]:
        return await self._transaction(lambda db: hot.claim(db, owner, job_ids, n, lease_seconds, now))

    async def apply(
        self, owner: str, outcomes: Sequence[Outcome], response_ids: Sequence[ResponseIdRecord], now: float
    ) -> Refused:
        return await self._transaction(lambda db: hot.apply(db, owner, outcomes, response_ids, now))

    async def insert(self, job_id: str, rows: Sequence[NewRequest], now: float) -> None:
        try:
            # In the worker thread, beside the parsing (see HotConnection.transaction).
            await self._transaction(lambda db: hot.insert(db, job_id, rows, now), inline=False)
        except (IntegrityError, sqlite3.IntegrityError) as e:
            raise DuplicateCustomId(job_id) from e

    async def insert_answered(
        self, job_id: str, rows: Sequence[NewRequest], now: float, newer_than: float | None
    ) -> int | None:
        try:
            # In the worker thread, beside the parsing, as `insert`.
            return await self._transaction(
                lambda db: hot.insert_answered(db, job_id, rows, now, newer_than), inline=False
            )
        except (IntegrityError, sqlite3.IntegrityError):
            return None  # a custom_id used twice: the caller inserts the chunk its usual way, which names it

    def batch_lines(
        self, job_id: str, id_start: str, chunk: int
    ) -> AbstractAsyncContextManager[AsyncGenerator[Sequence[ReadyLines | ExportRow], None]] | None:
        """See backend.WritesBatchLines (a store without a file reads through the engine instead)."""
        return export.batch_lines(self.path, job_id, id_start, chunk) if self.path is not None else None

    async def cancel_requeued(self, conn: AsyncConnection, now: float) -> None:
        await conn.run_sync(lambda sync: hot.cancel_requeued_in_cancelled_jobs(_dbapi(sync), now))

    # -- the file -----------------------------------------------------------------------------------

    async def integrity(self, conn: AsyncConnection) -> str:
        r = await conn.execute(text("PRAGMA integrity_check"))
        return "\n".join(str(x[0]) for x in r)

    def file_size(self) -> int:
        """The file and its write-ahead log."""
        if self.path is None:
            return 0
        return sum(p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + "-wal")) if p.exists())

    async def reclaim_space(self) -> None:
        """Stores made with incremental auto-vacuum free it in short transactions, so a runner working on the
        same store waits milliseconds, not the length of a rewrite. Older stores get one full VACUUM, which
        also switches them to incremental auto-vacuum for next time.
        """
        if self.path is None:
            return
        path = self.path
        await self.engine.dispose()  # no pooled connection of ours holds a snapshot the checkpoint must keep
        if self._hot is not None:
            self._hot.close()
        try:
            await retrying(self.is_transient, lambda: anyio.to_thread.run_sync(_reclaim, path))
        except (sqlite3.Error, OSError) as e:
            reason = why_unusable(path, e)
            if reason is None:
                raise
            raise StoreUnavailable(str(path), reason) from None

    def settle(self) -> None:
        # Closing copies the write-ahead log into the file (~20 ms after a background run of 2,000 requests, a
        # 15 MB log): done now in the store's thread, while the run's end reads and writes go on.
        if self._hot is not None:
            self._hot.checkpoint_soon()

    async def aclose(self) -> None:
        if self._hot is not None:
            self._hot.close()
        await self.engine.dispose()


_INCREMENTAL = 2  # PRAGMA auto_vacuum's value for incremental
_VACUUM_STEP = 2000  # pages freed per transaction: ~30 MB at 16 KB pages, a few ms of write lock


def _reclaim(path: Path) -> None:
    """`Store.reclaim_space` on a plain connection of its own (VACUUM cannot run inside a transaction)."""
    conn = sqlite3.connect(rw_uri(path), uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == _INCREMENTAL:
            free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            for _ in range(free // _VACUUM_STEP + 2):  # bounded, even if other writers free pages meanwhile
                if not conn.execute("PRAGMA freelist_count").fetchone()[0]:
                    break
                try:
                    # A script, because sqlite3's execute() steps the pragma once, which frees one page.
                    conn.executescript(f"BEGIN IMMEDIATE; PRAGMA incremental_vacuum({_VACUUM_STEP}); COMMIT;")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        else:
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("VACUUM")
        # The file shrinks when the log is copied back; TRUNCATE empties the log too. A reader of another
        # process may hold it back: then it happens at that process's next checkpoint.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()
