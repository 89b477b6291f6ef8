"""Reading JSONL files into jobs: streamed, validated line by line, all or nothing.

Rows go into a job in the invisible "staging" phase in chunks, and the job is published only when the
whole file was valid. A bad line, or a submit killed half way, leaves no visible job behind. Several files
in one submit are all validated before any is published: one bad file queues none of them.

A file may be gzip-compressed (recognised by its first bytes, whatever its name) and may be stdin ("-"),
which is first copied to a temporary file so that it can be fingerprinted like any other file.

A file of 8 MB or more is parsed by a forked child process while this one inserts: 300,000 lines cost this
process 3.4-3.7 CPU-s and the child 1.8-1.9, against 5.0-5.2 CPU-s in one process (see CHILD_MIN_BYTES).

Over 400 lines on purpose: reading, validating and staging are one pipeline (a validating task and an
inserting task around one stream) that shares its problem collector and staging rules.
"""

from __future__ import annotations

import contextlib
import copyreg
import fcntl
import gc
import gzip
import hashlib
import io
import logging
import os
import pickle
import re
import shutil
import signal
import stat
import struct
import sys
import tempfile
import time
import traceback
import uuid
import warnings as warnings_module
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Final, NoReturn

import anyio
import anyio.lowlevel
import anyio.to_thread
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from runner.cachekeys import CacheGroups
from runner.chains import ChainLines
from runner.chains import problems as chain_problems
from runner.config import name_problem
from runner.errors import ConfigError, InputError, InputErrors, LineProblem, RunnerError
from runner.heap import gc_spares_the_heap
from runner.interrupt import stop_signals
from runner.owners import owner_is_dead, process_name
from runner.reuse import body_hash
from runner.store import DuplicateCustomId, NewRequest, Store
from runner.store.chains import link, parents_of
from runner.store.postgres import copy as pg_copy
from runner.store.reuse import add_reusing, reuse_answers
from runner.validate import quick_line, validate_line

log = logging.getLogger(__name__)

# Rows per insert transaction. Up to three chunks are alive at once (one being validated, one waiting, one
# being inserted), and each row costs ~2 KB while it is (Python's tuple and strings, SQLite's parse of the
# chunk's JSON): 2,000 rows keep a submit's peak RSS ~8 MB under 5,000's (1,000,000 lines: 87 against
# 95 MB) for the same CPU, now that the insert runs beside the parsing; the write lock is held ~20 ms.
CHUNK = 2_000
CHUNK_BYTES = 4 << 20  # and at most this much body text, so memory stays flat with big lines too
# PostgreSQL: chunks streamed in one COPY (`_copy_stream`), kept until it commits in case they must go again.
COPY_GROUP_CHUNKS = 8
COPY_GROUP_BYTES = 8 << 20
YIELD_EVERY = 50  # lines validated between looks at the event loop
MAX_PROBLEMS_KEPT = 200  # enough to show 20 lines in detail; the rest are only counted
BOM = b"\xef\xbb\xbf"
GZIP_MAGIC = b"\x1f\x8b"
STDIN = "-"  # the file name that means standard input
STDIN_SHOWN = "<stdin>"
STDIN_NAME = "stdin"  # the job name of standard input
PIPE_NAME = "pipe"  # the job name of a pipe given as a descriptor's path (`runner submit <(zcat x.jsonl.gz)`)
# A file descriptor's path, as a shell's process substitution gives it: its digits name no file a user knows.
_DESCRIPTOR_PATH: Final = re.compile(r"/(?:dev|proc/(?:self|thread-self|\d+))/fd/\d+")
MAX_CHAT_KEYS_SHOWN = 6


@dataclass
class SubmitResult:
    """What `submit` did."""

    job_id: str
    total: int
    existing: bool = False
    warnings: list[LineProblem] = field(default_factory=list)
    source: str = ""  # the file as named in messages ("<stdin>" for standard input)
    reused: int = 0  # lines completed at submit from answers already in the store (`reuse`)
    name: str = ""  # the job's name: for a job submitted before (`existing`), the one it was given then
    name_not_taken: str | None = None  # the name asked for, where such a job keeps another


@dataclass(frozen=True)
class SubmitOptions:
    """Options that change what is queued (and so take part in the fingerprint)."""

    background: bool = False
    model: str | None = None
    lenient: bool = False
    tag: str | None = None  # e.g. a spec's name and date: the same file on another day is another job
    reuse: bool = False  # complete lines whose question was answered before from the stored answer
    reuse_max_age: float | None = None  # seconds: only answers at most this old are reused
    cache_keys: bool = True  # group lines by prompt prefix: a prompt_cache_key each, claimed together
    # Rewrites each parsed line before it is validated (a spec's defaults and overrides). It is not part of
    # the fingerprint itself: whoever sets it puts what it does into `tag`.
    transform: Callable[[Any], Any] | None = None

    def fingerprint(self, file_sha256: str) -> str:
        opts = f"background={self.background};model={self.model or ''};lenient={self.lenient};tag={self.tag or ''}"
        if self.reuse:  # added only when set, so the fingerprints of earlier submits stay what they were
            opts += f";reuse={self.reuse_max_age}"
        if not self.cache_keys:  # likewise only when off, the default before it existed being the same file
            opts += ";cache_keys=off"
        return hashlib.sha256(f"{file_sha256}|{opts}".encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes as stored (a .gz file: its compressed bytes), read in blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def new_job_id() -> str:
    """A short, unique, URL-safe job id: the time in seconds, then 32 random bits (16 hex digits in all).

    Time first, so a new job's id sorts after those before it and its rows go in at the right-hand edge of
    the indexes that start with job_id, not in the middle of them (PostgreSQL: 15-25 % less server CPU
    for a submit into a store that holds other jobs).
    """
    return f"job_{int(time.time()) & 0xFFFFFFFF:08x}{uuid.uuid4().hex[:8]}"


def _conversation(body: dict[str, Any]) -> str | None:
    conv = body.get("conversation")
    if isinstance(conv, str):
        return conv
    if isinstance(conv, dict) and isinstance(conv.get("id"), str):
        return str(conv["id"])
    return None


class Unreadable(Exception):
    """The file could not be read (or decompressed) to the end; `after` is the last line read."""

    def __init__(self, reason: str, after: int) -> None:
        self.reason = reason
        self.after = after
        super().__init__(reason)

    def problem(self) -> LineProblem:
        """The whole-file problem to report."""
        where = f" after line {self.after}" if self.after else ""
        return LineProblem(0, "", f"cannot be read{where}: {self.reason}")


@contextmanager
def open_input(path: Path) -> Iterator[Iterable[bytes]]:
    """The file's bytes, decompressed when it is gzip (by its first two bytes, not its name)."""
    with path.open("rb") as f:
        if f.seekable():
            compressed = f.read(2) == GZIP_MAGIC
            f.seek(0)
        else:  # a pipe (`runner convert <(zcat ...)`): looked at in the buffer, as it cannot be rewound
            compressed = f.peek(2)[:2] == GZIP_MAGIC
        if not compressed:
            yield f
            return
        with gzip.GzipFile(fileobj=f, mode="rb") as g:
            yield g


def read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes without the line ending) for every non-blank line; a BOM is dropped.

    Unreadable if reading or decompressing fails part way (a truncated or corrupt .gz, an I/O error).
    """
    n = 0
    try:
        with open_input(path) as f:
            for n, raw in enumerate(f, start=1):
                if n == 1 and raw.startswith(BOM):
                    raw = raw[len(BOM) :]
                line = raw.rstrip(b"\r\n")
                if line.strip():
                    yield n, line
    except (OSError, EOFError, zlib.error) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        if isinstance(e, gzip.BadGzipFile | EOFError | zlib.error):
            reason = f"not a valid gzip file ({reason})"
        raise Unreadable(reason, n) from None


def _spool_from(src: BinaryIO, prefix: str, dst_dir: Path | None = None) -> Path:
    """Copy a stream that can be read only once to a temporary file (the caller deletes it); its path."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".jsonl", dir=dst_dir)
    try:
        with open(fd, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def spool_stdin(dst_dir: Path | None = None) -> Path:
    """Copy standard input to a temporary file (the caller deletes it) and return its path."""
    return _spool_from(sys.stdin.buffer, "runner-stdin.", dst_dir)


class _Problems:
    """Collects problems for the error message without growing with the file."""

    def __init__(self) -> None:
        self.kept: list[LineProblem] = []
        self.bad_lines = 0
        self.valid = 0
        self.objects = 0  # lines that are JSON objects
        self.chat_lines = 0  # of those, lines with Chat Completions `messages` and no `input`
        self.chat_keys: dict[str, None] = {}  # Chat Completions keys seen, in order (a set that keeps it)
        self.unreadable: Unreadable | None = None  # the file could not be read to the end
        self.parser_lost = False  # the parsing child ended without finishing (killed)
        self.reused = 0  # lines completed from stored answers (submit --reuse)
        self.chains = ChainLines()  # the valid lines that continue another line (runner/chains.py)

    def add(self, line: int, field_: str, reason: str, *, new_line: bool = True) -> None:
        """Record a problem; `new_line` is False for a second problem of a line already counted."""
        if new_line:
            self.bad_lines += 1
        if len(self.kept) < MAX_PROBLEMS_KEPT:
            self.kept.append(LineProblem(line, field_, reason))

    def chat_hint(self, shown: str) -> str | None:
        """The one-line diagnosis of a file that is mostly Chat Completions lines, else None."""
        if not self.chat_lines or self.chat_lines * 2 <= self.objects:
            return None
        keys = ", ".join(list(self.chat_keys)[:MAX_CHAT_KEYS_SHOWN])
        arg = STDIN if shown == STDIN_SHOWN else shown
        return (
            f"this looks like a Chat Completions file ({keys}); runner sends the Responses API"
            f" \N{EM DASH} convert it with `runner convert {arg} > out.jsonl`"
        )


@dataclass
class _Chunk:
    """Rows for one insert, with what was noted about their lines (applied by `_take`, in file order).

    `invalid` holds the line numbers whose rows are there only for their custom_id. `problems` are
    (line, field, reason, new_line) as `_Problems.add` takes them; `more_bad_lines` counts bad lines left out
    of `problems` (a parsing child sends only the first MAX_PROBLEMS_KEPT, see `_child_main`).
    """

    rows: list[NewRequest] = field(default_factory=list)
    invalid: set[int] = field(default_factory=set)
    body_bytes: int = 0
    problems: list[tuple[int, str, str, bool]] = field(default_factory=list)
    more_bad_lines: int = 0
    warnings: list[LineProblem] = field(default_factory=list)
    # The rows as PostgreSQL binary COPY data, made by the parsing child (`rows` is then empty; see `_CopyInto`).
    copy: bytes | None = None

    def has_rows(self) -> bool:
        return bool(self.rows) or self.copy is not None


@dataclass(frozen=True)
class _CopyInto:
    """A parsing child sends a chunk as COPY data for this job, not as rows (PostgreSQL; postgres/copy.py).

    `now` is every row's created_at: the time the file's staging began, where each chunk had its own insert's.
    """

    job_id: str
    now: float


@dataclass
class _Staged:
    """A file read into a staging job (or found submitted before)."""

    result: SubmitResult
    staged: bool  # a staging job to publish (False: an existing job, or a file that failed)


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
    warn = None if on_warning is None else (lambda _src, p: on_warning(p))
    if transform is not None:
        options = replace(options, transform=transform)
    (res,) = await submit_files(
        store, [path], name=name, options=options, new=new, on_warning=warn, sources=[source or str(path)]
    )
    return res


async def submit_files(
    store: Store,
    paths: Sequence[Path],
    *,
    name: str | None = None,
    options: SubmitOptions = SubmitOptions(),
    new: bool = False,
    on_warning: Callable[[str, LineProblem], None] | None = None,
    sources: Sequence[str] | None = None,
) -> list[SubmitResult]:
    """Queue each file as its own job, all lines or none, and no file unless every file is valid.

    Every file is read and validated (into a hidden staging job) before any is published, so one bad file
    queues nothing; the InputError (InputErrors for several bad files) names every problem of every file.
    `sources` name the files in messages and in the job (default: the paths). The same file twice in one
    call, or a file submitted before with the same options, gives back the same job (unless `new`).
    `name` is the job name of a single file; with several, each job is named `{name}-{file stem}`.
    """
    with gc_spares_the_heap():
        return await _submit_files(store, paths, name, options, new, on_warning, sources)


async def _submit_files(
    store: Store,
    paths: Sequence[Path],
    name: str | None,
    options: SubmitOptions,
    new: bool,
    on_warning: Callable[[str, LineProblem], None] | None,
    sources: Sequence[str] | None,
) -> list[SubmitResult]:
    if name is not None and (problem := name_problem(name)) is not None:  # the CLI and a spec said so already
        raise ConfigError(f"the job name {problem}")
    shown = list(sources) if sources is not None else [str(p) for p in paths]
    await store.drop_abandoned_staging(owner_is_dead)
    done: list[_Staged] = []
    failed: list[InputError] = []
    by_fingerprint: dict[str, SubmitResult] = {}
    asked: list[str | None] = []
    try:
        for path, src in zip(paths, shown, strict=True):
            job_name = name if len(paths) == 1 else f"{name}-{job_name_of(path, src)}" if name else None
            try:
                staged = await _stage(store, path, src, job_name, options, new, on_warning, by_fingerprint)
            except InputError as e:
                failed.append(e)
                continue
            done.append(staged)
            asked.append(job_name)
        if failed:
            raise failed[0] if len(paths) == 1 else InputErrors(failed, len(paths))
        ready = [d for d in done if d.staged]
        if ready:
            published = await store.publish_jobs([(d.result.job_id, d.result.total) for d in ready], new=new)
            for d in ready:
                d.staged = False
            _stand_in(done, {d.result.job_id: p for d, p in zip(ready, published, strict=True)})
    except BaseException:
        for d in done:
            if d.staged:
                await _drop_staged(store, d.result.job_id)
        raise
    for d, wanted in zip(done, asked, strict=True):
        kept = (await store.get_job(d.result.job_id)).name
        not_taken = wanted if d.result.existing and wanted is not None and wanted != kept else None
        d.result = replace(d.result, name=kept, name_not_taken=not_taken)
    return [d.result for d in done]


def _stand_in(done: list[_Staged], published: dict[str, tuple[str, int]]) -> None:
    """Where a staged job gave way at publishing to the same file's job, published by a submit that ran at the same
    time (store.publish_jobs), that job is the file's result (and its twins' in this call), as if it came first."""
    for d in done:
        job_id, total = published.get(d.result.job_id, (d.result.job_id, d.result.total))
        if job_id != d.result.job_id:
            d.result = replace(d.result, job_id=job_id, total=total, existing=True, warnings=[], reused=0)


def no_requests(path: Path) -> LineProblem:
    """The problem of a file without one request: empty, or only blank lines (a file of blank lines was called
    empty, and the user looked at it and saw lines)."""
    try:
        empty = path.stat().st_size == 0
    except OSError:
        empty = True
    return LineProblem(0, "", "has no requests (it is empty)" if empty else "has no requests (only blank lines)")


async def _drop_staged(store: Store, job_id: str) -> None:
    """Drop a staged job after its submit failed. A store that refuses this too (the statement_timeout or the
    outage that failed the submit) must not hide why the submit failed: the job stays staged, never shown or
    run, and the next submit or `runner doctor` drops it (its submit process is gone by then)."""
    with anyio.CancelScope(shield=True):
        try:
            await store.drop_job(job_id)
        except Exception as e:  # the submit's own error is the one to report
            log.debug("could not drop the staged job %s now (%s); the next submit drops it", job_id, e)


def job_name_of(path: Path, shown: str) -> str:
    """The job name of a file submitted without --name: its stem (`in` for in.jsonl), `stdin` for standard
    input, and for a descriptor's path (/dev/fd/63) the stem of the file it is open on, or `pipe` for a pipe.
    The temporary copy of stdin or a pipe is never named: its name means nothing to the user."""
    if shown == STDIN_SHOWN:
        return STDIN_NAME
    if _DESCRIPTOR_PATH.fullmatch(shown) is None:
        return path.stem
    try:
        real = Path(shown).resolve(strict=True)
        return real.stem if real.is_file() else PIPE_NAME
    except (OSError, RuntimeError):  # closed meanwhile, or a link loop: a pipe is all that can be said
        return PIPE_NAME


def _spool(path: Path) -> Path:
    """Copy a pipe or device to a temporary file (the caller deletes it) and return its path."""
    with path.open("rb") as src:
        return _spool_from(src, "runner-pipe.")


async def _stage(
    store: Store,
    path: Path,
    shown: str,
    name: str | None,
    options: SubmitOptions,
    new: bool,
    on_warning: Callable[[str, LineProblem], None] | None,
    by_fingerprint: dict[str, SubmitResult],
) -> _Staged:
    """Read one file into a staging job; InputError (and no job left behind) when it is invalid.

    A pipe or a device (`runner submit <(zcat in.jsonl.gz)`, a named pipe) is copied to a temporary file
    first, as standard input is: a file is read twice (its fingerprint, then its lines), a pipe only once.
    """
    try:
        mode: int | None = path.stat().st_mode
    except OSError:
        mode = None  # absent or unreadable: said by _stage_file
    if mode is None or stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return await _stage_file(store, path, shown, name, options, new, on_warning, by_fingerprint)
    try:
        spooled = await anyio.to_thread.run_sync(_spool, path)
    except OSError as e:
        raise InputError(shown, [LineProblem(0, "", f"cannot be read: {e.strerror or e}")], bad_lines=0) from None
    try:
        name = name or job_name_of(path, shown)  # the job's name, as for a file (not the temporary copy's)
        return await _stage_file(store, spooled, shown, name, options, new, on_warning, by_fingerprint)
    finally:
        spooled.unlink(missing_ok=True)


async def _stage_file(
    store: Store,
    path: Path,
    shown: str,
    name: str | None,
    options: SubmitOptions,
    new: bool,
    on_warning: Callable[[str, LineProblem], None] | None,
    by_fingerprint: dict[str, SubmitResult],
) -> _Staged:
    """`_stage` on a regular file (or a path that is not one, which it refuses)."""
    try:
        if not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "no such file"
            raise InputError(shown, [LineProblem(0, "", what)], bad_lines=0)
        fingerprint = options.fingerprint(file_sha256(path))
    except OSError as e:
        raise InputError(shown, [LineProblem(0, "", f"cannot be read: {e.strerror or e}")], bad_lines=0) from None
    if not new:
        if (twin := by_fingerprint.get(fingerprint)) is not None:
            return _Staged(SubmitResult(twin.job_id, twin.total, existing=True, source=shown), staged=False)
        if (existing := await store.find_job_by_fingerprint(fingerprint)) is not None:
            total = (await store.get_job(existing)).total
            return _Staged(SubmitResult(existing, total, existing=True, source=shown), staged=False)

    job_id = new_job_id()
    await store.begin_job(
        job_id=job_id,
        name=name or job_name_of(path, shown),
        source=shown,
        fingerprint=fingerprint,
        background=options.background,
        staged_by=process_name(),
    )
    problems = _Problems()
    warnings: list[LineProblem] = []
    warn = None if on_warning is None else (lambda p: on_warning(shown, p))
    # Chunks are inserted by a second task while the next one is validated: SQLite works in its own
    # thread (without the GIL) while this one parses, so a big file costs about max(parse, insert).
    send, receive = anyio.create_memory_object_stream[_Chunk](1)

    newer_than = None if options.reuse_max_age is None else time.time() - options.reuse_max_age

    async def insert_one(chunk: _Chunk) -> None:
        reuse = options.reuse and not problems.bad_lines and chunk.has_rows()
        if reuse:  # inserted already answered, where the store can (each row written once)
            if chunk.copy is None:
                done = await add_reusing(store, job_id, chunk.rows, newer_than=newer_than)
            else:
                done = await store.add_copied_answered(job_id, chunk.copy, newer_than)
            if done is not None:
                problems.reused += done
                return
            if chunk.copy is not None:  # on the rare way, row by row
                chunk.rows, chunk.copy = pg_copy.decode(chunk.copy), None
        await _insert(store, job_id, chunk, problems)
        if reuse:
            first, last = chunk.rows[0].line_no, chunk.rows[-1].line_no
            problems.reused += await reuse_answers(store, job_id, first, last, newer_than=newer_than)

    async def inserter() -> None:
        async with receive:
            chunk: _Chunk | None = None
            while True:
                if chunk is None:
                    try:
                        chunk = await receive.receive()
                    except anyio.EndOfStream:
                        return
                if chunk.copy is not None and not options.reuse:
                    chunk = await _copy_stream(store, job_id, chunk, receive, problems)
                else:
                    await insert_one(chunk)
                    chunk = None

    copy_into = _CopyInto(job_id, store.clock()) if store.takes_copy() else None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(inserter)
            async with send:
                await _read_and_validate(path, options, problems, warnings, warn, send, copy_into)
        if problems.parser_lost:
            raise RunnerError(f"{shown}: the process parsing the file ended before the end of it; nothing was queued")
        if problems.unreadable is not None:
            raise InputError(shown, [problems.unreadable.problem()], bad_lines=0)
        if problems.chains.lines:
            await _link_chains(store, job_id, problems)
        if problems.bad_lines:
            raise InputError(shown, problems.kept, problems.bad_lines, hint=problems.chat_hint(shown))
        if problems.valid == 0:
            raise InputError(shown, [no_requests(path)], bad_lines=0)
    except BaseException:
        await _drop_staged(store, job_id)
        raise
    result = SubmitResult(job_id, problems.valid, warnings=warnings, source=shown, reused=problems.reused)
    if not new:
        by_fingerprint[fingerprint] = result
    return _Staged(result, staged=True)


async def _link_chains(store: Store, job_id: str, problems: _Problems) -> None:
    """Check the lines that continue another (parent in the file, stored, no cycle) and link them to it."""
    chained = problems.chains
    parents = await parents_of(store, job_id, chained.refs())
    found = chain_problems(chained, parents)
    named: set[int] = set()
    for line_no, field_, reason in found:
        problems.add(line_no, field_, reason, new_line=line_no not in named)
        named.add(line_no)
    if not found and not problems.bad_lines:
        await link(store, job_id, [(c.line_no, parents[c.ref].id) for c in chained.lines])


async def _read_and_validate(
    path: Path,
    options: SubmitOptions,
    problems: _Problems,
    warnings: list[LineProblem],
    on_warning: Callable[[LineProblem], None] | None,
    send: MemoryObjectSendStream[_Chunk],
    copy_into: _CopyInto | None = None,
) -> None:
    """Parse and validate every line, sending rows on in chunks; problems are collected, not raised.

    An invalid line's custom_id is inserted too (with an empty body: the job is dropped anyway), so that
    a custom_id repeated on another line is named in this same pass, whichever of the two is invalid.
    A big file is parsed by a child process (`_parse_in_child`), a small one here, by the same code.
    """
    if _parses_in_child(path):
        await _parse_in_child(path, options, problems, warnings, on_warning, send, copy_into)
    else:
        await _parse_here(path, options, problems, warnings, on_warning, send)


async def _parse_here(
    path: Path,
    options: SubmitOptions,
    problems: _Problems,
    warnings: list[LineProblem],
    on_warning: Callable[[LineProblem], None] | None,
    send: MemoryObjectSendStream[_Chunk],
) -> None:
    """`_read_and_validate` in this process."""
    for chunk in _validated(path, options, problems):
        if chunk is None:
            # The inserter waits in a thread while this loop parses; it can only hand its finished chunk
            # back and start the next one when the event loop gets a turn.
            await anyio.lowlevel.checkpoint()
            continue
        _take(chunk, problems, warnings, on_warning)
        if chunk.rows:
            await send.send(chunk)


def _take(
    chunk: _Chunk,
    problems: _Problems,
    warnings: list[LineProblem],
    on_warning: Callable[[LineProblem], None] | None,
) -> None:
    """Record what was noted about a chunk's lines, before the chunk is inserted (whose duplicates come after)."""
    for line_no, field_, reason, new_line in chunk.problems:
        problems.add(line_no, field_, reason, new_line=new_line)
    problems.bad_lines += chunk.more_bad_lines
    for w in chunk.warnings:
        if len(warnings) < MAX_PROBLEMS_KEPT:
            warnings.append(w)
        if on_warning is not None:
            on_warning(w)


def _validated(path: Path, options: SubmitOptions, tally: _Problems) -> Iterator[_Chunk | None]:
    """The file's rows in chunks, each with its lines' problems and warnings; None between every YIELD_EVERY
    lines (a turn for the event loop). Counts and chained lines go to `tally`, and so does an unreadable
    file, which ends the chunks there."""
    groups = CacheGroups() if options.cache_keys else None
    loads, dumps, new_row = orjson.loads, orjson.dumps, tuple.__new__
    transform, model, background = options.transform, options.model, options.background
    size, size_bytes = CHUNK, CHUNK_BYTES  # read at each call: tests make chunks small
    chunk = _Chunk()
    rows, notes = chunk.rows, chunk.problems
    try:
        for line_no, raw in read_lines(path):
            try:
                obj = loads(raw)  # checks UTF-8 too; decoding first would cost every line a copy
            except orjson.JSONDecodeError as e:
                notes.append((line_no, "", _not_json(raw, e), True))
            else:
                if transform is not None:
                    obj = transform(obj)
                quick = quick_line(obj, line_no, model=model, background=background)
                if quick is None:
                    _slow_line(obj, line_no, options, tally, chunk, groups)
                else:
                    # The common case, without issue lists (see quick_line); it declines conversations and chains.
                    tally.objects += 1
                    tally.valid += 1
                    custom_id, body = quick
                    sched = line_no if groups is None else groups.place(body, line_no)
                    text = dumps(body).decode()
                    # tuple.__new__ is NewRequest's own __new__ without its Python frame (~0.3 us a line).
                    rows.append(new_row(NewRequest, (line_no, custom_id, text, None, body_hash(body), sched)))
                    chunk.body_bytes += len(text)
            if len(rows) >= size or chunk.body_bytes >= size_bytes or len(notes) >= size:
                yield chunk
                chunk = _Chunk()
                rows, notes = chunk.rows, chunk.problems
            elif len(rows) % YIELD_EVERY == 0:
                yield None
    except Unreadable as e:
        tally.unreadable = e
    yield chunk


def _not_json(raw: bytes, e: orjson.JSONDecodeError) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as u:
        return f"is not valid UTF-8 (byte {u.start + 1} of the line)"
    return f"is not valid JSON: {e.msg} (column {e.colno})"


def _slow_line(
    obj: Any, line_no: int, options: SubmitOptions, tally: _Problems, chunk: _Chunk, groups: CacheGroups | None
) -> None:
    """A line quick_line declined: judged in full, its issues noted, its row added (valid or not)."""
    v = validate_line(obj, line_no, model=options.model, background=options.background, lenient=options.lenient)
    if isinstance(obj, dict):
        tally.objects += 1
    if v.chat_keys:
        tally.chat_keys.update(dict.fromkeys(v.chat_keys))
        if "messages" in v.chat_keys and "input" not in v.body:
            tally.chat_lines += 1
    chunk.problems.extend((line_no, issue.field, issue.reason, i == 0) for i, issue in enumerate(v.errors))
    chunk.warnings.extend(LineProblem(line_no, issue.field, issue.reason) for issue in v.warnings)
    if v.errors:
        chunk.rows.append(NewRequest(line_no, v.custom_id, "{}"))
        chunk.invalid.add(line_no)
        return
    body = v.body
    tally.valid += 1
    tally.chains.add(line_no, v.custom_id, body, bare="body" not in obj)
    sched = line_no if groups is None else groups.place(body, line_no)
    text = orjson.dumps(body).decode()
    chunk.rows.append(NewRequest(line_no, v.custom_id, text, _conversation(body), body_hash(body), sched))
    chunk.body_bytes += len(text)


# -- parsing in a child process ------------------------------------------------------------------------
#
# On one core the parsing (~6 us a line: orjson, the checks, the hashes) and SQLite's insert (~5 us, in the
# store's thread without the GIL) mostly took turns: the insert thread needs the GIL back after each
# statement and waits for the parser's switch interval. A file of at least CHILD_MIN_BYTES is therefore
# parsed by a forked child, which sends the ready chunks through a pipe (pickled: ~0.8 us a row to write
# in the child, ~0.5 us to read here), while this process only inserts. Smaller files are not worth a fork.
# What the parent records is what it would have recorded parsing itself: each chunk's problems and
# warnings are applied in file order before its rows are inserted, the counts at the end.
CHILD_MIN_BYTES = 8 << 20
_FRAME = struct.Struct("<Q")  # each message: its length, then the pickle
PIPE_BYTES = 1 << 20  # Linux's largest pipe for an unprivileged process (/proc/sys/fs/pipe-max-size)


def _parses_in_child(path: Path) -> bool:
    try:
        # Linux only: elsewhere a fork of a process with threads is not dependable (macOS's frameworks).
        return sys.platform.startswith("linux") and path.stat().st_size >= CHILD_MIN_BYTES
    except OSError:
        return False  # read here, where the error is reported as for any file


def _row_reduce(r: NewRequest) -> tuple[Any, ...]:
    # As a plain tuple, rebuilt by tuple.__new__ in C: a NamedTuple's own pickling calls its Python __new__.
    return tuple.__new__, (NewRequest, tuple(r))


_DISPATCH: Final = {**copyreg.dispatch_table, NewRequest: _row_reduce}


def _send_message(out: BinaryIO, message: tuple[str, Any]) -> None:
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _DISPATCH
    pickler.dump(message)
    out.write(_FRAME.pack(buf.tell()))
    out.write(buf.getbuffer())


def _receive_message(reader: BinaryIO) -> tuple[str, Any] | None:
    """The next message from the child; None if it ended without saying so (killed)."""
    head = reader.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    (size,) = _FRAME.unpack(head)
    data = reader.read(size)
    if len(data) < size:
        return None
    message: tuple[str, Any] = pickle.loads(data)
    return message


async def _parse_in_child(
    path: Path,
    options: SubmitOptions,
    problems: _Problems,
    warnings: list[LineProblem],
    on_warning: Callable[[LineProblem], None] | None,
    send: MemoryObjectSendStream[_Chunk],
    copy_into: _CopyInto | None = None,
) -> None:
    """`_read_and_validate`'s loop run by a forked child (see CHILD_MIN_BYTES); the child is gone on return."""
    r, w = os.pipe()
    with contextlib.suppress(OSError):
        # Room for about three chunks in the pipe (the default holds a fifth of one), so that the child parses
        # on while this process is busy inserting rather than waiting for it to read.
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    try:
        with warnings_module.catch_warnings():
            # Python 3.12+ warns of any fork in a process with threads. The child touches nothing those threads
            # may hold (the store's connections, the event loop): it reads the file, parses, and writes a pipe.
            warnings_module.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:  # no memory or no process left for it: parse here, as a small file is
        os.close(r)
        os.close(w)
        await _parse_here(path, options, problems, warnings, on_warning, send)
        return
    if pid == 0:
        os.close(r)
        _child_main(path, options, w, copy_into)  # never returns
    os.close(w)
    reader = os.fdopen(r, "rb")  # closed by _end_child, once the child is gone
    try:
        while True:
            message = await anyio.to_thread.run_sync(_receive_message, reader, abandon_on_cancel=True)
            if message is None:
                # Recorded, not raised: raised here it would reach the caller wrapped in the task group's group.
                problems.parser_lost = True
                return
            kind, payload = message
            if kind == "chunk":
                _take(payload, problems, warnings, on_warning)
                if payload.has_rows():
                    await send.send(payload)
            elif kind == "end":
                problems.valid, problems.objects, problems.chat_lines, problems.chat_keys, problems.chains = payload[:5]
                if payload[5] is not None:
                    problems.unreadable = Unreadable(*payload[5])
                return
            else:
                raise payload  # the child's own exception (a bug, as it would have been here)
    finally:
        _end_child(pid, reader)


def _end_child(pid: int, reader: BinaryIO) -> None:
    """Kill the child (done, or no longer wanted: cancelled, or the insert failed) and reap it: a few ms."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    reader.close()  # after the kill, so that a read abandoned by a cancel has ended (EOF)


def _child_main(path: Path, options: SubmitOptions, fd: int, copy_into: _CopyInto | None = None) -> NoReturn:
    """The forked child: parse `path`, send each chunk and then the counts to `fd`, and exit. With `copy_into`, a
    chunk's rows go as PostgreSQL COPY data: encoding them costs this process less than pickling them did, and
    the submitting process, whose work the server waits on between chunks, neither unpickles nor encodes a row."""
    code = 0
    try:
        # A Ctrl-C reaches the whole process group: the parent alone decides (it kills this process), and
        # a signal here must not be written to the parent's event loop, whose wake-up pipe is shared.
        signal.set_wakeup_fd(-1)
        for sig in stop_signals():
            signal.signal(sig, signal.SIG_IGN)
        gc.disable()  # the rows are acyclic, and this process ends when they are sent
        with open(fd, "wb") as out:
            tally = _Problems()
            sent = 0
            try:
                for chunk in _validated(path, options, tally):
                    if chunk is None:
                        continue
                    keep = max(MAX_PROBLEMS_KEPT - sent, 0)
                    if len(chunk.problems) > keep:  # the parent keeps only so many: count the rest
                        chunk.more_bad_lines += sum(1 for p in chunk.problems[keep:] if p[3])
                        del chunk.problems[keep:]
                    sent += len(chunk.problems)
                    if copy_into is not None and chunk.rows:
                        chunk.copy = pg_copy.encode(chunk.rows, copy_into.job_id, copy_into.now)
                        chunk.rows = []
                    _send_message(out, ("chunk", chunk))
                u = tally.unreadable
                counts = (tally.valid, tally.objects, tally.chat_lines, tally.chat_keys, tally.chains)
                _send_message(out, ("end", (*counts, None if u is None else (u.reason, u.after))))
            except BrokenPipeError:
                raise
            except Exception as e:  # handed to the parent, which raises it
                try:
                    _send_message(out, ("error", e))
                except Exception:  # not picklable: its text then
                    _send_message(out, ("error", RuntimeError(traceback.format_exc())))
    except BaseException:  # the parent is gone or cancelled it: nothing to tell
        code = 1
    finally:
        os._exit(code)


async def _copy_stream(
    store: Store, job_id: str, first: _Chunk, receive: MemoryObjectReceiveStream[_Chunk], problems: _Problems
) -> _Chunk | None:
    """Insert `first` and the COPY chunks received after it, up to COPY_GROUP_CHUNKS or COPY_GROUP_BYTES, as one
    COPY that sends each chunk as it comes; the chunk received after them that is not COPY data, if any.

    Measured (1,000,000 lines, PostgreSQL on the same 2 cores): a COPY per chunk left the server idle while this
    process took the chunk and began and ended its transaction, about 3 ms of each chunk's 18. Should the group
    fail on a repeated custom_id (or a conflict), nothing of it is in: its chunks go again one by one, as
    `_insert` names the repeated lines."""
    group = [first]
    size = len(first.copy or b"")
    other: _Chunk | None = None

    async def parts() -> AsyncIterator[memoryview]:
        nonlocal other, size
        assert first.copy is not None
        yield pg_copy.rows_of(first.copy)
        while len(group) < COPY_GROUP_CHUNKS and size < COPY_GROUP_BYTES:
            try:
                chunk = await receive.receive()
            except anyio.EndOfStream:
                return
            if chunk.copy is None:
                other = chunk
                return
            group.append(chunk)
            size += len(chunk.copy)
            yield pg_copy.rows_of(chunk.copy)

    if not await store.add_copied_stream(job_id, parts()):
        for chunk in group:
            await _insert(store, job_id, chunk, problems)
    return other


async def _insert(store: Store, job_id: str, chunk: _Chunk, problems: _Problems) -> None:
    """Insert a chunk; a repeated custom_id is found by the unique index, then named line by line."""
    try:
        if chunk.copy is None:
            await store.add_requests(job_id, chunk.rows)
        else:
            await store.add_copied(job_id, chunk.copy)
        return
    except DuplicateCustomId:
        if chunk.copy is not None:  # looked at row by row from here on
            chunk.rows, chunk.copy = pg_copy.decode(chunk.copy), None
    seen = await store.lines_of_custom_ids(job_id, [r.custom_id for r in chunk.rows])
    fresh: list[NewRequest] = []
    for r in chunk.rows:
        first = seen.get(r.custom_id)
        if first is not None:
            # A line already invalid was counted once; its duplicate id is one more problem of it.
            problems.add(
                r.line_no,
                "custom_id",
                f"{r.custom_id!r} is already used on line {first}",
                new_line=r.line_no not in chunk.invalid,
            )
            continue
        seen[r.custom_id] = r.line_no
        fresh.append(r)
    await store.add_requests(job_id, fresh)
