"""Reading a JSONL file into a job: streamed, validated line by line, all or nothing.

Rows go into a job in the invisible "staging" phase in chunks, and the job is published only when the
whole file was valid. A bad line, or a submit killed half way, leaves no visible job behind.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import orjson
from anyio.streams.memory import MemoryObjectSendStream

from runner.errors import InputError, LineProblem
from runner.owners import owner_is_dead, process_name
from runner.schema import validate_line
from runner.store import DuplicateCustomId, NewRequest, Store

CHUNK = 5_000  # rows per insert transaction: SQLite's write lock is held ~50 ms, so a run on the same store
# still commits its results within 100 ms (20,000 rows would submit ~20 % faster but hold it ~220 ms)
CHUNK_BYTES = 16 << 20  # and at most this much body text, so memory stays flat with big lines too
YIELD_EVERY = 50  # lines validated between looks at the event loop
MAX_PROBLEMS_KEPT = 200  # enough to show 20 lines in detail; the rest are only counted
BOM = b"\xef\xbb\xbf"


@dataclass
class SubmitResult:
    """What `submit` did."""

    job_id: str
    total: int
    existing: bool = False
    warnings: list[LineProblem] = field(default_factory=list)


@dataclass(frozen=True)
class SubmitOptions:
    """Options that change what is queued (and so take part in the fingerprint)."""

    background: bool = False
    model: str | None = None
    lenient: bool = False
    tag: str | None = None  # e.g. a spec's name and date: the same file on another day is another job

    def fingerprint(self, file_sha256: str) -> str:
        opts = f"background={self.background};model={self.model or ''};lenient={self.lenient};tag={self.tag or ''}"
        return hashlib.sha256(f"{file_sha256}|{opts}".encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def new_job_id() -> str:
    """A short, unique, URL-safe job id."""
    return f"job_{uuid.uuid4().hex[:16]}"


def _conversation(body: dict[str, Any]) -> str | None:
    conv = body.get("conversation")
    if isinstance(conv, str):
        return conv
    if isinstance(conv, dict) and isinstance(conv.get("id"), str):
        return str(conv["id"])
    return None


def read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes without the line ending) for every non-blank line; a BOM is dropped."""
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            if n == 1 and raw.startswith(BOM):
                raw = raw[len(BOM) :]
            line = raw.rstrip(b"\r\n")
            if line.strip():
                yield n, line


class _Problems:
    """Collects problems for the error message without growing with the file."""

    def __init__(self) -> None:
        self.kept: list[LineProblem] = []
        self.bad_lines = 0
        self.valid = 0
        self._last_line = 0

    def add(self, line: int, field_: str, reason: str) -> None:
        if line != self._last_line:
            self.bad_lines += 1
            self._last_line = line
        if len(self.kept) < MAX_PROBLEMS_KEPT:
            self.kept.append(LineProblem(line, field_, reason))


async def submit_file(
    store: Store,
    path: Path,
    *,
    name: str | None = None,
    options: SubmitOptions = SubmitOptions(),
    new: bool = False,
    on_warning: Callable[[LineProblem], None] | None = None,
    source: str | None = None,
    transform: Callable[[Any], Any] | None = None,
) -> SubmitResult:
    """Queue every line of `path` as one job, or nothing at all (InputError names the bad lines).

    `source` is the name recorded for the job and used in messages when `path` is a derived copy.
    `transform` rewrites each parsed line before it is validated (a spec's defaults and overrides); the
    caller puts what it does into `options.tag`, so that it takes part in the fingerprint.
    """
    shown = source or str(path)
    if not path.is_file():
        raise InputError(shown, [LineProblem(0, "", "no such file")], bad_lines=0)
    await store.drop_abandoned_staging(owner_is_dead)
    fingerprint = options.fingerprint(file_sha256(path))
    if not new and (existing := await store.find_job_by_fingerprint(fingerprint)) is not None:
        return SubmitResult(existing, (await store.get_job(existing)).total, existing=True)

    job_id = new_job_id()
    await store.begin_job(
        job_id=job_id,
        name=name or path.stem,
        source=shown,
        fingerprint=fingerprint,
        background=options.background,
        staged_by=process_name(),
    )
    problems = _Problems()
    warnings: list[LineProblem] = []
    # Chunks are inserted by a second task while the next one is validated: SQLite works in its own
    # thread (without the GIL) while this one parses, so a big file costs about max(parse, insert).
    send, receive = anyio.create_memory_object_stream[list[NewRequest]](1)

    async def inserter() -> None:
        async with receive:
            async for rows in receive:
                await _insert(store, job_id, rows, problems)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(inserter)
            async with send:
                await _read_and_validate(path, options, problems, warnings, on_warning, send, transform)
        if problems.bad_lines:
            raise InputError(shown, problems.kept, problems.bad_lines)
        if problems.valid == 0:
            raise InputError(shown, [LineProblem(0, "", "has no requests (it is empty)")], bad_lines=0)
        await store.publish_job(job_id, problems.valid)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await store.drop_job(job_id)
        raise
    return SubmitResult(job_id, problems.valid, warnings=warnings)


async def _read_and_validate(
    path: Path,
    options: SubmitOptions,
    problems: _Problems,
    warnings: list[LineProblem],
    on_warning: Callable[[LineProblem], None] | None,
    send: MemoryObjectSendStream[list[NewRequest]],
    transform: Callable[[Any], Any] | None = None,
) -> None:
    """Parse and validate every line, sending valid rows on in chunks; problems are collected, not raised."""
    chunk: list[NewRequest] = []
    chunk_bytes = 0
    for line_no, raw in read_lines(path):
        try:
            obj = orjson.loads(raw)  # checks UTF-8 too; decoding first would cost every line a copy
        except orjson.JSONDecodeError as e:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as u:
                problems.add(line_no, "", f"is not valid UTF-8 (byte {u.start + 1} of the line)")
            else:
                problems.add(line_no, "", f"is not valid JSON: {e.msg} (column {e.colno})")
            continue
        if transform is not None:
            obj = transform(obj)
        v = validate_line(obj, line_no, model=options.model, background=options.background, lenient=options.lenient)
        for issue in v.errors:
            problems.add(line_no, issue.field, issue.reason)
        for issue in v.warnings:
            w = LineProblem(line_no, issue.field, issue.reason)
            if len(warnings) < MAX_PROBLEMS_KEPT:
                warnings.append(w)
            if on_warning is not None:
                on_warning(w)
        if v.errors:
            continue
        problems.valid += 1
        body = orjson.dumps(v.body).decode()
        chunk.append(NewRequest(line_no, v.custom_id, body, _conversation(v.body)))
        chunk_bytes += len(body)
        if len(chunk) >= CHUNK or chunk_bytes >= CHUNK_BYTES:
            await send.send(chunk)
            chunk, chunk_bytes = [], 0
        elif len(chunk) % YIELD_EVERY == 0:
            # The inserter waits in a thread while this loop parses; it can only hand its finished chunk
            # back and start the next one when the event loop gets a turn.
            await anyio.lowlevel.checkpoint()
    if chunk:
        await send.send(chunk)


async def _insert(store: Store, job_id: str, chunk: list[NewRequest], problems: _Problems) -> None:
    """Insert a chunk; a repeated custom_id is found by the unique index, then named line by line."""
    if not chunk:
        return
    try:
        await store.add_requests(job_id, chunk)
        return
    except DuplicateCustomId:
        pass
    seen = await store.lines_of_custom_ids(job_id, [r.custom_id for r in chunk])
    fresh: list[NewRequest] = []
    for r in chunk:
        first = seen.get(r.custom_id)
        if first is not None:
            problems.add(r.line_no, "custom_id", f"{r.custom_id!r} is already used on line {first}")
            continue
        seen[r.custom_id] = r.line_no
        fresh.append(r)
    await store.add_requests(job_id, fresh)
