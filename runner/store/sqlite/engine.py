"""SQLite engine set-up: the store file's layout, WAL, busy timeout, BEGIN IMMEDIATE for writes, the migration
lock, the busy-error test, and one-line reasons for a file that cannot be used."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiosqlite
import anyio
import anyio.to_thread
from sqlalchemy import Connection, event
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from runner.errors import StoreUnavailable
from runner.store.backend import quiet_cancelled_closes
from runner.store.migrate import HEAD_REVISION, create_at_head, current_revision, foreign_schema, upgrade

BUSY_TIMEOUT_MS = 10_000
# A row is a ~3.5 KB prompt plus its ~1.5 KB answer, written in two steps. With SQLite's default 4 KB pages
# such a row spills onto an overflow page of its own, mostly empty: 8.4 KB of file per request for 4.9 KB
# of data. 16 KB pages keep rows whole and packed: 6.0 KB (measured, 500 requests through a run). 8 KB
# pages are no better than 4 KB (one such row per page), 32 KB ones slightly worse than 16 KB.
PAGE_SIZE = 16384


def database_url(db: str) -> URL:
    """A path or an SQLAlchemy URL -> an aiosqlite URL."""
    if "://" in db:
        url = make_url(db)
        if url.drivername == "sqlite":
            url = url.set(drivername="sqlite+aiosqlite")
        return url
    return make_url(f"sqlite+aiosqlite:///{Path(db).expanduser()}")


def database_path(db: str) -> Path | None:
    """The file behind `db`, or None for a URL that names no file."""
    database = database_url(db).database
    return Path(database) if database and database != ":memory:" else None


def _on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Hand transaction control to SQLAlchemy's begin event below (pysqlite's own BEGIN is deferred,
    # which lets two writers deadlock on upgrade from read to write lock).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL is durable against a killed process in WAL mode; only power loss can drop the last commits.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _on_begin(conn: Connection) -> None:
    # Writers take the write lock up front, so a busy database makes them wait (busy_timeout) instead of
    # failing half way; readers (status, export) stay deferred and never block writers in WAL mode.
    if conn.get_execution_options().get("readonly"):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _on_error(ctx: ExceptionContext) -> None:
    # A cancel (Ctrl-C, the end of a run stopping its readers) that lands while a statement runs on
    # aiosqlite's thread: SQLAlchemy takes it for a lost connection and terminates it, and since the task is
    # cancelled again at once (anyio), its graceful close is cut short and the force close stops aiosqlite's
    # thread before the graceful one's last step: that task then waits forever, and Python prints "Task was
    # destroyed but it is pending!" when it is collected. The connection is fine: the statement finishes on
    # its thread, and closing it (which SQLAlchemy runs to completion in a task of its own) rolls back and
    # hands it back to the pool.
    if isinstance(ctx.original_exception, asyncio.CancelledError):
        ctx.is_disconnect = False


def _on_do_connect(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
    # SQLAlchemy's aiosqlite dialect awaits what `async_creator_fn` returns in place of aiosqlite.connect().
    cparams["async_creator_fn"] = _connect


async def _connect(*args: Any, **kwargs: Any) -> Any:
    """aiosqlite.connect(), and when it fails (a directory, a file SQLite cannot open), its thread ended first.

    On a failed connect aiosqlite stops its thread with a future no one awaits; the CLI then ends its event
    loop at once to print the error, and the thread, setting that future on a closed loop, printed "Exception
    in thread ... RuntimeError: Event loop is closed" and a traceback under the one-line error.
    """
    conn = aiosqlite.connect(*args, **kwargs)
    conn._thread.daemon = True  # as SQLAlchemy's own connect does: the thread never holds the process open
    try:
        return await conn
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(conn._thread.join, 5.0)
        raise


def create_file(path: Path) -> None:
    """A new, empty store file, with what SQLite lets one choose only before the first table exists.

    Incremental auto-vacuum lets `runner delete` give the space of deleted jobs back to the file system in
    short steps, without rewriting the whole file (a full VACUUM blocks a running runner's commits).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")  # writes the header, and with it the two settings above
    finally:
        conn.close()


EMPTY_FILE = "the file is empty"


def holds_no_store(path: Path) -> str | None:
    """What the existing file at `path` holds instead of a store (an empty file, a database without the store's
    tables), or None when it may be one: a store, or a file SQLite will have its own words for (not a database,
    damaged, unreadable), said when it is opened.

    Read on a plain connection that changes nothing (the store's own connections switch a file to WAL mode
    on connecting, and write the first page of an empty one). Not a read-only one: as the last connection
    to a WAL file it removes the -wal and -shm files its read made, which a read-only one leaves behind.
    """
    try:
        if path.stat().st_size == 0 and not _has_content(path.with_name(path.name + "-wal")):
            return EMPTY_FILE
        conn = sqlite3.connect(rw_uri(path), uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except (OSError, sqlite3.Error):
        return None
    if not names:
        return "an SQLite database without tables"
    from runner.store.tables import metadata

    if "alembic_version" in names or names & set(metadata.tables):
        return None  # a store, or a database whose tables clash with the store's: migrate.foreign_schema says so
    return "an SQLite database without the store's tables"


def _has_content(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, or None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


# SQLite's primary result codes (sqlite3 exposes the extended code as `sqlite_errorcode`).
_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN = 3, 8, 10, 11, 13, 14
_SQLITE_NOTADB = 26


def _writable(p: Path) -> bool:
    return os.access(p, os.W_OK)


def _read_only_mount(p: Path) -> bool:
    try:
        return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def why_unusable(path: Path, exc: BaseException) -> str | None:
    """A plain reason why the store at `path` cannot be used, if `exc` is about the file; else None.

    Decided by the error's type and SQLite's result code, then the file system's permissions.
    """
    orig = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
    if isinstance(orig, OSError):  # making its directory
        return f"cannot create {orig.filename or path.parent}: {orig.strerror or orig}"
    if not isinstance(orig, sqlite3.Error):
        return None
    code = getattr(orig, "sqlite_errorcode", -1) & 0xFF
    if code in (_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_CANTOPEN):
        if path.is_dir():
            return "it is a directory"
        if _read_only_mount(path if path.exists() else path.parent):
            # Permissions were not the cause there: "check its permissions" sent users to chmod in vain.
            return "its file system is mounted read-only (a backup, or a disk the system remounted after errors)"
        if path.exists() and not _writable(path):
            return "the file is read-only (check its permissions)"
        if not _writable(path.parent):
            return (
                f"its directory {path.parent} is not writable (SQLite keeps {path.name}-wal and {path.name}-shm"
                " beside the store); choose another place with --db or RUNNER_DB"
            )
        return f"SQLite cannot open it for writing ({orig.sqlite_errorname})"
    if code in _BUSY_CODES:  # after every try (is_busy): over a minute and a half
        return (
            "another process keeps the store's write lock (an sqlite3 shell or a database browser with a"
            " transaction open, a runner stopped with Ctrl-Z): end it, then try again"
        )
    if code == _SQLITE_FULL:
        return "the disk is full"
    if code == _SQLITE_NOTADB:
        return "it is not a runner store (not an SQLite database)"
    if code == _SQLITE_CORRUPT:
        return "the SQLite file is damaged"
    if code == _SQLITE_IOERR:
        return f"input/output error ({orig.sqlite_errorname})"
    return None


def rw_uri(path: Path) -> str:
    """An SQLite URI that opens `path` for reading and writing but never creates it.

    Every connection after the first opens the store this way: SQLite would otherwise make a new, empty file
    where a store was deleted under a run, and could even replay the old write-ahead log into it.
    """
    return f"file:{quote(str(path))}?mode=rw"


def create_engine(db: str) -> AsyncEngine:
    """An async engine on the SQLite file `db` (which must exist), configured for many short write transactions."""
    url = database_url(db)
    path = database_path(db)
    if path is not None and "uri" not in url.query:
        url = url.set(database=f"file:{quote(os.path.abspath(path))}", query={**url.query, "mode": "rw", "uri": "true"})
    engine = quiet_cancelled_closes(create_async_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}))
    event.listen(engine.sync_engine, "connect", _on_connect)
    event.listen(engine.sync_engine, "begin", _on_begin)
    event.listen(engine.sync_engine, "handle_error", _on_error)
    event.listen(engine.sync_engine, "do_connect", _on_do_connect)
    return engine


async def migrate(engine: AsyncEngine, place: str) -> None:
    """Bring the schema to the newest migration (inside one IMMEDIATE transaction, so racing opens wait); a
    database that is not a store (another tool's tables, a newer runner's revision) is refused, unchanged.

    A store already at the newest revision is only read: `status` or `export` need not wait for the write lock
    that another process holds (a long commit, an sqlite3 shell with a transaction open); in WAL mode they read
    beside it."""
    async with engine.connect() as conn:
        await conn.execution_options(readonly=True)
        if await conn.run_sync(current_revision) == HEAD_REVISION:
            return
    async with engine.begin() as conn:
        why = await conn.run_sync(foreign_schema)
        if why is not None:
            raise StoreUnavailable(place, why)
        # A new store (no revision, and foreign_schema found no store tables) is made at the head at once.
        new = await conn.run_sync(current_revision) is None
        await conn.run_sync(create_at_head if new else upgrade)


# "database is locked" (another connection holds the write lock) and "database table is locked".
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def is_busy(exc: BaseException) -> bool:
    """Whether `exc` is SQLite's busy/locked error (by its result code), which is worth another try."""
    # busy_timeout already waited; a few more tries ride out a long writer in another process.
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlite_errorcode", -1) & 0xFF  # the primary code of an extended one (BUSY_SNAPSHOT ...)
    return isinstance(exc, OperationalError | sqlite3.OperationalError) and code in _BUSY_CODES
