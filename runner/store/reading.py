"""The Store's reading: progress, stats, export streams, one request in full, health and the file."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.errors import RequestNotFound
from runner.states import RequestState
from runner.store.answer import SOURCE_DELETED, answer
from runner.store.backend import WritesBatchLines
from runner.store.core import _STORED_OUTPUT_TEXT, _USAGE_COLS, EXPORT_CHUNK, IP, Q, bounded_total
from runner.store.dialect import big_sum
from runner.store.jobs import JobsPart
from runner.store.models import AttemptRow, ExportRow, JobStats, ReadyLines, RequestDetail
from runner.store.tables import attempts, jobs, requests
from runner.usage import UsageCounts

__all__ = ["ReadingPart"]


class ReadingPart(JobsPart):
    """The Store's reading: progress, stats, export streams, one request in full, health and the file."""

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
                answer(),
                requests.c.error_code,
                requests.c.error_message,
                *(getattr(requests.c, c) for c in _USAGE_COLS),
                *((requests.c.body, _STORED_OUTPUT_TEXT) if with_body else ()),
            )
            .where(requests.c.job_id == job_id)
            .order_by(requests.c.line_no)
        )
        async with self.guarded_stream(self._rows_in_chunks(stmt)) as stream:
            yield stream

    @asynccontextmanager
    async def _rows_in_chunks(
        self, stmt: Select[tuple[Any, ...]]
    ) -> AsyncIterator[AsyncGenerator[list[ExportRow], None]]:
        async with self.engine.connect() as conn:
            await conn.execution_options(readonly=True, yield_per=EXPORT_CHUNK)
            result = await conn.stream(stmt)

            async def chunks() -> AsyncGenerator[list[ExportRow], None]:
                async for part in result.partitions(EXPORT_CHUNK):
                    yield [ExportRow(*r) for r in part]

            yield chunks()

    @asynccontextmanager
    async def stream_batch_export(
        self, job_id: str, id_start: str
    ) -> AsyncIterator[AsyncGenerator[Sequence[ReadyLines | ExportRow], None]]:
        """`stream_export` for the batch format: where the backend can, completed rows with an answer come as
        ready lines (ids `id_start` + line number), already encoded; the other rows as ExportRows."""
        await self.get_job(job_id)
        backend = self._backend
        fast = backend.batch_lines(job_id, id_start, EXPORT_CHUNK) if isinstance(backend, WritesBatchLines) else None
        if fast is None:
            async with self.stream_export(job_id) as stream:
                yield stream
            return
        async with self.guarded_stream(fast) as stream:
            yield stream

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
                    select(requests, answer().label("answer")).where(
                        requests.c.job_id == job_id, requests.c.custom_id == custom_id
                    )
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
            rows = [AttemptRow(*t) for t in tries]
            source = None
            if r.reused_from not in (None, SOURCE_DELETED):
                src = (
                    await conn.execute(
                        select(requests.c.job_id, requests.c.custom_id).where(requests.c.id == r.reused_from)
                    )
                ).one_or_none()
                source = (src.job_id, src.custom_id) if src is not None else None
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
                response_body=r.answer,
                error_code=r.error_code,
                error_message=r.error_message,
                usage=UsageCounts(*(getattr(r, c) for c in _USAGE_COLS)),
                created_at=r.created_at,
                submitted_at=r.submitted_at,
                finished_at=r.finished_at,
                attempt_rows=rows,
                reused=r.reused_total_tokens is not None,  # answer.REUSED: a promoted row has no reference
                reused_source=source,
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

    def file_size(self) -> int:
        """Bytes the store takes on disk: the file and its write-ahead log."""
        return self._backend.file_size()

    async def reclaim_space(self) -> None:
        """Give the space of deleted rows back to the file system (in short steps where the database can)."""
        await self._backend.reclaim_space()

    async def integrity_check(self) -> str:
        """The database's own verdict on the store ("ok" when sound)."""
        return await self.read(self._backend.integrity)
