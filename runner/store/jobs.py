"""The Store's jobs: submit (staging, inserting, publishing), finding and listing, cancel, retry, delete.

Over 400 lines on purpose: a submit and a delete change the same rows of the same tables, each under locks that
must not cross the other's (publishing drops a staged job that gave way as a delete drops a job), and they stay
right by being read side by side.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol, runtime_checkable

import anyio
from sqlalchemy import Select, delete, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.errors import JobBusy, JobNotFound
from runner.states import POLL_FAILED, RequestState
from runner.store.answer import keep_answers, referencing_jobs
from runner.store.backend import InsertsAnswered
from runner.store.core import _ACTIVE_VALUES, IP, Q, StoreCore, _job_row
from runner.store.dialect import xact_lock
from runner.store.models import DuplicateCustomId, JobRow, NewRequest
from runner.store.tables import jobs, requests

__all__ = ["JobsPart", "TakesCopy"]


@runtime_checkable
class TakesCopy(Protocol):
    """A backend that takes a submit's chunk as COPY data its parsing child encoded (PostgreSQL: postgres/copy.py)."""

    async def insert_copy(self, job_id: str, data: bytes) -> None:
        """Insert the chunk (one transaction); DuplicateCustomId for a used custom_id."""
        ...

    async def insert_copy_stream(self, job_id: str, parts: AsyncIterator[memoryview]) -> None:
        """Insert many chunks' rows (copy.rows_of) in one transaction, sent as they come; DuplicateCustomId."""
        ...

    async def insert_copy_answered(self, job_id: str, data: bytes, now: float, newer_than: float | None) -> int | None:
        """InsertsAnswered's `insert_answered` for the chunk (how many lines were answered; None: nothing inserted)."""
        ...


class JobsPart(StoreCore):
    """The Store's jobs: submit (staging, inserting, publishing), finding and listing, cancel, retry, delete."""

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

    def takes_copy(self) -> bool:
        """Whether `add_copied` works on this store."""
        return isinstance(self._backend, TakesCopy)

    async def add_copied(self, job_id: str, data: bytes) -> None:
        """`add_requests` for a chunk as COPY data (postgres/copy.py `encode`), where `takes_copy`."""
        backend = self._backend
        assert isinstance(backend, TakesCopy)
        await self._hot(lambda: backend.insert_copy(job_id, data))

    async def add_copied_stream(self, job_id: str, parts: AsyncIterator[memoryview]) -> bool:
        """`add_copied` for chunks read from `parts` while they go in, all in one transaction. False, with nothing
        inserted, when a custom_id repeats or the try met a conflict: the caller then adds them with
        `add_copied` one by one, which names the repeated lines (and tries a conflict again; a stream read once
        cannot be)."""
        backend = self._backend
        assert isinstance(backend, TakesCopy)
        with anyio.CancelScope(shield=True), self.said_as_store_errors():
            try:
                await backend.insert_copy_stream(job_id, parts)
            except DuplicateCustomId:
                return False
            except Exception as e:
                if not backend.is_transient(e):
                    raise
                return False
        return True

    async def add_copied_answered(self, job_id: str, data: bytes, newer_than: float | None) -> int | None:
        """`add_answered_requests` for a chunk as COPY data, where `takes_copy`."""
        backend = self._backend
        assert isinstance(backend, TakesCopy)
        now = self._clock()
        return await self._hot(lambda: backend.insert_copy_answered(job_id, data, now, newer_than))

    async def add_answered_requests(
        self, job_id: str, rows: Sequence[NewRequest], newer_than: float | None
    ) -> int | None:
        """`add_requests` with each line answered from the store where it can be (`submit --reuse`), through the
        backend's own hot statement: how many were. None, with nothing inserted, when the backend has no such
        statement or a custom_id is used twice (the caller then inserts the chunk its usual way)."""
        backend = self._backend
        if not isinstance(backend, InsertsAnswered):
            return None
        now = self._clock()
        return await self._hot(lambda: backend.insert_answered(job_id, rows, now, newer_than))

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
        """Make a fully staged job visible, whatever else is published: from here on it can be run, listed and
        exported."""
        await self.publish_jobs([(job_id, total)], new=True)

    async def publish_jobs(self, staged: Sequence[tuple[str, int]], *, new: bool) -> list[tuple[str, int]]:
        """Make fully staged jobs (id, total) visible, all or none; the published (id, total), in order.

        Unless `new`, a staged job whose fingerprint a published job has is dropped instead, and that job stands
        in for it: another submit of the same file published it since this one looked. Looking and
        publishing share one transaction, and the fingerprint's lock (`xact_lock`), so of any number of such
        submits at once exactly one publishes.
        """

        async def go(conn: AsyncConnection) -> list[tuple[str, int]]:
            ids = [job_id for job_id, _ in staged]
            fingerprints: dict[str, str] = {}
            if not new:
                rows = await conn.execute(select(jobs.c.id, jobs.c.fingerprint).where(jobs.c.id.in_(ids)))
                fingerprints = {r.id: r.fingerprint for r in rows}
            # Sorted: two submits of the same two files, named in either order, would each hold the key the other
            # waits for. Each lock is a statement of its own before the look, as PostgreSQL's READ COMMITTED takes
            # a statement's snapshot when it starts: a look that started before it held the lock would miss what
            # the submit it waited for published.
            for key in sorted(set(fingerprints.values())):
                await conn.execute(select(xact_lock(key)))
            published: list[tuple[str, int]] = []
            for job_id, total in staged:
                fingerprint = fingerprints.get(job_id)
                twin = None if fingerprint is None else (await conn.execute(_ready_job(fingerprint))).first()
                if twin is None:
                    await conn.execute(
                        update(jobs)
                        .where(jobs.c.id == job_id, jobs.c.phase == "staging")
                        .values(phase="ready", total=total, staged_by=None)
                    )
                    published.append((job_id, total))
                else:
                    await _drop(conn, job_id)
                    published.append((twin.id, twin.total))
            return published

        return await self.write(go)

    async def drop_job(self, job_id: str) -> None:
        """Delete a job and its requests."""
        await self.write(lambda conn: _drop(conn, job_id))

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
            found = (await conn.execute(_ready_job(fingerprint))).first()
            return None if found is None else str(found.id)

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

    async def cancelled_among(self, job_ids: Sequence[str]) -> set[str]:
        """Which of these jobs were cancelled (`runner cancel`), for a run that holds some of their requests."""
        if not job_ids:
            return set()
        ids = list(job_ids)
        return await self._hot(lambda: self._backend.cancelled_among(ids))

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

    async def retry_job(self, job_id: str) -> int:
        """Failed requests back to queued with fresh attempts; the job is un-cancelled.

        A background request that failed only because its response could not be polled (POLL_FAILED) was
        created and may be paid for: it goes back to `in_progress` with its response id and no owner, which
        the next run polls (`claim_polls`) and never sends again.
        """
        await self.get_job(job_id)
        now = self._now()

        async def go(conn: AsyncConnection) -> int:
            await conn.execute(update(jobs).where(jobs.c.id == job_id).values(cancelled_at=None))
            polled = await conn.execute(
                update(requests)
                .where(
                    requests.c.job_id == job_id,
                    requests.c.state == RequestState.FAILED.value,
                    requests.c.error_code == POLL_FAILED,
                    requests.c.response_id.is_not(None),
                )
                .values(
                    state=IP,
                    lease_owner=None,
                    lease_expires_at=None,
                    finished_at=None,
                    error_code=None,
                    error_message=None,
                    updated_at=now,
                )
            )
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
            return int(polled.rowcount) + int(r.rowcount)

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
            found = await self._lock_for_delete(conn, ids)
            missing = set(ids) - found
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
            # Answers other jobs reused from these are handed to one of their rows first (store/answer.py).
            await keep_answers(conn, ids)
            r = await conn.execute(delete(requests).where(requests.c.job_id.in_(ids)))
            await conn.execute(delete(jobs).where(jobs.c.id.in_(ids)))
            return int(r.rowcount)

        return await self.write(go)

    async def _lock_for_delete(self, conn: AsyncConnection, ids: list[str]) -> set[str]:
        """Lock the job rows a delete of `ids` works on; those of `ids` that are published jobs.

        PostgreSQL (SQLite's IMMEDIATE transaction already excludes every other writer): `ids` FOR UPDATE, as
        claims take a key-share lock on their job's row, so none can lease a row of these jobs between the
        check for live leases and the delete. The jobs whose rows reference answers of `ids` get a key-share
        lock: their rows take those answers over (store/answer.py), and a delete of their own meanwhile would
        take the new original away from under its references; their runs and reuse submits go on.

        All of them in one order (by id), whatever the mode: two deletes of jobs that reference each other's
        answers each locked their own job first and then the other's, and PostgreSQL aborted one with
        "deadlock detected". Reuse submits lock in the same order (store/reuse.py).
        """
        if conn.dialect.name != "postgresql":
            rows = await conn.execute(select(jobs.c.id).where(jobs.c.id.in_(ids), jobs.c.phase == "ready"))
            return {r.id for r in rows}
        doomed = set(ids)
        # Read without locks first, to know the whole set; a delete running now may hand answers on to rows of
        # further jobs, which the second look below finds (then locked out of order: rare, and a deadlock there
        # is retried as any transient conflict).
        referencing = {r.job_id for r in await conn.execute(referencing_jobs(ids))}
        found: set[str] = set()
        locked: set[str] = set()
        while True:
            for update_lock, run in _runs(sorted((doomed | referencing) - locked), doomed):
                stmt = select(jobs.c.id).where(jobs.c.id.in_(run)).order_by(jobs.c.id)
                if update_lock:
                    ready = await conn.execute(stmt.where(jobs.c.phase == "ready").with_for_update())
                    found |= {r.id for r in ready}
                else:
                    await conn.execute(stmt.with_for_update(read=True, key_share=True))
                locked |= set(run)
            # A submit cannot add a reference now (it key-share locks these jobs first: store/reuse.py), but a
            # delete that held a lock we waited for may have: look again under the locks.
            referencing = {r.job_id for r in await conn.execute(referencing_jobs(ids))}
            if referencing <= locked:
                return found


def _ready_job(fingerprint: str) -> Select[tuple[str, int]]:
    """The id and total of the newest published job with this fingerprint (one at most, but for `--new`)."""
    return (
        select(jobs.c.id, jobs.c.total)
        .where(jobs.c.fingerprint == fingerprint, jobs.c.phase == "ready")
        .order_by(jobs.c.created_at.desc())
        .limit(1)
    )


async def _drop(conn: AsyncConnection, job_id: str) -> None:
    """Delete a job and its requests, inside the caller's transaction."""
    # A staging job's rows are never a source (none is an original answer): this finds none at once.
    await keep_answers(conn, [job_id])
    await conn.execute(delete(requests).where(requests.c.job_id == job_id))
    await conn.execute(delete(jobs).where(jobs.c.id == job_id))


def _runs(ordered: list[str], doomed: set[str]) -> list[tuple[bool, list[str]]]:
    """`ordered` cut into runs of ids that take the same lock: (whether it is FOR UPDATE, the ids)."""
    runs: list[tuple[bool, list[str]]] = []
    for job_id in ordered:
        mode = job_id in doomed
        if runs and runs[-1][0] == mode:
            runs[-1][1].append(job_id)
        else:
            runs.append((mode, [job_id]))
    return runs
