"""The store's hot writes: claiming, writing outcomes back, inserting a submit's chunks.

A run makes these transactions hundreds of times a second. Through SQLAlchemy's async engine each one cost
3-5 ms of CPU whatever its size: building the statement, the pool's checkout and reset, and an event-loop
round trip to aiosqlite's thread for BEGIN, for every statement and for COMMIT. Here each is fixed SQL run
by one function against a DB-API connection, called once per transaction: on a plain sqlite3 connection
(`HotConnection`: on the event loop when the write lock is free, else in a worker thread), or, for a store
without a file, inside the async engine's own transaction. The guards are the same as everywhere in the
store: `WHERE state = ... AND lease_owner = me`. The SQL itself is in hot.sql, as named blocks.

Over 400 lines on purpose: the hot statements and the connection that runs them are tuned together (which
thread a transaction runs on, how many rows one statement carries, where checkpoints happen); apart, a
change to one would be measured without the other.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import anyio

from runner.errors import StoreError
from runner.states import TERMINAL, RequestState
from runner.store.models import (
    RESPONSE_ID_TAKEN,
    Claimed,
    NewRequest,
    Outcome,
    Refused,
    ResponseIdRecord,
    in_claim_order,
    response_id_taken,
)
from runner.store.sqlfile import blocks
from runner.store.sqlite.engine import PAGE_SIZE, is_busy, rw_uri

T = TypeVar("T")
log = logging.getLogger(__name__)


class Cursor(Protocol):
    """What these functions need of a DB-API cursor (sqlite3's, or SQLAlchemy's adapted aiosqlite one)."""

    rowcount: int

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class DBAPIConnection(Protocol):
    def cursor(self) -> Any: ...


# -- claim ------------------------------------------------------------------------------------------------

# The statements are named blocks of hot.sql (read once): plain SQL, not f-strings.
_SQL = blocks("sqlite", "hot.sql")
_CLAIM = _SQL["claim"]


@functools.cache
def _claim_sql(jobs: int) -> str:
    # One `?` per job id: the block's text for each number of jobs is made once, not at every claim.
    return _CLAIM.replace("/*job_ids*/ ?", ", ".join("?" * jobs))


@functools.cache
def _cancelled_sql(jobs: int) -> str:
    return _SQL["cancelled_jobs"].replace("/*job_ids*/ ?", ", ".join("?" * jobs))


def cancelled_jobs(db: DBAPIConnection, job_ids: Sequence[str]) -> set[str]:
    """Which of `job_ids` were cancelled."""
    cur: Cursor = db.cursor()
    cur.execute(_cancelled_sql(len(job_ids)), tuple(job_ids))
    return {str(r[0]) for r in cur.fetchall()}


def claim(
    db: DBAPIConnection, owner: str, job_ids: Sequence[str], n: int, lease_seconds: float, now: float
) -> list[Claimed]:
    """Lease up to `n` due, queued requests of `job_ids`, counting the attempt now: the jobs in the order
    given, each in claim order (`sched`: a prompt-cache group's lines together, runner/cachekeys.py).

    One statement per job, so that each walks its own (job_id, sched, id) index in order: over several
    jobs at once SQLite would sort every queued row of them at every claim. A request whose conversation
    has an earlier unfinished request is skipped: one at a time, in order.
    """
    if not job_ids or n <= 0:
        return []
    cur: Cursor = db.cursor()
    sql = _claim_sql(1)
    claimed: list[Claimed] = []
    for job_id in job_ids:
        cur.execute(sql, (owner, now + lease_seconds, now, now, now, now, job_id, n - len(claimed)))
        claimed.extend(in_claim_order(cur.fetchall()))
        if len(claimed) >= n:
            break
    return claimed


# -- outcomes ---------------------------------------------------------------------------------------------

_FINISH = _SQL["finish"]
_REQUEUE = _SQL["requeue"]
# A row the store refused to take (a value SQLite cannot hold): failed, with the reason and nothing else,
# so it is final (never claimed and sent again) and every value in it is the runner's own.
STORE_REFUSED = "store_refused"
_REFUSE_ROW = _SQL["refuse_row"]
# What one row's values can make SQLite or its binding raise (an int over 64 bits, a string it cannot
# encode). SQLite undoes a failed statement by itself, so the rest of the transaction stands without a
# SAVEPOINT per row (which would cost two more statements for every result on the hot path).
_ROW_ERRORS = (OverflowError, ValueError, TypeError, sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError)
_SET_RESPONSE_ID = _SQL["set_response_id"]
_RESPONSE_ID_OF = _SQL["response_id_of"]
_RESPONSE_ID_HOLDER = _SQL["response_id_holder"]
_FAIL_TAKEN = _SQL["fail_taken"]
_CANCEL_IF_JOB_CANCELLED = _SQL["cancel_if_job_cancelled"]
_CANCEL_REQUEUED_IN_CANCELLED_JOB = _SQL["cancel_requeued_in_cancelled_job"]


def cancel_requeued_in_cancelled_jobs(db: DBAPIConnection, now: float, ids: Sequence[int] | None = None) -> None:
    """Work that comes back to `queued` in a job cancelled meanwhile is cancelled, never left waiting for a
    claim: the requests `ids`, or every queued request of a cancelled job."""
    cur: Cursor = db.cursor()
    if ids is None:
        cur.execute(_CANCEL_IF_JOB_CANCELLED, (now, now))
    else:
        cur.executemany(_CANCEL_REQUEUED_IN_CANCELLED_JOB, [(now, now, i) for i in ids])


# Inserted before the outcome's own UPDATE, under the same guard (see hot.sql).
_RECORD_ATTEMPT = _SQL["record_attempt"]


def record_attempts(db: DBAPIConnection, owner: str, outcomes: Sequence[Outcome], now: float) -> None:
    """One attempts row per outcome of an attempt that was made (not for work handed back unsent)."""
    rows = [
        (
            o.to.value,
            o.sent_at,
            now,
            o.http_status,
            o.api_request_id,
            o.error_code,
            o.error_message,
            o.request_id,
            owner,
        )
        for o in outcomes
        if not o.refund_attempt
    ]
    if rows:
        cur: Cursor = db.cursor()
        try:
            cur.executemany(_RECORD_ATTEMPT, rows)
        except Exception as e:  # sqlite3's or the engine's error class, by the connection in use
            # Attempt rows are the history `runner show` prints; the outcomes beside them are answers that
            # were paid for. A history row that cannot be written must never take those down with it.
            log.warning("attempt history not recorded for %d request(s): %s", len(rows), type(e).__name__)


# -- many rows per statement ----------------------------------------------------------------------------
#
# A group commit used to run one attempts INSERT and one UPDATE per result. Each sqlite3 `execute` hands the
# GIL over while SQLite works and must then win it back from the event loop, busy with the replies of the
# next requests. Measured: a commit of 64 results in a thread beside a thread busy in Python took 28 ms
# (median) that way, 10 ms with the blocks `*_many` (the same CPU, ~23 us a result); every slot whose
# result is in it waits that long. They write up to MANY_ROWS results per statement, one row of VALUES
# each; the number of rows is rounded up to a power of two (padded with rows that match nothing) so that
# few statement texts exist. (Response ids gained nothing this way: their UPDATE is small, and stays one
# per id.)
MANY_ROWS = 64  # 64 rows of 14 parameters stay under 999, the oldest SQLite limit on parameters
_ROWS = "/*rows*/ "


@functools.cache
def _many_sql(name: str, rows: int) -> str:
    sql = _SQL[name]
    start = sql.index(_ROWS) + len(_ROWS)
    row = sql[start : sql.index(")", start) + 1]
    return sql[: start - len(_ROWS)] + ", ".join([row] * rows) + sql[start + len(row) :]


def _many(
    cur: Cursor, name: str, width: int, rows: Sequence[tuple[Any, ...]], head: tuple[Any, ...], owner: str
) -> int:
    """Run block `name` over `rows` (each `width` values), MANY_ROWS at a time; the rows it changed."""
    changed = 0
    for i in range(0, len(rows), MANY_ROWS):
        chunk = rows[i : i + MANY_ROWS]
        size = 1 << (len(chunk) - 1).bit_length()
        params: list[Any] = [*head]
        for r in chunk:
            params.extend(r)
        params.extend([None] * (width * (size - len(chunk))))  # an id of NULL matches no request
        params.append(owner)
        cur.execute(_many_sql(name, size), params)
        changed += cur.rowcount
    return changed


def _apply_many(cur: Cursor, owner: str, finished: Sequence[Outcome], now: float) -> bool:
    """Write the final outcomes `finished` (and their attempt rows) with the `*_many` blocks. True when every
    row was written; otherwise (a row refused, or a value SQLite will not take) none is, and False."""
    cur.execute("SAVEPOINT many")
    try:
        attempts = [
            (o.request_id, o.to.value, o.sent_at, o.http_status, o.api_request_id, o.error_code, o.error_message)
            for o in finished
            if not o.refund_attempt
        ]
        ok = _many(cur, "record_attempts_many", 7, attempts, (now,), owner) == len(attempts)
        if ok:
            rows = [(o.request_id, *_answer(o), *_reply(o)) for o in finished]
            ok = _many(cur, "finish_many", 14, rows, (now, now), owner) == len(finished)
    except Exception:  # a value one row cannot hold, or the store itself: the one-by-one path decides which
        ok = False
    if not ok:
        cur.execute("ROLLBACK TO many")
    cur.execute("RELEASE many")
    return ok


def _answer(o: Outcome) -> tuple[object, ...]:
    """A final outcome's state, body and five usage counts, in the order `finish` and `finish_many` take them."""
    u = o.usage
    return (
        o.to.value,
        o.response_body,
        u.input_tokens,
        u.cached_tokens,
        u.output_tokens,
        u.reasoning_tokens,
        u.total_tokens,
    )


def _reply(o: Outcome) -> tuple[object, ...]:
    """What every outcome records of its reply, in the order `finish`, `finish_many` and `requeue` take it."""
    return (o.http_status, o.api_request_id, o.error_code, o.error_message, 1 if o.rate_limited else 0, o.sent_at)


def _fail_taken(cur: Cursor, owner: str, x: ResponseIdRecord, now: float) -> None:
    """Fail the line given response id `x`, which another request holds, with its attempt row."""
    cur.execute(_RESPONSE_ID_HOLDER, (x.response_id, x.request_id))
    holder = cur.fetchall()
    message = response_id_taken(x.response_id, *(holder[0] if holder else (None, None)))
    fields = (x.api_request_id, RESPONSE_ID_TAKEN, message)
    cur.execute(_RECORD_ATTEMPT, ("failed", x.sent_at, now, None, *fields, x.request_id, owner))
    cur.execute(_FAIL_TAKEN, (*fields, x.sent_at, now, now, x.request_id, owner))


def apply(
    db: DBAPIConnection,
    owner: str,
    outcomes: Sequence[Outcome],
    response_ids: Sequence[ResponseIdRecord],
    now: float,
) -> Refused:
    """Write response ids and outcomes, each guarded; the ids of the requests refused (not leased by `owner`).

    A response id is written only to a request this owner still leases, never over another id, and never if
    another request holds it: that line fails instead (`Refused.taken`).
    Final outcomes go in a few statements (`_apply_many`); when one of them is refused or cannot be
    written, they are written one by one, as requeues and response ids always are.
    """
    cur: Cursor = db.cursor()
    finished = [o for o in outcomes if o.to in TERMINAL]
    if finished and _apply_many(cur, owner, finished, now):
        outcomes = [o for o in outcomes if o.to not in TERMINAL]
    refused = Refused()
    for x in response_ids:
        cur.execute(
            _SET_RESPONSE_ID, (x.response_id, x.api_request_id, x.sent_at, now, x.request_id, owner, x.response_id)
        )
        if cur.rowcount == 0:
            # Written already (the same id, by this owner: a retried commit) is not a refusal.
            cur.execute(_RESPONSE_ID_OF, (x.request_id,))
            row = cur.fetchall()
            if row and row[0][0] is None and row[0][1] == owner:
                # Still ours and without an id: the only guard left is the id another request holds.
                _fail_taken(cur, owner, x, now)
                refused.taken.append(x.request_id)
            elif not row or row[0][0] != x.response_id or row[0][1] != owner:
                refused.append(x.request_id)
    record_attempts(db, owner, outcomes, now)
    requeued: list[int] = []
    for o in outcomes:
        common = (*_reply(o), now, o.request_id, owner)
        try:
            if o.to in TERMINAL:
                cur.execute(_FINISH, (*_answer(o), now, *common))
            elif o.to is RequestState.QUEUED:
                refund = 1 if o.refund_attempt else 0
                cur.execute(_REQUEUE, (o.next_attempt_at, refund, 1 if o.clear_response_id else 0, *common))
                requeued.append(o.request_id)
            else:
                raise StoreError(f"apply() takes terminal states or queued, not {o.to}")  # rolls back the whole call
        except _ROW_ERRORS as exc:
            # One row must not take the group commit down with it: the others' answers land, and this one
            # is final, so no run sends it (and pays for it) again. Only if even this fixed write fails
            # (the store itself is broken) does the whole commit fail.
            reason = f"the job store refused this result ({type(exc).__name__}: {exc})"[:500]
            cur.execute(_REFUSE_ROW, (reason, now, now, o.request_id, owner))
        if cur.rowcount == 0:
            refused.append(o.request_id)
    if requeued:
        cancel_requeued_in_cancelled_jobs(db, now, requeued)
    return refused


# -- submit -----------------------------------------------------------------------------------------------

_INSERT_HEAD, _INSERT_ROW = _SQL["insert_requests"].split(_ROWS)  # the statement, and one row of VALUES
_JSON1_PROBE = _SQL["json1_probe"]
# Rows per INSERT: 500 rows of 8 parameters stay under SQLite's bound-parameter limit since 3.32 (32,766),
# and cost least per row (measured: 100 rows ~15 % more, 2,000 ~5 % more); older SQLite allows 999.
INSERT_ROWS = 500 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999 // 8


def has_json1(db: DBAPIConnection) -> bool:
    """Whether this SQLite has its JSON functions (always from 3.38; before that only if built with JSON1)."""
    cur: Cursor = db.cursor()
    try:
        cur.execute(_JSON1_PROBE)
        cur.fetchall()
    except sqlite3.OperationalError:  # the only way this fixed statement fails: no such function
        return False
    return True


@functools.cache
def _insert_sql(rows: int) -> str:
    return _INSERT_HEAD + ", ".join([_INSERT_ROW] * rows)


def insert(db: DBAPIConnection, job_id: str, rows: Sequence[NewRequest], now: float) -> None:
    """Insert a chunk of a staging job's lines, INSERT_ROWS rows a statement."""
    cur: Cursor = db.cursor()
    for i in range(0, len(rows), INSERT_ROWS):
        part = rows[i : i + INSERT_ROWS]
        params = [
            v
            for r in part
            for v in (job_id, r.line_no, r.custom_id, r.body, r.conversation, r.body_hash, r.sched or r.line_no, now)
        ]
        cur.execute(_insert_sql(len(part)), params)


_ANSWERED_HEAD, _ANSWERED_REST = _SQL["insert_answered"].split(_ROWS)
_ANSWERED_ROW = _ANSWERED_REST[: _ANSWERED_REST.index(")") + 1]  # one row of VALUES, "(?, ?, ?, ?, ?, ?)"
_ANSWERED_TAIL = _ANSWERED_REST[len(_ANSWERED_ROW) :]
_COUNT_REUSED = _SQL["count_reused"]


def _answered_sql(rows: int) -> str:
    return _ANSWERED_HEAD + ", ".join([_ANSWERED_ROW] * rows) + _ANSWERED_TAIL


def insert_answered(
    db: DBAPIConnection, job_id: str, rows: Sequence[NewRequest], now: float, newer_than: float | None
) -> int:
    """Insert a chunk of a staging job's lines, each already answered where an original answer to its question
    exists (`submit --reuse`), INSERT_ROWS rows a statement; how many were answered."""
    cur: Cursor = db.cursor()
    for i in range(0, len(rows), INSERT_ROWS):
        part = rows[i : i + INSERT_ROWS]
        params: list[object] = [job_id, now, newer_than]
        params += [
            v for r in part for v in (r.line_no, r.custom_id, r.body, r.conversation, r.body_hash, r.sched or r.line_no)
        ]
        cur.execute(_answered_sql(len(part)), params)
    cur.execute(_COUNT_REUSED, (job_id, rows[0].line_no, rows[-1].line_no))
    return int(cur.fetchall()[0][0])


# -- the connection ---------------------------------------------------------------------------------------


# The write-ahead log is copied back into the file (a checkpoint, with an fsync) in the worker thread once it
# holds this many pages, never on the event loop: SQLite's own automatic checkpoint is off on the
# connection used there.
CHECKPOINT_PAGES = 1000
# A claim or a group commit changes many rows in one statement inside a transaction, so SQLite keeps a
# statement journal of the pages it changes; past 64 KB (four 16 KB pages) that journal spilled to a
# temporary file, created, written and deleted at every commit. In memory: a commit of 16 results took
# 44 -> 21 us of SQLite a result, its COMMIT 27 -> 20 (the journal is only read to undo one failed
# statement: what reaches the database is the same). Not for a submit's chunk inserts (inline=False): their
# journals reach megabytes (200,000 lines with random custom_ids: peak RSS +6 MB, no CPU saved).
_JOURNAL_IN_MEMORY = "PRAGMA temp_store=MEMORY"
_JOURNAL_SPILLS = "PRAGMA temp_store=DEFAULT"
CHECKPOINT_CHECK_EVERY = 64  # inline transactions between two looks at the log's size (one stat)


def _commit_or_roll_back(conn: sqlite3.Connection, fn: Callable[[DBAPIConnection], T]) -> T:
    """`fn(conn)` inside the transaction just begun on `conn`, committed, or rolled back if anything is raised."""
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return result


class HotConnection:
    """Plain sqlite3 connections on the store's file, one transaction per call.

    A transaction runs on the event loop itself when the store's write lock is free at once (no other
    process or connection is writing), else in a worker thread that waits for the lock as the engine's
    connections do. Measured (2,000 background requests on the loaded 2-core VM, every hot transaction
    timed): in the worker thread a claim or commit took 0.1-9 ms of SQLite but waited 20-350 ms for the
    thread to be scheduled and for the busy event loop to take the result back, while every slot whose
    response id was in it waited too; run where it is asked for, it waits for nothing. Same pragmas and
    busy timeout as the engine's connections. Calls are serialised; a call that has started always
    finishes its transaction (commit or rollback), even when its caller is cancelled.
    """

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._inline_conn: sqlite3.Connection | None = None
        self._inline_commits = 0
        self._thread_in_memory = False  # the worker thread's connection keeps its statement journals in memory
        # fast_acquire: an uncontended lock costs no extra turn of the event loop (see `transaction`).
        self._lock = anyio.Lock(fast_acquire=True)
        self._thread: ThreadPoolExecutor | None = None

    def _open(self, timeout: float) -> sqlite3.Connection:
        # Never creates the file: one deleted under a run must not come back empty (see engine.rw_uri).
        conn = sqlite3.connect(
            rw_uri(self._path), uri=True, isolation_level=None, check_same_thread=False, timeout=timeout
        )
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._open(self._busy_timeout)
        return self._conn

    def _inline(self, fn: Callable[[DBAPIConnection], T]) -> tuple[bool, T | None]:
        """(True, result) of `fn` in a transaction on the event loop's connection; (False, None) if another
        writer holds the lock (nothing was done: the worker thread then waits for it)."""
        conn = self._inline_conn
        if conn is None:
            conn = self._inline_conn = self._open(0.0)  # never waits for the lock on the event loop
            conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints go to the worker thread (_checkpoint)
            conn.execute(_JOURNAL_IN_MEMORY)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if is_busy(e):
                return False, None
            raise
        result = _commit_or_roll_back(conn, fn)
        self._inline_commits += 1
        if self._inline_commits % CHECKPOINT_CHECK_EVERY == 0:
            self._maybe_checkpoint()
        return True, result

    def _maybe_checkpoint(self) -> None:
        try:
            size = os.stat(f"{self._path}-wal").st_size
        except OSError:
            return
        if size >= CHECKPOINT_PAGES * PAGE_SIZE:
            self._executor().submit(self._checkpoint)  # not waited for: the next transaction queues behind it

    def checkpoint_soon(self) -> None:
        """Copy the log into the file in the worker thread, not waited for (nothing is, if it has no log)."""
        if os.path.exists(f"{self._path}-wal"):
            self._executor().submit(self._checkpoint)

    def _checkpoint(self) -> None:
        try:
            self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as e:  # another checkpoint or a reader in the way: the next look tries again
            log.debug("checkpoint skipped: %s", e)

    def _executor(self) -> ThreadPoolExecutor:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runner-store")
        return self._thread

    def _transaction(self, fn: Callable[[DBAPIConnection], T], in_memory: bool) -> T:
        conn = self._connection()
        if in_memory != self._thread_in_memory:  # a claim or commit waited for the lock, or a submit's chunk
            conn.execute(_JOURNAL_IN_MEMORY if in_memory else _JOURNAL_SPILLS)
            self._thread_in_memory = in_memory
        conn.execute("BEGIN IMMEDIATE")
        return _commit_or_roll_back(conn, fn)

    async def transaction(self, fn: Callable[[DBAPIConnection], T], *, inline: bool = True) -> T:
        """Run `fn(connection)` inside BEGIN IMMEDIATE ... COMMIT: on the event loop if the write lock is
        free (and `inline`), else in the worker thread.

        A submit's chunk inserts pass inline=False: tens of milliseconds of SQLite that runs without the
        GIL, so the thread inserts one chunk while the event loop parses the next (on the loop, the two
        took turns: 9.3 CPU-s of a 1,000,000-line submit, 4.2 of them inserting).

        The thread's hand-over is asyncio's own executor future, not `anyio.to_thread.run_sync`: with a busy
        event loop the result is back within one or two turns of the loop, where anyio's took ten (its
        checkpoints and result hand-back; a no-op call: 168 ms median against 65 ms beside 50 tasks using
        0.3 ms of CPU each per turn). Shielded: once started, the transaction finishes (commit or rollback)
        before a cancelled caller moves on.
        """
        async with self._lock:
            if inline:
                done, result_inline = self._inline(fn)
                if done:
                    return cast(T, result_inline)  # T itself (which may be None)
            future = asyncio.get_running_loop().run_in_executor(self._executor(), self._transaction, fn, inline)
            with anyio.CancelScope(shield=True):
                result = await future
        return result

    def close(self) -> None:
        """Close the connections (the next transaction opens new ones)."""
        if self._thread is not None:
            self._thread.shutdown(wait=True)  # nothing runs meanwhile: the lock is free between transactions
            self._thread = None
        for conn in (self._conn, self._inline_conn):
            if conn is not None:
                conn.close()
        self._conn = self._inline_conn = None
