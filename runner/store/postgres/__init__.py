"""The PostgreSQL backend: SQLAlchemy's asyncpg dialect for the portable queries, asyncpg itself for the hot ones.

Many runners (on many machines) share one database. What makes that safe lives here:
- claims are one `UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED)` statement (hot.sql), so no row
  goes to two runners;
- every time a lease is stamped or compared with is the database's clock (`now_sql`), so a runner whose
  clock is off cannot expire another's live lease;
- migrations run under an advisory lock, so two processes opening a new database do not race;
- a group commit is one statement run on its own, one round trip (arrays unnested on the server; hot.sql
  `apply`), a claim of one job too, and a submit's chunk one COPY, each on the asyncpg connection under the
  engine's, without SQLAlchemy's per-statement cost.

asyncpg is an optional extra (`pip install 'responses-runner[postgres]'`): without it a PostgreSQL URL is
one line naming the extra.

Over 400 lines on purpose: the backend's seam (opening, migrating, the hot statements) and the one-line reasons
for everything a misconfigured server or URL can raise (`why_unusable`) read the same driver errors; apart, a
new driver error would be classified in one place and raised unexplained from the other.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Float, cast, event, func, select, text, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import ColumnElement

from runner.errors import StoreMissing, StoreUnavailable
from runner.states import TERMINAL, RequestState
from runner.store.backend import OpenMode, quiet_cancelled_closes
from runner.store.migrate import HEAD_REVISION, current_revision, known_revision, unknown_revision_reason, upgrade
from runner.store.models import (
    Claimed,
    DuplicateCustomId,
    ExportRow,
    NewRequest,
    Outcome,
    ReadyLines,
    Refused,
    ResponseIdRecord,
    claim_by_job,
    in_claim_order,
)
from runner.store.postgres import copy, export, writeback
from runner.store.postgres.copy import COPY_COLUMNS
from runner.store.sqlfile import blocks
from runner.store.tables import jobs, postgres_options, requests

__all__ = ["PostgresBackend", "is_postgres_url", "masked"]

T = TypeVar("T")
log = logging.getLogger(__name__)

EXTRA_HINT = "PostgreSQL stores need the optional driver: pip install 'responses-runner[postgres]' (asyncpg)"
_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg")
URL_FORM = "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
# SQLSTATEs worth another try: serialization failure, deadlock detected (either side is rolled back whole), a
# lock not had within the user's `lock_timeout`, and no connection free for the user or database: the fleet's
# pools can pass max_connections (or a role's CONNECTION LIMIT) for a moment. When they last, `why_unusable`.
_TRANSIENT = frozenset({"40001", "40P01", "55P03", "53300"})
# SQLSTATE classes of a value the server refuses to store: data exception, integrity constraint violation,
# program limit exceeded (a value too big for an index entry). Any other error of a write-back (a conflict,
# a lost connection, a broken statement) is not about one row.
_REFUSED = frozenset({"22", "23", "54"})
# SQLSTATEs of a migration that meets what it would create already there, made by something else: duplicate
# table, object (constraint, index), function, schema.
_TAKEN = frozenset({"42P07", "42710", "42723", "42P06"})
INSUFFICIENT_PRIVILEGE = "42501"
# SQLSTATEs of a server going down: admin_shutdown, crash_shutdown, cannot_connect_now (starting or stopping).
_SHUTTING_DOWN = frozenset({"57P01", "57P02", "57P03"})
POOL_SIZE, POOL_OVERFLOW = 4, 8  # connections a runner process keeps open, and opens beyond them at busy moments
# What a server set up for other uses refuses a store, said in one line (the server's own words follow).
_SERVER_REFUSES = {
    # A standby (a read replica's URL), or `default_transaction_read_only` set for the user or database.
    "25006": "the database takes no writes here (a standby server, or default_transaction_read_only is on for"
    " this user or database): point the URL at the primary",
    # `statement_timeout` set for the user or database (managed servers often do), or pg_cancel_backend().
    "57014": "the server cancelled a statement (a statement_timeout set for this user or database, or an"
    " administrator): runner's statements must be let finish (ALTER ROLE name SET statement_timeout = 0)",
    "53300": "the server has no connection free for this user or database (max_connections, or the role's"
    f" CONNECTION LIMIT): each runner process uses up to {POOL_SIZE + POOL_OVERFLOW}",
    # The one transaction runner leaves idle: an export's (or a `results()` loop's) snapshot, while what reads it
    # is slower than the server's idle_in_transaction_session_timeout.
    "25P03": "the server ended the read after it waited longer than its idle_in_transaction_session_timeout for"
    " whatever reads the export: write it to a file (-o FILE), or raise the timeout for this user",
    "53100": "the database server's disk is full",
    "53200": "the database server is out of memory",
}
Q = RequestState.QUEUED.value


# Connects whose caller was cancelled, still running (see `_connect_whole`): held, so none is collected pending.
_late_connects: set[asyncio.Future[Any]] = set()


def _close_late(task: asyncio.Future[Any]) -> None:
    _late_connects.discard(task)
    if task.cancelled() or task.exception() is not None:
        return
    task.result().terminate()


def is_postgres_url(db: str) -> bool:
    """Whether `db` names a PostgreSQL database: `postgresql://`, `postgres://`, `postgresql+asyncpg://`, and
    any other driver's spelling (`postgresql+psycopg://`), which the backend refuses in one line."""
    scheme, sep, _ = db.partition("://")
    return bool(sep) and scheme.lower().partition("+")[0] in _SCHEMES


class ConnectArgumentRefused(Exception):
    """asyncpg.connect() refused an argument the URL's settings gave it (a value of the wrong type or range).

    Raised instead of the driver's bare ValueError or TypeError, which could not be told apart from any
    other ValueError by the time it reaches `why_unusable`.
    """


def masked(db: str) -> str:
    """`db` as it may be shown: the password (in the user part or as a `password=` setting) replaced by ***.

    Read by hand, not by SQLAlchemy: a password holding an unencoded `@` parses as user `u`, password `p1`
    and host `p2@host`, so the parsed password hid only its first part and the rest was shown as the host.
    The user part ends at the last `@` (one in a setting only makes more of the URL hidden).
    """
    scheme, sep, rest = db.partition("://")
    if not sep:
        return "***"
    userinfo, at, place = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}:***@{place}" if colon else f"{user}@{place}"
    return f"{scheme}://" + re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", rest)


class _UrlProblem(ValueError):
    """A URL that parses but cannot name a store; its message says why."""


def _url(db: str) -> URL:
    url = make_url(db)
    scheme = url.drivername.lower()
    if scheme not in _SCHEMES:
        driver = scheme.partition("+")[2]
        raise _UrlProblem(
            f"runner reaches PostgreSQL through asyncpg, not {driver}: write the URL as postgresql://..."
            " (or postgresql+asyncpg://...)"
        )
    if url.port is not None and not 0 < url.port < 65536:
        raise _UrlProblem(f"the port {url.port} is not a TCP port (1-65535)")
    if not url.database and not os.environ.get("PGDATABASE"):
        # asyncpg would fall back on a database named after the user: "does not exist", or worse, the
        # `postgres` maintenance database made into a store.
        raise _UrlProblem(f"the URL names no database ({URL_FORM}; create it first: createdb DATABASE)")
    url = url.set(drivername="postgresql+asyncpg")
    if "sslmode" in url.query and "ssl" not in url.query:
        # libpq's spelling (psql, most tutorials); asyncpg takes the same modes as `ssl`.
        url = url.update_query_dict({"ssl": url.query["sslmode"]}).difference_update_query(["sslmode"])
    return url


def _sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code if isinstance(code, str) else None


def _server_reason(exc: BaseException) -> tuple[str, BaseException] | None:
    """The SQLSTATE (and the error) of a reason the server gave, down the chain of errors that wrap it: a
    connection it ended (idle_in_transaction_session_timeout, a shutdown) surfaces as the driver's "connection
    was closed" (08003), caused by the server's own error, under SQLAlchemy's wrapper."""
    seen: BaseException | None = exc
    for _ in range(8):  # a few wrappers deep at most; a chain is never a cycle here, but bounded anyway
        if seen is None:
            return None
        code = getattr(seen, "sqlstate", None)
        if isinstance(code, str) and (code in _SERVER_REFUSES or code in _SHUTTING_DOWN):
            return code, seen
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


class PostgresBackend:
    """The store in one PostgreSQL database, shared by any number of runners."""

    path: Path | None = None

    def __init__(self, db: str) -> None:
        self.place = masked(db)
        if importlib.util.find_spec("asyncpg") is None:
            raise StoreUnavailable(self.place, EXTRA_HINT)
        import asyncpg

        self._asyncpg = asyncpg
        postgres_options()  # the indexes' PostgreSQL options, kept off SQLite stores (store/tables.py)
        # What a statement can raise here; OSError: the server went away (a refused or dropped connection).
        self.errors: tuple[type[BaseException], ...] = (
            DBAPIError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            OSError,
        )
        # What a write-back statement raises for a value PostgreSQL cannot take (or asyncpg cannot encode).
        self._refusals: tuple[type[BaseException], ...] = (asyncpg.PostgresError, ValueError, TypeError, OverflowError)
        try:
            url = _url(db)
        except _UrlProblem as e:
            raise StoreUnavailable(self.place, str(e)) from None
        except Exception:
            # Most often a password holding @, : or / as it is (the URL then parses as something else).
            why = f"not a valid PostgreSQL URL ({URL_FORM}; in the password write @ : / % as %40 %3A %2F %25)"
            raise StoreUnavailable(self.place, why) from None
        self.engine: AsyncEngine = quiet_cancelled_closes(
            create_async_engine(
                url,
                pool_size=POOL_SIZE,
                max_overflow=POOL_OVERFLOW,
                connect_args={"server_settings": {"application_name": "runner"}},
            )
        )
        event.listen(self.engine.sync_engine, "do_connect", self._connect)
        self._mode: OpenMode = "create"
        self._size = 0  # pg_database_size, as of the open or the last reclaim_space (file_size is not async)
        self._sql = blocks("postgres", "hot.sql")

    # -- opening ------------------------------------------------------------------------------------

    async def _connect_whole(self, *args: Any, **kwargs: Any) -> Any:
        """asyncpg.connect(), which a cancel frees the caller of without cutting it short.

        asyncpg 0.32 cut short while its connection is being made leaves a future failed with "unexpected
        connection_lost() call" that nobody reads, logged by asyncio as an error ("Future exception was never
        retrieved"): it happened to reads a run's end cancelled. The connect runs on in its own task, and the
        connection it makes too late is closed."""
        task = asyncio.ensure_future(self._asyncpg.connect(*args, **kwargs))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            _late_connects.add(task)
            task.add_done_callback(_close_late)
            raise

    def _connect(self, dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
        """SQLAlchemy's connect, with a value asyncpg refuses (`?command_timeout=abc`) raised as a typed error."""
        cparams["async_creator_fn"] = self._connect_whole
        try:
            return dialect.connect(*cargs, **cparams)
        except (ValueError, TypeError, OverflowError) as e:
            if isinstance(e, self._asyncpg.InterfaceError):  # ClientConfigurationError: see why_unusable
                raise
            raise ConnectArgumentRefused(str(e)) from e

    def prepare(self, mode: OpenMode) -> bool:
        # The database itself is the administrator's to create; the schema is made by `migrate`.
        self._mode = mode
        return False

    def is_transient(self, exc: BaseException) -> bool:
        """A conflict (serialization failure, deadlock) or a pooled connection the server dropped (a restart,
        an administrator): the transaction was rolled back, and another try runs on a fresh connection."""
        if _sqlstate(exc) in _TRANSIENT:
            return True
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return True
        return isinstance(exc, self._asyncpg.ConnectionDoesNotExistError)

    async def migrate(self) -> bool:
        """Upgrade under a transaction-scoped advisory lock; whether the schema was made here."""
        async with self.engine.begin() as conn:
            await conn.execute(text(self._sql["migration_lock"]))
            found = await conn.run_sync(current_revision)
            if found is None and self._mode == "existing":
                raise StoreMissing(self.place)
            if found is not None and found != HEAD_REVISION and not known_revision(found):
                # Alembic would end in a traceback ("Can't locate revision"): a newer runner's store (a fleet
                # of mixed versions), or another tool's Alembic table in the same database.
                raise StoreUnavailable(self.place, unknown_revision_reason(found))
            if found != HEAD_REVISION:
                try:
                    await conn.run_sync(upgrade)
                except DBAPIError as e:
                    if _sqlstate(e) not in _TAKEN:
                        raise
                    # Another tool's table (or index, function) of the same name: the transaction is rolled back.
                    said = " ".join(str(getattr(e.orig, "__cause__", None) or e.orig).split())
                    raise StoreUnavailable(
                        self.place,
                        f"the database holds tables that are not a runner store's ({said}): give runner a"
                        " database of its own (createdb runner)",
                    ) from None
            self._size = int((await conn.execute(text("SELECT pg_database_size(current_database())"))).scalar_one())
            return found is None

    def opened(self) -> None:
        return None

    def check_file(self) -> None:
        return None

    def why_unusable(self, exc: BaseException) -> str | None:
        if isinstance(exc, ConnectArgumentRefused):
            cause = exc.__cause__
            if isinstance(cause, TypeError) and (bad := re.search(r"unexpected keyword argument '([^']+)'", str(exc))):
                # SQLAlchemy hands every setting after `?` in the URL to asyncpg.connect() as an argument.
                return f"the URL's setting '{bad.group(1)}' is not one the PostgreSQL driver (asyncpg) takes"
            # The driver's words name the setting and the value it was given: never the password, which is
            # not checked for type or range, but a `password=` setting is kept out in any case.
            said = " ".join(str(exc).split())
            return f"the URL's settings are wrong: {said}" if "password" not in said else "the URL's settings are wrong"
        orig = getattr(exc, "orig", None) or exc
        orig = getattr(orig, "__cause__", None) or orig  # the adapted error wraps asyncpg's own
        if isinstance(orig, OSError):
            # strerror for a refused or unresolved connection; a ConnectionError of asyncpg's own (a server
            # that refuses SSL) has none, and says what happened in its message.
            return f"cannot connect to the server ({orig.strerror or str(orig) or type(orig).__name__})"
        code = _sqlstate(exc) or getattr(orig, "sqlstate", None)
        if (reason := _server_reason(exc)) is not None:
            code, orig = reason  # why the server ended the connection, not the driver's 08003 ("closed")
        if code == "3D000":
            return "the database does not exist (create it first: createdb NAME)"
        if isinstance(code, str) and code.startswith("28"):
            return "the server refused the login (check the user and password)"
        if code in _SHUTTING_DOWN:
            # A server stopped or restarted under a run (pg_ctl stop, a failover): a reconnect met it going down.
            said = " ".join(str(orig).split())
            return f"the server is shutting down or restarting ({said})"
        if isinstance(code, str) and code in _SERVER_REFUSES:
            said = " ".join(str(orig).split())
            return f"{_SERVER_REFUSES[code]} ({said})"
        if code == INSUFFICIENT_PRIVILEGE:
            # A read-only user (GRANT SELECT) writing, or reading a table made after its grant.
            said = " ".join(str(orig).split())
            return f"the database user may not do this ({said}); it needs the privileges of the store's owner"
        if isinstance(orig, self._asyncpg.ClientConfigurationError):
            # The driver's own words name the setting and what it takes ("`sslmode` parameter must be one
            # of: ..."); they are about the URL's settings, which never hold the password but `password=`.
            said = " ".join(str(orig).split())
            return f"the URL's settings are wrong: {said}" if "password" not in said else "the URL's settings are wrong"
        if isinstance(orig, self._asyncpg.PostgresConnectionError | self._asyncpg.InterfaceError):
            # The driver's words say what happened ("connection is closed": the server went away); they are
            # about the connection, never its password.
            said = " ".join(str(orig).split())
            return (
                f"the connection failed ({type(orig).__name__}: {said})"
                if said
                else f"the connection failed ({type(orig).__name__})"
            )
        return None

    def file_problem(self, exc: BaseException) -> StoreUnavailable | None:
        reason = self.why_unusable(exc)
        return StoreUnavailable(self.place, reason) if reason is not None else None

    def now_sql(self, clock: Callable[[], float]) -> ColumnElement[float]:
        """The database's clock as epoch seconds: one clock for every runner on the store."""
        return cast(func.extract("epoch", func.now()), Float)

    # -- the hot statements -------------------------------------------------------------------------

    async def _transaction(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """`fn(asyncpg connection)` in one transaction on a pooled connection of the engine."""

        async def within(apg: Any) -> T:
            async with apg.transaction():
                return await fn(apg)

        return await self._connected(within)

    async def _connected(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """`fn(asyncpg connection)` on a pooled connection of the engine, outside any transaction: a single
        statement is then its own transaction, one round trip where BEGIN and COMMIT would make three."""
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            apg = raw.driver_connection
            assert apg is not None
            try:
                return await fn(apg)
            except (OSError, self._asyncpg.PostgresConnectionError, self._asyncpg.InterfaceError) as exc:
                # SQLAlchemy did not see this connection fail (we spoke to asyncpg directly): tell its pool,
                # so the next try gets a new connection instead of this dead one. (A value asyncpg could not
                # encode, its DataError, is an InterfaceError too, on a connection still good.)
                if not isinstance(exc, ValueError):
                    await conn.invalidate()
                raise

    async def cancelled_among(self, job_ids: Sequence[str]) -> set[str]:
        sql = self._sql["cancelled_jobs"]
        return {str(r[0]) for r in await self._connected(lambda c: c.fetch(sql, list(job_ids)))}

    async def claim(
        self, owner: str, job_ids: Sequence[str], n: int, lease_seconds: float, now: float
    ) -> list[Claimed]:
        if not job_ids or n <= 0:
            return []
        sql, lease = self._sql["claim"], float(lease_seconds)  # one job at a time: see claim_by_job
        if len(job_ids) == 1:  # one statement: no transaction around it
            return in_claim_order(await self._connected(lambda c: c.fetch(sql, owner, lease, job_ids[0], n)))
        return await self._transaction(
            lambda c: claim_by_job(job_ids, n, lambda j, k: c.fetch(sql, owner, lease, j, k))
        )

    async def apply(
        self, owner: str, outcomes: Sequence[Outcome], response_ids: Sequence[ResponseIdRecord], now: float
    ) -> Refused:
        ids = [o.request_id for o in outcomes] + [x.request_id for x in response_ids]
        if len(set(ids)) == len(ids) and all(o.to in TERMINAL or o.to is RequestState.QUEUED for o in outcomes):
            try:
                return await self._connected(lambda c: writeback.at_once(c, self._sql, owner, outcomes, response_ids))
            except self._refusals as exc:
                if isinstance(exc, self._asyncpg.PostgresError) and (_sqlstate(exc) or "")[:2] not in _REFUSED:
                    raise
                # A value PostgreSQL cannot hold (a NUL character) or asyncpg cannot encode: the statement
                # wrote nothing, and the careful path below finds the row and fails it alone.
        pg_error = self._asyncpg.PostgresError
        return await self._transaction(
            lambda c: writeback.carefully(c, self._sql, pg_error, owner, outcomes, response_ids)
        )

    async def insert(self, job_id: str, rows: Sequence[NewRequest], now: float) -> None:
        """One COPY per chunk: the fastest way into PostgreSQL, and all or nothing like any statement."""
        # A row is the NewRequest itself plus this tuple the whole chunk shares (COPY_COLUMNS, postgres/copy.py).
        shared = (job_id, float(now), Q, 0, 0.0, 0, 0, 0, 0, 0, 0)
        # sched is None only on the rows of invalid lines (there for their custom_id; the job is dropped).
        records = [(r if r.sched is not None else r._replace(sched=r.line_no)) + shared for r in rows]

        async def copy(c: Any) -> None:
            # A staging job's chunk need not wait for its WAL to reach the disk: the job is published by a
            # later commit that does wait, and WAL is flushed in order, so every chunk is durable by then; a
            # crash before it leaves a staging job, which is dropped as abandoned. 500 disk flushes fewer
            # per 1,000,000 lines where the server's synchronous_commit is on (the tests' server has it off).
            await c.execute("SET LOCAL synchronous_commit = off")
            await c.copy_records_to_table("requests", records=records, columns=COPY_COLUMNS)

        try:
            await self._transaction(copy)
        except self._asyncpg.UniqueViolationError as e:
            raise DuplicateCustomId(job_id) from e

    async def insert_copy(self, job_id: str, data: bytes) -> None:
        """`insert` for a chunk its parsing child encoded as binary COPY data (postgres/copy.py)."""

        async def copy(c: Any) -> None:
            await c.execute("SET LOCAL synchronous_commit = off")  # as in `insert`
            # A memoryview: asyncpg takes bytes for a file's path.
            await c.copy_to_table("requests", source=memoryview(data), columns=COPY_COLUMNS, format="binary")

        try:
            await self._transaction(copy)
        except self._asyncpg.UniqueViolationError as e:
            raise DuplicateCustomId(job_id) from e

    async def insert_copy_stream(self, job_id: str, parts: AsyncIterator[memoryview]) -> None:
        """`insert_copy` for many chunks in one COPY, each sent as it comes (copy.rows_of: rows without header and
        trailer), so the server inserts one chunk while the next is read from the parsing child."""

        async def source() -> AsyncIterator[bytes | memoryview]:
            yield copy.HEADER
            async for part in parts:
                yield part
            yield copy.TRAILER

        async def stream(c: Any) -> None:
            await c.execute("SET LOCAL synchronous_commit = off")  # as in `insert`
            await c.copy_to_table("requests", source=source(), columns=COPY_COLUMNS, format="binary")

        try:
            await self._transaction(stream)
        except self._asyncpg.UniqueViolationError as e:
            raise DuplicateCustomId(job_id) from e

    async def insert_answered(
        self, job_id: str, rows: Sequence[NewRequest], now: float, newer_than: float | None
    ) -> int | None:
        """`submit --reuse`: a chunk inserted with each line answered from the store where it can be (hot.sql
        `insert_answered`, reading the chunk COPYed into `reuse_chunk_table`); how many were. None, with nothing
        inserted, when a custom_id is used twice (the caller then inserts the chunk its usual way)."""
        return await self.insert_copy_answered(job_id, copy.encode(rows, job_id, now), now, newer_than)

    async def insert_copy_answered(self, job_id: str, data: bytes, now: float, newer_than: float | None) -> int | None:
        """`insert_answered` for a chunk its parsing child encoded as binary COPY data (postgres/copy.py)."""
        sql = self._sql

        async def go(c: Any) -> int:
            await c.execute(sql["reuse_wait_for_deletes"], job_id)
            await c.execute(sql["reuse_chunk_table"])
            await c.copy_to_table("runner_reuse_rows", source=memoryview(data), columns=COPY_COLUMNS, format="binary")
            return int(await c.fetchval(sql["insert_answered"], job_id, float(now), newer_than))

        try:
            return await self._transaction(go)
        except self._asyncpg.IntegrityConstraintViolationError:
            return None

    def batch_lines(
        self, job_id: str, id_start: str, chunk: int
    ) -> AbstractAsyncContextManager[AsyncGenerator[Sequence[ReadyLines | ExportRow], None]]:
        """The batch export's common lines written by the server (postgres/export.py)."""
        return export.batch_lines(self.engine, job_id, id_start, chunk)

    async def cancel_requeued(self, conn: AsyncConnection, now: float) -> None:
        stamp = self.now_sql(lambda: now)
        await conn.execute(
            update(requests)
            .where(
                requests.c.state == Q, requests.c.job_id.in_(select(jobs.c.id).where(jobs.c.cancelled_at.is_not(None)))
            )
            .values(
                state=RequestState.CANCELLED.value,
                finished_at=stamp,
                updated_at=stamp,
                error_code="cancelled",
                error_message="the job was cancelled",
            )
        )

    async def metadata_keys(self, conn: AsyncConnection, job_id: str) -> list[str]:
        sql = text(
            "SELECT DISTINCT k FROM requests AS r, runner_json_keys(r.body, 'metadata') AS k"
            " WHERE r.job_id = :job AND strpos(r.body, '\"metadata\"') > 0 ORDER BY k"
        )
        return [str(k) for (k,) in await conn.execute(sql, {"job": job_id})]

    # -- the database -------------------------------------------------------------------------------

    async def integrity(self, conn: AsyncConnection) -> str:
        """PostgreSQL checks its own pages; this checks the store is the runner's, at the newest schema."""
        found = await conn.run_sync(current_revision)
        if found != HEAD_REVISION:
            return f"schema revision {found}, expected {HEAD_REVISION}"
        return "ok"

    def file_size(self) -> int:
        """The database's size on the server (`pg_database_size`) when the store was opened or last vacuumed."""
        return self._size

    async def reclaim_space(self) -> None:
        """VACUUM the store's tables: the space of deleted rows is reused by the database (autovacuum would get
        there too); the files shrink only where their end is free. Never VACUUM FULL: it locks runners out."""
        async with self.engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.execute(text("VACUUM requests, attempts, jobs"))
            self._size = int((await auto.execute(text("SELECT pg_database_size(current_database())"))).scalar_one())

    def settle(self) -> None:
        pass  # the server checkpoints by itself

    async def aclose(self) -> None:
        await self.engine.dispose()
