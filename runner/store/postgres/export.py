"""Export on PostgreSQL: the batch format's common lines written by the server, read through a cursor.

A finished job's lines are nearly all alike: completed, with an HTTP status and a stored answer. PostgreSQL
writes each such line whole (hot.sql `batch_lines`), so Python only joins a chunk's lines; the other rows
come back as ExportRows for export.py to write. Through SQLAlchemy's stream every line cost the runner an
ExportRow, two dicts and an orjson call: 1,000,000 lines took 11.7 runner CPU-s that way (see README,
Benchmarks, for the figures after).

A chunk at a time by line number (each a short walk of the (job_id, line_no) index), in one REPEATABLE READ
transaction: one snapshot for the whole stream, as the engine's stream had, and memory flat at any size.
The next chunk is fetched while the caller writes the previous one out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.store.models import ExportRow, ReadyLines, ready_runs
from runner.store.sqlfile import blocks

__all__ = ["batch_lines"]

Chunk = Sequence[ReadyLines | ExportRow]
_BEFORE_FIRST = -(1 << 31)  # a line number below every line's (an int4)


def _assemble(rows: Sequence[Any]) -> Chunk:
    """Runs of ready lines joined into one ReadyLines each, the other rows as ExportRows, in line order."""
    lines = [r[1] for r in rows]
    if None not in lines:  # a finished job's chunk: every line written by the server, one run
        return [ReadyLines(b"".join(lines), len(lines))]
    return ready_runs(lines, (ExportRow(r[0], *r[2:]) for r in rows if r[1] is None))


@asynccontextmanager
async def batch_lines(
    engine: AsyncEngine, job_id: str, id_start: str, chunk: int
) -> AsyncIterator[AsyncGenerator[Chunk, None]]:
    """A job's rows in line order, in chunks: completed rows with an answer as ready lines of the batch format
    (ids `id_start` + line number), the rest as ExportRows; one snapshot for the whole stream."""
    sql = blocks("postgres", "hot.sql")["batch_lines"]
    start = orjson.dumps(id_start).decode()[:-1]  # the id's JSON text without its closing quote
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        apg = raw.driver_connection
        assert apg is not None
        async with apg.transaction(isolation="repeatable_read", readonly=True):
            pending: asyncio.Future[list[Any]] | None = None

            async def chunks() -> AsyncGenerator[Chunk, None]:
                nonlocal pending
                pending = asyncio.ensure_future(apg.fetch(sql, start, job_id, _BEFORE_FIRST, chunk))
                while True:
                    rows = await pending
                    if not rows:
                        pending = None
                        return
                    # The server reads the next chunk while this one is written out.
                    pending = asyncio.ensure_future(apg.fetch(sql, start, job_id, rows[-1][0], chunk))
                    yield _assemble(rows)

            try:
                yield chunks()
            finally:
                if pending is not None:  # the caller stopped early: the read under way (one chunk) ends first,
                    # so the transaction ends on an idle connection; its rows or its error are of no use now.
                    with anyio.CancelScope(shield=True), suppress(Exception):
                        await pending
