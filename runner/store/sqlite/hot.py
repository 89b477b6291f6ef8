"""The store's hot writes: claiming, writing outcomes back, inserting a submit's chunks.

A run makes these transactions hundreds of times a second. Through SQLAlchemy's async engine each one cost
3-5 ms of CPU whatever its size: building the statement, the pool's checkout and reset, and an event-loop
round trip to aiosqlite's thread for BEGIN, for every statement and for COMMIT. Here each is fixed SQL run
by one function against a DB-API connection, called once per transaction: in a worker thread on a plain
sqlite3 connection (`HotConnection`), or, for a store without a file, inside the async engine's own
transaction. The guards are the same as everywhere in the store: `WHERE state = ... AND lease_owner = me`.
The SQL itself is in hot.sql, as named blocks.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio
import anyio.to_thread
import orjson

from runner.errors import StoreError
from runner.states import TERMINAL, RequestState
from runner.store.models import Claimed, NewRequest, Outcome, ResponseIdRecord, in_claim_order
from runner.store.sqlfile import blocks
from runner.store.sqlite.engine import rw_uri

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


def apply(
    db: DBAPIConnection,
    owner: str,
    outcomes: Sequence[Outcome],
    response_ids: Sequence[ResponseIdRecord],
    now: float,
) -> list[int]:
    """Write response ids and outcomes, each guarded; the ids of the requests refused (not leased by `owner`).

    A response id is written only to a request this owner still leases, and never over another id.
    """
    cur: Cursor = db.cursor()
    refused: list[int] = []
    for x in response_ids:
        cur.execute(_SET_RESPONSE_ID, (x.response_id, x.api_request_id, x.sent_at, now, x.request_id, owner))
        if cur.rowcount == 0:
            # Written already (the same id, by this owner: a retried commit) is not a refusal.
            cur.execute(_RESPONSE_ID_OF, (x.request_id,))
            row = cur.fetchall()
            if not row or row[0][0] != x.response_id or row[0][1] != owner:
                refused.append(x.request_id)
    record_attempts(db, owner, outcomes, now)
    requeued: list[int] = []
    for o in outcomes:
        common = (
            o.http_status,
            o.api_request_id,
            o.error_code,
            o.error_message,
            1 if o.rate_limited else 0,
            o.sent_at,
            now,
            o.request_id,
            owner,
        )
        try:
            if o.to in TERMINAL:
                u = o.usage
                cur.execute(
                    _FINISH,
                    (
                        o.to.value,
                        o.response_body,
                        u.input_tokens,
                        u.cached_tokens,
                        u.output_tokens,
                        u.reasoning_tokens,
                        u.total_tokens,
                        now,
                        *common,
                    ),
                )
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

INSERT_REQUEST = _SQL["insert_request"]
# One JSON array per chunk, unpacked by SQLite in C (see hot.sql).
_INSERT_REQUESTS_JSON = _SQL["insert_requests_json"]
_JSON1_PROBE = _SQL["json1_probe"]


def has_json1(db: DBAPIConnection) -> bool:
    """Whether this SQLite has its JSON functions (always from 3.38; before that only if built with JSON1)."""
    cur: Cursor = db.cursor()
    try:
        cur.execute(_JSON1_PROBE)
        cur.fetchall()
    except sqlite3.OperationalError:  # the only way this fixed statement fails: no such function
        return False
    return True


def insert(db: DBAPIConnection, job_id: str, rows: Sequence[NewRequest], now: float, *, json1: bool) -> None:
    """Insert a chunk of a staging job's lines: as one JSON array if `json1` (see `has_json1`), else row by row."""
    cur: Cursor = db.cursor()
    if json1:
        payload = orjson.dumps(
            [(r.line_no, r.custom_id, r.body, r.conversation, r.body_hash, r.sched or r.line_no) for r in rows]
        ).decode()
        cur.execute(_INSERT_REQUESTS_JSON, (job_id, now, payload))
    else:
        cur.executemany(
            INSERT_REQUEST,
            [
                (job_id, r.line_no, r.custom_id, r.body, r.conversation, r.body_hash, r.sched or r.line_no, now)
                for r in rows
            ],
        )


# -- the connection ---------------------------------------------------------------------------------------


class HotConnection:
    """A plain sqlite3 connection on the store's file, used from a worker thread, one transaction per call.

    Same pragmas and busy timeout as the engine's connections. Calls are serialised; a call that has
    started always finishes its transaction (commit or rollback), even when its caller is cancelled.
    """

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._lock = anyio.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # Never creates the file: one deleted under a run must not come back empty (see engine.rw_uri).
            conn = sqlite3.connect(
                rw_uri(self._path), uri=True, isolation_level=None, check_same_thread=False, timeout=self._busy_timeout
            )
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._conn = conn
        return self._conn

    def _transaction(self, fn: Callable[[DBAPIConnection], T]) -> T:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return result

    async def transaction(self, fn: Callable[[DBAPIConnection], T]) -> T:
        """Run `fn(connection)` inside BEGIN IMMEDIATE ... COMMIT in a worker thread."""
        async with self._lock:
            return await anyio.to_thread.run_sync(self._transaction, fn)

    def close(self) -> None:
        """Close the connection (the next transaction opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
