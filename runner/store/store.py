"""The job store: every query the runner makes, as typed async methods.

What to ask is here, as portable SQLAlchemy Core, and when (transactions, shielding, retries); how on a given
database (engine set-up, the hot statements, transient errors, the migration lock, the file) is its
`Backend`'s (runner/store/backend.py; SQLite's in runner/store/sqlite/).

State changes are guarded in the UPDATE itself (`WHERE state IN (allowed) AND lease_owner = me`), so a
change from a state it may not come from touches no row and raises, instead of silently overwriting.

Over 400 lines on purpose: one short typed method per question the runner asks, each beside its query, so
a backend never needs a copy of them (the review's queries.py split would move the text, not shrink it).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio
from sqlalchemy import and_, delete, func, insert, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from runner.errors import IllegalTransition, JobBusy, JobNotFound, RequestNotFound, StoreUnavailable
from runner.states import ACTIVE, ALLOWED_FROM, TERMINAL, RequestState
from runner.store.backend import Backend, OpenMode, backend_for, retrying
from runner.store.dialect import big_sum, json_field
from runner.store.models import (
    AttemptRow,
    Claimed,
    ExportRow,
    JobRow,
    JobStats,
    NewRequest,
    Outcome,
    RequestDetail,
    ResponseIdRecord,
)
from runner.store.tables import attempts, jobs, requests
from runner.usage import UsageCounts

__all__ = ["Store", "bounded_total", "place_log"]

log = logging.getLogger(__name__)
# Which store a command uses: "created store PATH" (INFO, said by the app once a command that made a new
# store succeeded), "using store PATH" (DEBUG) on every open. The CLI shows the first always and the
# second at -v, each path once.
place_log = logging.getLogger("runner.store.place")
T = TypeVar("T")

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


EXPORT_CHUNK = 2000
# A stored body that is not JSON gives NULL, never an error that would stop an export (dialect.json_field).
_STORED_OUTPUT_TEXT = json_field(requests.c.response_body, "output_text")
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


class Store:
    """Typed access to one job store (SQLite or PostgreSQL).

    Open with `await Store.open(db, mode)`, close with `aclose()`.
    """

    def __init__(self, backend: Backend, clock: Callable[[], float] = time.time) -> None:
        self._backend = backend
        # Every time the store writes or compares (leases, claims, finished_at) comes from here, so a test can
        # move time on instead of sleeping, and another backend can take it from the database.
        self._clock = clock
        self.created = False  # this open made the file (the caller announces it, or removes it on failure)

    def _now(self) -> ColumnElement[float]:
        """ "Now" for a query: the clock's time as a value on SQLite, the database's own clock on PostgreSQL."""
        return self._backend.now_sql(self._clock)

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

    @classmethod
    async def open(cls, db: str, mode: OpenMode = "create", *, clock: Callable[[], float] = time.time) -> Store:
        """Open the store at `db` (a path or an SQLAlchemy URL), migrating it as needed.

        `mode` says whether a missing file is made ("create") or is an error ("existing": StoreMissing). A
        file that cannot be used (a read-only directory, not a database) raises StoreUnavailable.
        `clock` gives every time the store writes or compares.
        """
        backend = backend_for(db)
        try:
            created = backend.prepare(mode)
        except BaseException:
            await backend.aclose()
            raise
        store = cls(backend, clock)
        try:
            made = await store._retry(backend.migrate)
        except BaseException as e:
            await backend.aclose()
            reason = backend.why_unusable(e)
            if reason is not None:
                raise StoreUnavailable(backend.place, reason) from None
            raise
        backend.opened()
        store.created = (created and backend.path is not None) or made
        place_log.debug("using store %s", backend.place)
        return store

    def check_file(self) -> None:
        """Raise StoreReplaced when the file this store opened is no longer the one at its path."""
        self._backend.check_file()

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._backend.aclose()

    async def __aenter__(self) -> Store:
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

        with anyio.CancelScope(shield=True):
            try:
                result = await self._retry(once)
            except self._backend.errors as e:
                problem = self._backend.file_problem(e)
                if problem is None:
                    raise
                raise problem from None
        return result

    async def _hot(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run one of the backend's hot statements (its own transaction), shielded and retried like `write`."""
        with anyio.CancelScope(shield=True):
            try:
                result = await self._retry(op)
            except self._backend.errors as e:
                problem = self._backend.file_problem(e)
                if problem is None:
                    raise
                raise problem from None
        return result

    async def read(self, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run `fn` in one read-only transaction (a consistent snapshot), retried while the database is busy."""

        async def once() -> T:
            async with self.engine.connect() as conn:
                await conn.execution_options(readonly=True)
                return await fn(conn)

        try:
            return await self._retry(once)
        except self._backend.errors as e:
            problem = self._backend.file_problem(e)
            if problem is None:
                raise
            raise problem from None

    # -- jobs -------------------------------------------------------------------------------------

    async def begin_job(
        self, *, job_id: str, name: str, source: str, fingerprint: str, background: bool, staged_by: str
    ) -> None:
        """Create a job in the invisible "staging" phase."""

        async def go(conn: AsyncConnection) -> None:
            await conn.execute(
                insert(jobs).values(
                    id=job_id,
                    name=name,
                    source=source,
                    fingerprint=fingerprint,
                    background=background,
                    total=0,
                    phase="staging",
                    staged_by=staged_by,
                    created_at=self._now(),
                )
            )

        await self.write(go)

    async def add_requests(self, job_id: str, rows: Sequence[NewRequest]) -> None:
        """Insert one chunk of a staging job's lines; DuplicateCustomId if a custom_id is already in the job."""
        if not rows:
            return
        now = self._clock()
        await self._hot(lambda: self._backend.insert(job_id, rows, now))

    async def lines_of_custom_ids(self, job_id: str, custom_ids: Sequence[str]) -> dict[str, int]:
        """custom_id -> line number, for those of `custom_ids` the job already holds."""

        async def go(conn: AsyncConnection) -> dict[str, int]:
            rows = await conn.execute(
                select(requests.c.custom_id, requests.c.line_no).where(
                    requests.c.job_id == job_id, requests.c.custom_id.in_(list(custom_ids))
                )
            )
            return {r.custom_id: r.line_no for r in rows}

        return await self.read(go)

    async def publish_job(self, job_id: str, total: int) -> None:
        """Make a fully staged job visible: from here on it can be run, listed and exported."""

        async def go(conn: AsyncConnection) -> None:
            await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.phase == "staging")
                .values(phase="ready", total=total, staged_by=None)
            )

        await self.write(go)

    async def drop_job(self, job_id: str) -> None:
        """Delete a job and its requests."""

        async def go(conn: AsyncConnection) -> None:
            await conn.execute(delete(requests).where(requests.c.job_id == job_id))
            await conn.execute(delete(jobs).where(jobs.c.id == job_id))

        await self.write(go)

    async def drop_abandoned_staging(self, is_abandoned: Callable[[str | None], bool]) -> list[str]:
        """Delete staging jobs whose submitting process is gone (a submit killed half way)."""

        async def find(conn: AsyncConnection) -> list[tuple[str, str | None]]:
            rows = await conn.execute(select(jobs.c.id, jobs.c.staged_by).where(jobs.c.phase == "staging"))
            return [(r.id, r.staged_by) for r in rows]

        dropped = [jid for jid, by in await self.read(find) if is_abandoned(by)]
        for jid in dropped:
            await self.drop_job(jid)
        return dropped

    async def find_job_by_fingerprint(self, fingerprint: str) -> str | None:
        """The id of a published job with this fingerprint, if any."""

        async def go(conn: AsyncConnection) -> str | None:
            r = await conn.execute(
                select(jobs.c.id)
                .where(jobs.c.fingerprint == fingerprint, jobs.c.phase == "ready")
                .order_by(jobs.c.created_at.desc())
                .limit(1)
            )
            return r.scalar_one_or_none()

        return await self.read(go)

    async def get_job(self, job_id: str) -> JobRow:
        """A published job, or JobNotFound."""

        async def go(conn: AsyncConnection) -> JobRow:
            r = (await conn.execute(select(jobs).where(jobs.c.id == job_id, jobs.c.phase == "ready"))).one_or_none()
            if r is None:
                raise JobNotFound(job_id)
            return _job_row(r)

        return await self.read(go)

    async def list_jobs(self) -> list[JobRow]:
        """Every published job, oldest first."""

        async def go(conn: AsyncConnection) -> list[JobRow]:
            rows = await conn.execute(select(jobs).where(jobs.c.phase == "ready").order_by(jobs.c.created_at))
            return [_job_row(r) for r in rows]

        return await self.read(go)

    async def unfinished_job_ids(self) -> list[str]:
        """Published, uncancelled jobs that still have queued or in-progress requests."""

        async def go(conn: AsyncConnection) -> list[str]:
            is_active = requests.c.state.in_(_ACTIVE_VALUES)
            active = select(literal(1)).where(requests.c.job_id == jobs.c.id, is_active).exists()
            rows = await conn.execute(
                select(jobs.c.id)
                .where(jobs.c.phase == "ready", jobs.c.cancelled_at.is_(None), active)
                .order_by(jobs.c.created_at)
            )
            return [r.id for r in rows]

        return await self.read(go)

    async def mark_started(self, job_ids: Sequence[str]) -> None:
        """Remember when a job was first run (for elapsed time and throughput)."""

        async def go(conn: AsyncConnection) -> None:
            await conn.execute(
                update(jobs).where(jobs.c.id.in_(job_ids), jobs.c.started_at.is_(None)).values(started_at=self._now())
            )

        await self.write(go)

    # -- claiming and leases ----------------------------------------------------------------------

    async def claim(self, owner: str, job_ids: Sequence[str], n: int, lease_seconds: float) -> list[Claimed]:
        """Lease up to `n` due, queued requests of `job_ids` in file order, counting the attempt now.

        A request whose conversation has an earlier unfinished request is skipped: one at a time, in order.
        """
        ids = list(job_ids)
        return await self._hot(lambda: self._backend.claim(owner, ids, n, lease_seconds, self._clock()))

    async def claim_polls(self, owner: str, job_ids: Sequence[str], lease_seconds: float) -> list[Claimed]:
        """Lease background requests that have a response id and no live owner: they are polled, never re-sent."""
        now = self._now()
        stmt = (
            update(requests)
            .where(
                requests.c.job_id.in_(job_ids),
                requests.c.state == IP,
                requests.c.response_id.is_not(None),
                or_(requests.c.lease_owner.is_(None), requests.c.lease_expires_at < now),
            )
            .values(lease_owner=owner, lease_expires_at=now + lease_seconds, updated_at=now)
            .returning(*_CLAIMED_COLUMNS, requests.c.response_id)
        )

        async def go(conn: AsyncConnection) -> list[Claimed]:
            rows = (await conn.execute(stmt)).all()
            return [
                Claimed(r.id, r.job_id, r.line_no, r.custom_id, r.body, r.attempts, r.response_id, True) for r in rows
            ]

        return await self.write(go)

    async def reclaim_expired(
        self, job_ids: Sequence[str], owner_is_dead: Callable[[str | None], bool] | None = None
    ) -> int:
        """Free the work of runners that are gone: lease expired, or (same host) their process is dead.

        Requests without a response id go back to `queued` (their attempt still counts); those with one
        stay `in_progress` with no owner, for the next poller: they are never sent again.
        """
        now = self._now()

        async def go(conn: AsyncConnection) -> int:
            held = and_(requests.c.job_id.in_(job_ids), requests.c.state == IP)
            owners = await conn.execute(
                select(requests.c.lease_owner).where(held, requests.c.lease_owner.is_not(None)).distinct()
            )
            dead = [o for (o,) in owners if owner_is_dead is not None and owner_is_dead(o)]
            gone = or_(requests.c.lease_expires_at < now, requests.c.lease_owner.in_(dead))
            r = await conn.execute(
                update(requests)
                .where(held, gone, requests.c.response_id.is_(None))
                .values(state=Q, lease_owner=None, lease_expires_at=None, next_attempt_at=now, updated_at=now)
            )
            await conn.execute(
                update(requests)
                .where(held, gone, requests.c.response_id.is_not(None))
                .values(lease_owner=None, lease_expires_at=None, updated_at=now)
            )
            return int(r.rowcount)

        return await self.write(go)

    async def renew_leases(self, owner: str, lease_seconds: float) -> int:
        """Push out the lease of everything this owner holds."""
        now = self._now()

        async def go(conn: AsyncConnection) -> int:
            r = await conn.execute(
                update(requests)
                .where(requests.c.lease_owner == owner, requests.c.state == IP)
                .values(lease_expires_at=now + lease_seconds)
            )
            return int(r.rowcount)

        return await self.write(go)

    async def release(self, owner: str, *, refund: bool) -> int:
        """Give back everything this owner holds: unsent work to `queued`, background work to any poller."""
        now = self._now()

        async def go(conn: AsyncConnection) -> int:
            r = await conn.execute(
                update(requests)
                .where(requests.c.lease_owner == owner, requests.c.state == IP, requests.c.response_id.is_(None))
                .values(
                    state=Q,
                    lease_owner=None,
                    lease_expires_at=None,
                    next_attempt_at=now,
                    attempts=requests.c.attempts - (1 if refund else 0),
                    updated_at=now,
                )
            )
            await conn.execute(
                update(requests)
                .where(requests.c.lease_owner == owner, requests.c.state == IP)
                .values(lease_owner=None, lease_expires_at=None, updated_at=now)
            )
            await self._backend.cancel_requeued(conn, self._clock())
            return int(r.rowcount)

        return await self.write(go)

    # -- outcomes ---------------------------------------------------------------------------------

    async def apply(
        self, owner: str, outcomes: Sequence[Outcome], response_ids: Sequence[ResponseIdRecord] = ()
    ) -> list[int]:
        """Write response ids and outcomes in one transaction, each guarded; returns the request ids refused.

        A response id is written only to a request this owner still leases, and never over another id.
        """
        if not outcomes and not response_ids:
            return []
        now = self._clock()
        # Refusals are the caller's to report (once, not per request: `runner cancel` can cause thousands).
        return await self._hot(lambda: self._backend.apply(owner, outcomes, response_ids, now))

    async def set_state(self, request_id: int, to: RequestState) -> None:
        """Move one request to `to` outside any lease (admin paths); raises IllegalTransition if not allowed."""
        allowed = sorted(s.value for s in ALLOWED_FROM[to])

        async def go(conn: AsyncConnection) -> None:
            r = await conn.execute(
                update(requests)
                .where(requests.c.id == request_id, requests.c.state.in_(allowed))
                .values(state=to.value, updated_at=self._now())
            )
            if r.rowcount != 1:
                raise IllegalTransition(request_id, to.value, set(allowed))

        await self.write(go)

    # -- cancel and retry -------------------------------------------------------------------------

    async def cancel_job(self, job_id: str) -> tuple[int, list[tuple[int, str]]]:
        """Cancel queued requests and mark the job cancelled; returns (cancelled, in-flight background ids)."""
        await self.get_job(job_id)
        now = self._now()

        async def go(conn: AsyncConnection) -> tuple[int, list[tuple[int, str]]]:
            await conn.execute(update(jobs).where(jobs.c.id == job_id).values(cancelled_at=now))
            r = await conn.execute(
                update(requests)
                .where(requests.c.job_id == job_id, requests.c.state == Q)
                .values(
                    state=RequestState.CANCELLED.value,
                    finished_at=now,
                    updated_at=now,
                    error_code="cancelled",
                    error_message="cancelled before it was sent",
                )
            )
            bg = await conn.execute(
                select(requests.c.id, requests.c.response_id).where(
                    requests.c.job_id == job_id, requests.c.state == IP, requests.c.response_id.is_not(None)
                )
            )
            return int(r.rowcount), [(x.id, x.response_id) for x in bg]

        return await self.write(go)

    async def finish_unleased(self, o: Outcome) -> bool:
        """Record the final state of an in-progress request that no lease covers (`runner cancel`)."""
        now = self._now()

        async def go(conn: AsyncConnection) -> bool:
            r = await conn.execute(
                update(requests)
                .where(requests.c.id == o.request_id, requests.c.state == IP)
                .values(
                    state=o.to.value,
                    http_status=o.http_status,
                    request_id=o.api_request_id,
                    response_body=o.response_body,
                    error_code=o.error_code,
                    error_message=o.error_message,
                    finished_at=now,
                    updated_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    **{c: getattr(o.usage, c) for c in _USAGE_COLS},
                )
            )
            return bool(r.rowcount)

        return await self.write(go)

    async def retry_job(self, job_id: str) -> int:
        """Failed requests back to queued with fresh attempts; the job is un-cancelled."""
        await self.get_job(job_id)
        now = self._now()

        async def go(conn: AsyncConnection) -> int:
            await conn.execute(update(jobs).where(jobs.c.id == job_id).values(cancelled_at=None))
            r = await conn.execute(
                update(requests)
                .where(requests.c.job_id == job_id, requests.c.state == RequestState.FAILED.value)
                .values(
                    state=Q,
                    attempts=0,
                    next_attempt_at=0.0,
                    response_id=None,
                    finished_at=None,
                    error_code=None,
                    error_message=None,
                    updated_at=now,
                )
            )
            return int(r.rowcount)

        return await self.write(go)

    # -- reading ----------------------------------------------------------------------------------

    async def progress(self, job_ids: Sequence[str]) -> tuple[dict[str, int], float | None]:
        """Counts per state over `job_ids`, and when the earliest waiting retry is due."""

        async def go(conn: AsyncConnection) -> tuple[dict[str, int], float | None]:
            rows = await conn.execute(
                select(requests.c.state, func.count()).where(requests.c.job_id.in_(job_ids)).group_by(requests.c.state)
            )
            counts = {r[0]: int(r[1]) for r in rows}
            due = await conn.execute(
                select(func.min(requests.c.next_attempt_at)).where(
                    requests.c.job_id.in_(job_ids), requests.c.state == Q
                )
            )
            return counts, due.scalar_one_or_none()

        return await self.read(go)

    async def job_stats(self, job_id: str) -> JobStats:
        """Counts per state, attempts, usage totals, timing and leases of one job."""
        job = await self.get_job(job_id)
        now = self._now()

        async def go(conn: AsyncConnection) -> JobStats:
            rows = await conn.execute(
                select(
                    requests.c.state,
                    func.count(),
                    func.sum(requests.c.attempts),
                    func.sum(requests.c.rate_limited),
                    # Not SUM: SQLite's raises on 64-bit overflow and would take `status` down with it.
                    *(big_sum(getattr(requests.c, c)) for c in _USAGE_COLS),
                    func.min(requests.c.started_at),
                    func.max(requests.c.finished_at),
                )
                .where(requests.c.job_id == job_id)
                .group_by(requests.c.state)
            )
            counts = {s.value: 0 for s in RequestState}
            attempts = rl = 0
            usage = [0, 0, 0, 0, 0]
            first: float | None = None
            last: float | None = None
            for r in rows:
                counts[r[0]] = int(r[1])
                attempts += int(r[2] or 0)
                rl += int(r[3] or 0)
                for i in range(5):
                    usage[i] += bounded_total(r[4 + i])
                if r[9] is not None:
                    first = r[9] if first is None else min(first, r[9])
                if r[10] is not None:
                    last = r[10] if last is None else max(last, r[10])
            owners = await conn.execute(
                select(requests.c.lease_owner, func.count())
                .where(
                    requests.c.job_id == job_id,
                    requests.c.state == IP,
                    requests.c.lease_owner.is_not(None),
                    requests.c.lease_expires_at >= now,
                )
                .group_by(requests.c.lease_owner)
            )
            stale = await conn.execute(
                select(func.count()).where(
                    requests.c.job_id == job_id,
                    requests.c.state == IP,
                    or_(requests.c.lease_expires_at < now, requests.c.lease_owner.is_(None)),
                )
            )
            return JobStats(
                job=job,
                counts=counts,
                attempts=attempts,
                rate_limited=rl,
                usage=UsageCounts(*usage),
                first_started=first,
                last_finished=last,
                in_flight_by_owner={r[0]: int(r[1]) for r in owners},
                stale_leases=int(stale.scalar_one()),
            )

        return await self.read(go)

    @asynccontextmanager
    async def stream_export(
        self, job_id: str, *, with_body: bool = False
    ) -> AsyncIterator[AsyncGenerator[list[ExportRow], None]]:
        """A job's rows in input order, in chunks, from one read snapshot (JobNotFound first).

        Chunks, not rows: an await per row costs more than writing the row out. `with_body` adds each
        request's body in the same query (the flat formats and `results` show the input; batch does not),
        and the response's `output_text`, which SQLite extracts in C on its own thread while the previous
        chunk is being written.
        """
        await self.get_job(job_id)
        stmt = (
            select(
                requests.c.line_no,
                requests.c.custom_id,
                requests.c.state,
                requests.c.http_status,
                requests.c.request_id,
                requests.c.response_body,
                requests.c.error_code,
                requests.c.error_message,
                *(getattr(requests.c, c) for c in _USAGE_COLS),
                *((requests.c.body, _STORED_OUTPUT_TEXT) if with_body else ()),
            )
            .where(requests.c.job_id == job_id)
            .order_by(requests.c.line_no)
        )
        async with self.engine.connect() as conn:
            await conn.execution_options(readonly=True, yield_per=EXPORT_CHUNK)
            result = await conn.stream(stmt)

            async def chunks() -> AsyncGenerator[list[ExportRow], None]:
                async for part in result.partitions(EXPORT_CHUNK):
                    yield [ExportRow(*r) for r in part]

            yield chunks()

    async def metadata_keys(self, job_id: str) -> list[str]:
        """Every key of the `metadata` objects of a job's request bodies, sorted (for one column per key)."""
        await self.get_job(job_id)
        return await self.read(lambda conn: self._backend.metadata_keys(conn, job_id))

    async def request_detail(self, job_id: str, custom_id: str) -> RequestDetail:
        """One request of a job with every recorded attempt, oldest first (JobNotFound, RequestNotFound)."""
        await self.get_job(job_id)

        async def go(conn: AsyncConnection) -> RequestDetail:
            r = (
                await conn.execute(
                    select(requests).where(requests.c.job_id == job_id, requests.c.custom_id == custom_id)
                )
            ).one_or_none()
            if r is None:
                raise RequestNotFound(job_id, custom_id)
            tries = await conn.execute(
                select(
                    attempts.c.attempt,
                    attempts.c.outcome,
                    attempts.c.sent_at,
                    attempts.c.recorded_at,
                    attempts.c.http_status,
                    attempts.c.api_request_id,
                    attempts.c.response_id,
                    attempts.c.error_code,
                    attempts.c.error_message,
                )
                .where(attempts.c.request_id == r.id)
                .order_by(attempts.c.id)
            )
            return RequestDetail(
                job_id=job_id,
                line_no=r.line_no,
                custom_id=r.custom_id,
                body=r.body,
                state=r.state,
                attempts=r.attempts,
                http_status=r.http_status,
                request_id=r.request_id,
                response_id=r.response_id,
                response_body=r.response_body,
                error_code=r.error_code,
                error_message=r.error_message,
                usage=UsageCounts(*(getattr(r, c) for c in _USAGE_COLS)),
                created_at=r.created_at,
                submitted_at=r.submitted_at,
                finished_at=r.finished_at,
                attempt_rows=[AttemptRow(*t) for t in tries],
            )

        return await self.read(go)

    async def health(self, owner_is_dead: Callable[[str | None], bool]) -> dict[str, int]:
        """What `runner doctor` reports: leases nobody will renew, rows stuck in a state, abandoned submits."""
        now = self._now()

        async def go(conn: AsyncConnection) -> dict[str, int]:
            owners = await conn.execute(
                select(requests.c.lease_owner)
                .where(requests.c.state == IP, requests.c.lease_owner.is_not(None))
                .distinct()
            )
            dead = [o for (o,) in owners if owner_is_dead(o)]
            stale = or_(requests.c.lease_expires_at < now, requests.c.lease_owner.in_(dead))
            counts: dict[str, int] = {}
            for key, cond in (
                ("stale_leases_unsent", and_(stale, requests.c.response_id.is_(None))),
                ("stale_leases_background", and_(stale, requests.c.response_id.is_not(None))),
                ("unowned_unsent", and_(requests.c.lease_owner.is_(None), requests.c.response_id.is_(None))),
                ("unowned_background", and_(requests.c.lease_owner.is_(None), requests.c.response_id.is_not(None))),
                ("live_leases", and_(requests.c.lease_expires_at >= now, requests.c.lease_owner.not_in(dead))),
            ):
                r = await conn.execute(select(func.count()).where(requests.c.state == IP, cond))
                counts[key] = int(r.scalar_one())
            r = await conn.execute(select(func.count()).select_from(jobs).where(jobs.c.phase == "staging"))
            counts["staging_jobs"] = int(r.scalar_one())
            return counts

        return await self.read(go)

    async def repair_unowned(self) -> int:
        """In-progress rows with neither an owner nor a response id cannot make progress: queue them again."""
        now = self._now()

        async def go(conn: AsyncConnection) -> int:
            r = await conn.execute(
                update(requests)
                .where(requests.c.state == IP, requests.c.lease_owner.is_(None), requests.c.response_id.is_(None))
                .values(state=Q, next_attempt_at=now, updated_at=now)
            )
            return int(r.rowcount)

        return await self.write(go)

    async def all_job_ids(self) -> list[str]:
        """Ids of every published job."""
        return [j.id for j in await self.list_jobs()]

    async def holds_nothing(self) -> bool:
        """Whether the store has no job at all, not even one being submitted by another process."""

        async def go(conn: AsyncConnection) -> bool:
            return (await conn.execute(select(func.count()).select_from(jobs))).scalar_one() == 0

        return await self.read(go)

    # -- housekeeping -----------------------------------------------------------------------------

    async def jobs_created_before(self, cutoff: float) -> list[JobRow]:
        """Published jobs created before `cutoff` (epoch seconds), oldest first."""
        return [j for j in await self.list_jobs() if j.created_at < cutoff]

    async def delete_jobs(self, job_ids: Sequence[str], owner_is_dead: Callable[[str | None], bool]) -> int:
        """Delete published jobs and their requests, all or none; returns the number of requests deleted.

        JobNotFound for an unknown id; JobBusy when a live runner holds a lease on one of them. The check
        and the delete share one IMMEDIATE transaction, so no runner can claim in between.
        """
        now = self._now()
        ids = list(dict.fromkeys(job_ids))

        async def go(conn: AsyncConnection) -> int:
            found = await conn.execute(select(jobs.c.id).where(jobs.c.id.in_(ids), jobs.c.phase == "ready"))
            missing = set(ids) - {r.id for r in found}
            if missing:
                raise JobNotFound(next(j for j in ids if j in missing))
            held = await conn.execute(
                select(requests.c.job_id, requests.c.lease_owner)
                .where(
                    requests.c.job_id.in_(ids),
                    requests.c.state == IP,
                    requests.c.lease_owner.is_not(None),
                    requests.c.lease_expires_at >= now,
                )
                .distinct()
            )
            for job_id, owner in held:
                if not owner_is_dead(owner):
                    raise JobBusy(job_id, [owner])
            r = await conn.execute(delete(requests).where(requests.c.job_id.in_(ids)))
            await conn.execute(delete(jobs).where(jobs.c.id.in_(ids)))
            return int(r.rowcount)

        return await self.write(go)

    def file_size(self) -> int:
        """Bytes the store takes on disk: the file and its write-ahead log."""
        return self._backend.file_size()

    async def reclaim_space(self) -> None:
        """Give the space of deleted rows back to the file system (in short steps where the database can)."""
        await self._backend.reclaim_space()

    async def integrity_check(self) -> str:
        """The database's own verdict on the store ("ok" when sound)."""
        return await self.read(self._backend.integrity)
