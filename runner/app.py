"""The application API: what the CLI calls, and what scripts and notebooks can call too.

Each function opens the store (and the HTTP client where needed) for its own duration, so callers hold
no resources between calls:

    import anyio, runner.app as app
    job = anyio.run(app.submit, "jobs/example.jsonl")           # -> SubmitResult
    outcome = anyio.run(app.run, [job.job_id])                   # -> RunOutcome

Over 400 lines on purpose: it is the façade, one short function per command that opens what it needs and
calls the flow; split up, callers (the CLI, scripts, notebooks) would import from several places.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
from pydantic import ValidationError

from runner.config import (
    DEFAULT_BASE_URL,
    FLEX_TIMEOUT,
    FORMATS,
    LANES,
    AuthStyle,
    Lane,
    Settings,
    base_url_problem,
    env_name,
    key_problem,
)
from runner.errors import ConfigError, DoomedJobError, InputError, LineProblem, StoreMissing, StoreUnavailable
from runner.interrupt import Repeats, on_signal, stop_signals
from runner.owners import host_id, owner_is_dead
from runner.states import ACTIVE, RequestState, count
from runner.status import JobStatusReport, job_state
from runner.store import JobRow, JobStats, RequestDetail, Store, place_log, refuse_in_memory, store_file
from runner.store.batches import usage_by_model_and_lane
from runner.store.fleet import FleetClock, fleet_view, unregister
from runner.store.reuse import completed_outputs, reused_count
from runner.worker.types import RunOptions, RunResult, Snapshot, StopReason, default_poll_slots

log = logging.getLogger(__name__)

# Start-up time: every `runner` command imports this module, and `runner status` must not pay for reading
# JSONL, pricing, exporting, HTML reports, specs or the HTTP stack. So the flow modules below are imported
# inside the functions that use them; here they are named for the type checker only.
if TYPE_CHECKING:
    import httpx

    from runner.budget import Budget
    from runner.client import ApiClient
    from runner.convert import ConvertCounts
    from runner.estimate import Estimate
    from runner.export import ExportCounts, ResultRow
    from runner.ingest import SubmitOptions, SubmitResult
    from runner.lanes.batch import BatchLane
    from runner.prices import PriceTable
    from runner.processes import ChildReport, is_child
    from runner.report import Report
    from runner.spec import JobSpec
    from runner.worker.pool import Run

# FORMATS, LANES, JobRow, JobStats, JobStatusReport, StopReason and job_state are re-exported for the CLI,
# which imports app only.
__all__ = [
    "FORMATS",
    "LANES",
    "CancelResult",
    "ChildReport",
    "DeleteResult",
    "DoctorReport",
    "JobRow",
    "JobStats",
    "JobStatusReport",
    "RequestDetail",
    "ResultRow",
    "RunOutcome",
    "Settings",
    "StopReason",
    "cancel",
    "default_poll_slots",
    "delete",
    "doctor",
    "estimate",
    "export",
    "is_child",
    "job_state",
    "jobs",
    "report",
    "results",
    "retry",
    "run",
    "run_spec",
    "show",
    "status",
    "status_report",
    "submit",
]

# Re-exported from flow modules, which load when first asked for (start-up time, above).
_LAZY = {"ChildReport": "runner.processes", "is_child": "runner.processes", "ResultRow": "runner.export"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class RunOutcome:
    """How `run` ended, with each job's figures afterwards."""

    result: RunResult
    stats: list[JobStats] = field(default_factory=list)
    signal: int | None = None  # the signal that interrupted the run, if one did
    processes: list[int] = field(default_factory=list)  # --processes N > 1: requests each process finished

    @property
    def failed(self) -> int:
        return sum(count(s.counts, RequestState.FAILED) for s in self.stats)


@dataclass
class CancelResult:
    """What `cancel` did: `cancelled_queued + cancelled_in_flight` is what `status` then counts as cancelled."""

    cancelled_queued: int
    cancelled_in_flight: int = 0
    finished_first: int = 0  # background responses that had ended before their cancel; recorded as they ended
    still_running: int = 0  # the API still reports them running; the next poll records how they end
    cancel_failures: list[str] = field(default_factory=list)  # "response id: why", one per refused cancel
    doomed: DoomedJobError | None = None  # a bad key or base URL: no background response was cancelled
    batches_cancelled: int = 0  # open batches of the batch lane asked to cancel (`runner run` merges them)
    batch_requests: int = 0  # their requests not merged yet: in progress until `runner run` merges or cancels them

    @property
    def cancelled(self) -> int:
        return self.cancelled_queued + self.cancelled_in_flight


def _settings_read() -> Settings:
    """Settings from the environment; a bad variable is one line naming it, not a traceback."""
    try:
        return Settings()
    except ValidationError as e:
        first = e.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        raise ConfigError(f"invalid {env_name(name) or name or 'settings'}: {first['msg']}") from None


def _settings(settings: Settings | None, db: str | None) -> Settings:
    s = settings or _settings_read()
    if db is not None:
        s = s.model_copy(update={"db": db})
    # A store in memory: a submit said 'queued' and printed a job id, and the job was gone at exit.
    refuse_in_memory(s.db)
    return s


def _check_key(s: Settings) -> None:
    """The key and the base URL, as the client will use them: what it would refuse, refused before any
    line says that work starts."""
    key = s.api_key.get_secret_value() if s.api_key is not None else ""
    problem = key_problem(key)
    if problem is not None:
        raise ConfigError(problem)
    has_key = bool(key)
    problem = base_url_problem(s.base_url, key_in_authorization=has_key and s.auth_style is not AuthStyle.API_KEY)
    if problem is not None:
        raise ConfigError(problem)
    if has_key:
        return
    # An empty OPENAI_API_KEY= sends no header either: it is as good as none.
    if s.auth_style is AuthStyle.API_KEY:
        # Only Azure takes its key in an `api-key` header, and Azure always wants one: every request went out
        # without any auth header, to be answered 401.
        raise ConfigError("--auth-style api-key needs a key: OPENAI_API_KEY is not set (or pass --api-key)")
    if _is_openai(s.base_url):
        raise ConfigError("OPENAI_API_KEY is not set (or pass --api-key)")


def _is_openai(base_url: str) -> bool:
    """Whether `base_url` is OpenAI's API, however its host is spelled: `https://API.OpenAI.com/v1`, a trailing
    dot or `:443` passed for another server, and every request went out without a key, to be answered 401."""
    try:
        host = urlsplit(base_url).hostname  # lower case
    except ValueError:
        return False  # the client names what is wrong with the URL
    if host is None:
        return False
    host = host.rstrip(".")
    openai = urlsplit(DEFAULT_BASE_URL).hostname or ""
    # OpenAI's regional hosts (`eu.api.openai.com`, data residency) want the key as much as the main one.
    return host == openai or host.endswith("." + openai)


def _client(s: Settings, transport: httpx.AsyncBaseTransport | None, connections: int) -> ApiClient:
    from runner.client import ApiClient  # the HTTP stack loads only for commands that talk to the API

    _check_key(s)
    return ApiClient(
        s.base_url,
        s.api_key,
        auth_style=s.auth_style,
        timeout=s.timeout,
        max_connections=connections,
        transport=transport,
    )


@asynccontextmanager
async def _queueing_store(db: str) -> AsyncIterator[Store]:
    """The store for a command that queues work, created if missing. A store this call created is removed
    again when the command fails (bad input, an interrupt) and nothing else has used it meanwhile: a failed
    submit changes nothing, not even by leaving an empty store behind. A new store is announced once the
    command succeeded."""
    refuse_in_memory(db)  # a spec's store comes here without _settings
    store = await Store.open(db, "create")
    ok = discard = False
    try:
        async with store:
            try:
                yield store
            except BaseException:
                if store.created:
                    with anyio.CancelScope(shield=True):
                        discard = await store.holds_nothing()
                raise
        ok = True
    finally:
        if store.created and store.path is not None:
            if ok:
                place_log.info("created store %s", store.path)
            elif discard:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(f"{store.path}{suffix}").unlink(missing_ok=True)


async def submit(
    path: str | Path,
    *,
    name: str | None = None,
    background: bool = False,
    model: str | None = None,
    lenient: bool = False,
    new: bool = False,
    db: str | None = None,
    on_warning: Callable[[LineProblem], None] | None = None,
    reuse: bool = False,
    reuse_max_age: float | None = None,
    cache_keys: bool = True,
) -> SubmitResult:
    """Queue a JSONL file as a job (all lines or none); the same file and options again give the same job.

    `reuse` completes every line whose question was answered before in the store (see runner/reuse.py)
    from that answer, at once; `reuse_max_age` (seconds) limits how old such an answer may be.
    `cache_keys` groups lines that share a long prompt prefix (runner/cachekeys.py): a `prompt_cache_key`
    per group for lines without their own, and a claim order that sends a group's lines together.
    """
    warn = None if on_warning is None else (lambda _source, p: on_warning(p))
    (result,) = await submit_many(
        [str(path)],
        name=name,
        background=background,
        model=model,
        lenient=lenient,
        new=new,
        db=db,
        on_warning=warn,
        reuse=reuse,
        reuse_max_age=reuse_max_age,
        cache_keys=cache_keys,
    )
    return result


async def submit_many(
    paths: Sequence[str],
    *,
    name: str | None = None,
    background: bool = False,
    model: str | None = None,
    lenient: bool = False,
    new: bool = False,
    db: str | None = None,
    on_warning: Callable[[str, LineProblem], None] | None = None,
    reuse: bool = False,
    reuse_max_age: float | None = None,
    cache_keys: bool = True,
) -> list[SubmitResult]:
    """Queue each file as its own job: all of them, or none if any file is invalid.

    "-" is standard input (once); gzip files are read compressed. Results come in the order of `paths`.
    """
    from runner.ingest import STDIN, STDIN_SHOWN, SubmitOptions, spool_stdin, submit_files

    if sum(p == STDIN for p in paths) > 1:
        raise ConfigError("standard input ('-') can be given only once")
    s = _settings(None, db)
    spooled = await anyio.to_thread.run_sync(spool_stdin) if STDIN in paths else None
    try:
        files = [spooled if p == STDIN and spooled is not None else Path(p) for p in paths]
        sources = [STDIN_SHOWN if p == STDIN else p for p in paths]
        options = SubmitOptions(
            background=background,
            model=model,
            lenient=lenient,
            reuse=reuse,
            reuse_max_age=reuse_max_age,
            cache_keys=cache_keys,
        )
        async with _queueing_store(s.db) as store:
            return await submit_files(
                store, files, name=name, options=options, new=new, on_warning=on_warning, sources=sources
            )
    finally:
        if spooled is not None:
            spooled.unlink(missing_ok=True)


def refused_output(e: OSError) -> ConfigError | None:
    """The one line for an output the file system would not take (a full disk, a quota, a size limit), when
    the error names it: every output's writer does, stdout's too (`files.WholeWriter`). A full stdout read
    `OSError: [Errno 28] No space left on device`, exit 1 ("some requests failed"), naming nothing."""
    from runner.files import refused_write

    return None if e.filename is None else refused_write(e, str(e.filename))


def convert(path: str, out: str | None = None, *, drop_unsupported: bool = False) -> ConvertCounts:
    """Rewrite a Chat Completions JSONL file as Responses lines, to `out` (stdout when None); all or nothing.

    "-" reads standard input. InputError names every line that cannot be converted; nothing is written then.
    ConfigError when `out` is the job store (RUNNER_DB) or the file system will not take the output.
    """
    from runner.convert import NOTHING_WRITTEN, convert_file
    from runner.files import atomic_writer, refuse_store_file
    from runner.ingest import STDIN, STDIN_SHOWN, spool_stdin

    if out is not None:
        # `-o runner.db` (tab completion, or "$RUNNER_DB"): the store was replaced by one converted line.
        refuse_store_file(Path(out), store_file(_settings_read().db))
    spooled = spool_stdin() if path == STDIN else None
    src = spooled or Path(path)
    shown = STDIN_SHOWN if path == STDIN else path
    try:
        if not src.exists() or src.is_dir():  # a pipe or device is read as it comes (once)
            what = "is a directory, not a file" if src.is_dir() else "no such file"
            raise InputError(shown, [LineProblem(0, "", what)], bad_lines=0, consequence=NOTHING_WRITTEN)
        if out is not None:
            with atomic_writer(Path(out)) as f:
                return convert_file(src, f, shown=shown, drop_unsupported=drop_unsupported)
        # Standard output cannot be taken back: convert into a temporary file, then copy it out whole.
        with tempfile.TemporaryFile() as tmp:
            counts = convert_file(src, tmp, shown=shown, drop_unsupported=drop_unsupported)
            tmp.seek(0)
            shutil.copyfileobj(tmp, sys.stdout.buffer, 1 << 20)
            sys.stdout.buffer.flush()
            return counts
    except OSError as e:
        refused = refused_output(e)  # the output's own failure, not the temporary file's or the input's
        if refused is None:
            raise
        raise refused from None
    finally:
        if spooled is not None:
            spooled.unlink(missing_ok=True)


async def run(
    job_ids: Sequence[str] | None = None,
    settings: Settings | None = None,
    *,
    db: str | None = None,
    on_progress: Callable[[Snapshot], None] | None = None,
    handle_signals: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    detach: bool = False,
    prices: str | Path | None = None,
) -> RunOutcome:
    """Run jobs (default: every unfinished one) until each request is final, or a stop.

    On the batch lane, `detach` returns once every queued request is in a created batch (their ids committed).
    Whatever the lane, batches an earlier batch run left open are collected first.
    With `settings.max_cost`, no request starts that would take the jobs' cost past it (priced from the
    table shipped with runner, or `prices`): the run then stops with StopReason.BUDGET.
    """
    from runner.limits import budget_id

    s = _settings(settings, db)
    # A run's clock is the fleet's: corrected to the database's when this machine's is far off.
    async with await Store.open(s.db, "existing", clock=FleetClock()) as store:
        # `runner run J J`: each job once (twice, its summary was printed twice and its ids claimed twice over).
        ids = list(dict.fromkeys(job_ids)) if job_ids else await store.unfinished_job_ids()
        for jid in ids:
            await store.get_job(jid)  # JobNotFound before any work starts
        if not ids:
            return RunOutcome(RunResult(StopReason.DONE))
        if s.lane is Lane.FLEX and "timeout" not in s.model_fields_set:
            s = s.model_copy(update={"timeout": FLEX_TIMEOUT})  # flex answers slowly: OpenAI advises 15 minutes
        options = RunOptions(
            concurrency=s.concurrency,
            max_attempts=s.max_attempts,
            lease_seconds=s.lease_seconds,
            grace=s.grace,
            rpm=s.rpm,
            tpm=s.tpm,
            repair=s.repair,
            flex=s.lane is Lane.FLEX,
            flex_fallback=s.flex_fallback,
            rate_budget=budget_id(s.base_url, s.api_key.get_secret_value() if s.api_key is not None else None),
            poll_patience=s.timeout,  # as long as one attempt may take: a GET outage shorter than that is waited out
        )
        if s.processes > 1:
            return await _run_processes(store, ids, s, options, transport, on_progress, handle_signals)
        budget = None
        if s.max_cost is not None:
            budget = await _budget(store, ids, s.max_cost, _price_table(prices, s))
        async with _client(s, transport, s.concurrency + options.poll_slots) as client:
            from runner.store.batches import open_batches
            from runner.worker.pool import Run

            workers: list[Run | BatchLane] = []
            if s.lane is Lane.BATCH or await open_batches(store, ids):
                # Imported only here: the batch lane and the price table are ~20 ms of a run's start-up.
                from runner.lanes.batch import BatchLane

                workers.append(
                    BatchLane(
                        store,
                        client,
                        ids,
                        max_lines=s.batch_max_lines,
                        max_attempts=s.max_attempts,
                        detach=detach,
                        pack=s.lane is Lane.BATCH,
                        on_progress=on_progress,
                        budget=budget if s.lane is Lane.BATCH else None,
                    )
                )
            if s.lane is not Lane.BATCH:
                workers.append(Run(store, client, ids, options, on_progress=on_progress, budget=budget))
            caught: list[int] = []
            result: RunResult | StoreUnavailable = RunResult(StopReason.DONE)
            for worker in workers:
                if worker is not workers[0] and isinstance(worker, Run) and s.max_cost is not None:
                    # What the batches collected first cost counts against the budget too.
                    worker.budget = await _budget(store, ids, s.max_cost, _price_table(prices, s))
                before = result
                result = await _drive(worker, caught, handle_signals)
                if isinstance(result, StoreUnavailable):
                    break
                if worker is not workers[0] and isinstance(before, RunResult):
                    _carry(before, result)  # the figures of "this run" cover both workers
                if result.reason is not StopReason.DONE:
                    break
        if isinstance(result, StoreUnavailable):
            raise result
        stats = [await store.job_stats(j) for j in ids]
        return RunOutcome(result, stats, caught[0] if caught else None)


def _price_table(prices: str | Path | None, s: Settings) -> PriceTable:
    """The prices `--max-cost` counts with: `prices`, the settings' file, or the table shipped with runner."""
    from runner.prices import load_prices

    return load_prices(_prices_file(prices, s))


def _refuse_processes(s: Settings) -> None:
    """ConfigError for settings several worker processes cannot keep (checked before anything is queued)."""
    n = s.processes
    if n == 1:
        return
    if s.lane is Lane.BATCH:
        raise ConfigError(f"--processes {n} is for the sync and flex lanes; the batch lane runs in one process")
    if s.max_cost is not None:
        raise ConfigError(f"--max-cost needs --processes 1 (got {n}): the spending budget is kept in one process")
    if s.concurrency < n:
        raise ConfigError(
            f"--processes {n} needs --concurrency {n} or more (got {s.concurrency}): each process sends at least one"
        )


async def _refuse_open_batches(store: Store, ids: Sequence[str], n: int) -> None:
    from runner.store.batches import open_batches

    if await open_batches(store, ids):
        raise ConfigError(
            f"--processes {n}: these jobs have batches open from a batch-lane run; collect them first with"
            " `runner run` in one process"
        )


async def refuse_run(job_ids: Sequence[str], settings: Settings) -> None:
    """ConfigError for a run `run` would refuse, checked before the caller says which jobs start: a refusal
    came after "resuming J ..." lines, which told a user that work had started."""
    s = _settings(settings, None)
    _refuse_processes(s)
    _check_key(s)
    if s.processes > 1 and job_ids:
        async with await Store.open(s.db, "existing") as store:
            await _refuse_open_batches(store, job_ids, s.processes)


async def _run_processes(
    store: Store,
    ids: list[str],
    s: Settings,
    options: RunOptions,
    transport: httpx.AsyncBaseTransport | None,
    on_progress: Callable[[Snapshot], None] | None,
    handle_signals: bool,
) -> RunOutcome:
    """`run` in `s.processes` worker processes, this one the first (runner/processes.py); what one process
    cannot share is refused."""
    from runner.processes import supervise
    from runner.worker.pool import Run

    n = s.processes
    _refuse_processes(s)
    await _refuse_open_batches(store, ids, n)
    _check_key(s)
    counts, _ = await store.progress(ids)
    if count(counts, *ACTIVE) == 0:  # nothing to send or poll: no process to start
        return RunOutcome(RunResult(StopReason.DONE), [await store.job_stats(j) for j in ids])
    caught: list[int] = []

    async def hand_back(pid: int) -> None:
        """A worker process died: its requests go back to the queue and its runner row goes, now, not at expiry."""
        await store.reclaim_expired(ids, owner_is_dead)
        for r in (await fleet_view(store)).runners:
            if r.pid == pid and r.host == host_id():
                await unregister(store, r.id)

    final = sum(v for k, v in counts.items() if k not in ACTIVE)
    before = Snapshot(total=sum(counts.values()), done=final, done_before=final, max_concurrency=s.concurrency)
    async with _client(s, transport, s.concurrency + options.poll_slots) as client:
        # Over the whole concurrency until the other processes are up: each takes its share as it comes.
        own = Run(store, client, ids, options, on_progress=lambda _: None)  # reports refresh its figures
        fleet = await supervise(
            ids,
            s,
            own=own,
            on_progress=on_progress,
            caught=caught if handle_signals else None,
            on_death=hand_back,
            before=before,
        )
    stats = [await store.job_stats(j) for j in ids]
    left = sum(count(st.counts, *ACTIVE) for st in stats)
    if fleet.result.reason is StopReason.INTERRUPTED and not caught and not left:
        fleet.result.reason = StopReason.DONE  # one worker was signalled by someone, the others finished the job
    if fleet.died and left and fleet.result.reason is StopReason.DONE:
        fleet.result.problems.extend(fleet.died)
        fleet.result.problems.append(f"{left:,} requests left unfinished; `runner run` resumes them")
    return RunOutcome(fleet.result, stats, caught[0] if caught else None, processes=fleet.finished)


def _carry(first: RunResult, then: RunResult) -> None:
    """Add what the first worker of a run (collecting open batches) did to the figures of the one after it."""
    a, b = first.snapshot, then.snapshot
    for name in ("completed", "incomplete", "failed", "cancelled", "retries", "rate_limited", "tokens"):
        setattr(b, name, getattr(a, name) + getattr(b, name))
    b.done_before, b.started = a.done_before, a.started
    then.problems[:0] = first.problems


async def _drive(worker: Run | BatchLane, caught: list[int], handle_signals: bool) -> RunResult | StoreUnavailable:
    """Run one worker to its end, passing SIGINT/SIGTERM/SIGHUP on to it."""
    async with anyio.create_task_group() as tg:
        if handle_signals:
            tg.start_soon(_watch_signals, worker, caught)
        try:
            result: RunResult | StoreUnavailable = await worker.execute()
        except StoreUnavailable as e:  # returned: through the task group it would come out wrapped
            result = e
        tg.cancel_scope.cancel()
    return result


async def _budget(store: Store, job_ids: Sequence[str], limit: float, prices: PriceTable) -> Budget:
    """A budget over what the jobs have cost so far, with the store's recent answers as output history."""
    from runner.budget import Budget
    from runner.estimate import OutputHistory

    spent = 0.0
    for jid in job_ids:
        # Priced per lane, as the report prices them: the Batch API and the flex tier pay the Batch rate.
        for m in await usage_by_model_and_lane(store, jid):
            spent += (prices.cost(m.model, m.usage) or 0.0) * prices.lane_factor(m.lane)
    history = OutputHistory.from_bodies(await completed_outputs(store))
    return Budget(limit, prices, spent=spent, history=history)


async def estimate(
    target: str,
    *,
    lane: Lane | str | None = None,
    reuse: bool = False,
    reuse_max_age: float | None = None,
    model: str | None = None,
    db: str | None = None,
    prices: str | Path | None = None,
) -> Estimate:
    """The tokens and cost range of a JSONL file, or of what a job still has to send (see runner/estimate.py).

    `target` is a job id when it looks like one (`job_...`) and no file has that name, else a file ("-" is
    standard input). The store,
    when there is one, gives the typical output of each model and, with `reuse`, the lines it already
    answered; a file is estimated without a store too. Nothing is written.
    """
    from runner.estimate import estimate_file, estimate_job
    from runner.ingest import STDIN, STDIN_SHOWN, spool_stdin

    s = _settings(None, db)
    lane = s.lane if lane is None else Lane(lane)  # the flag's text, else RUNNER_LANE
    table = _price_table(prices, s)
    newer_than = None if reuse_max_age is None else time.time() - reuse_max_age
    if target.startswith("job_") and not Path(target).exists():
        if reuse:
            raise ConfigError("--reuse is decided at submit: estimate the FILE, not a job")
        async with await Store.open(s.db, "existing") as store:
            return await estimate_job(store, target, table, lane=lane)
    spooled = await anyio.to_thread.run_sync(spool_stdin) if target == STDIN else None
    path, shown = (spooled, STDIN_SHOWN) if spooled is not None else (Path(target), target)
    try:
        try:
            store = await Store.open(s.db, "existing")
        except StoreMissing:  # no store yet: no history and nothing to reuse, still an estimate
            return await estimate_file(path, shown, None, table, lane=lane, model=model, reuse=reuse)
        async with store:
            return await estimate_file(
                path, shown, store, table, lane=lane, model=model, reuse=reuse, newer_than=newer_than
            )
    finally:
        if spooled is not None:
            spooled.unlink(missing_ok=True)


async def _watch_signals(worker: Run | BatchLane, caught: list[int]) -> None:
    """First SIGINT/SIGTERM/SIGHUP: stop claiming and drain within the grace period; a second: stop now."""
    if caught:  # a signal came during an earlier worker of this run: this one stops at once
        worker.stop()
    repeats = Repeats()
    with anyio.open_signal_receiver(*stop_signals()) as signals:
        async for sig in signals:
            if not repeats.counts(int(sig)):
                continue
            caught.append(int(sig))
            on_signal(sig)
            if len(caught) == 1:
                worker.stop()
            else:
                worker.abort()


async def status(job_id: str, *, db: str | None = None) -> JobStats:
    """Counts, attempts, usage and leases of one job."""
    s = _settings(None, db)
    async with await Store.open(s.db, "existing") as store:
        return await store.job_stats(job_id)


async def status_report(job_id: str, *, db: str | None = None) -> JobStatusReport:
    """What `runner status` shows of one job: its figures, its open batches, how many of its lines were reused
    at submit, and the store's live runners and stale leases."""
    from runner.store.batches import open_batches

    s = _settings(None, db)
    async with await Store.open(s.db, "existing") as store:
        stats = await store.job_stats(job_id)
        return JobStatusReport(
            stats,
            open_batches=await open_batches(store, [job_id]),
            reused=await reused_count(store, job_id),
            fleet=await fleet_view(store, owner_is_dead),
        )


async def jobs(*, db: str | None = None, settings: Settings | None = None) -> list[JobStats]:
    """Every job with its figures, oldest first (`settings`: a run's own, flags over the environment)."""
    s = _settings(settings, db)
    async with await Store.open(s.db, "existing") as store:
        return [await store.job_stats(j.id) for j in await store.list_jobs()]


async def export(
    job_id: str,
    out: str | None = None,
    *,
    errors: str | None = None,
    fmt: str = "batch",
    db: str | None = None,
) -> ExportCounts:
    """Write a job's finished requests (stdout when `out` is None) as `fmt`: batch, jsonl-flat, csv or parquet."""
    from runner.export import export_job

    s = _settings(None, db)
    async with await Store.open(s.db, "existing") as store:
        return await export_job(store, job_id, out, errors, fmt)


async def results(job_id: str, *, db: str | None = None) -> AsyncGenerator[ResultRow, None]:
    """Every line of a job joined with its answer, in input order, streamed: `async for row in results(job)`.

    Lines not finished yet come too, with status queued or in_progress. The store stays open (one read
    snapshot) until the loop ends; wrap the call in `contextlib.aclosing` to close it at once on `break`.
    """
    from runner.export import iter_results

    s = _settings(None, db)
    # aclosing: a loop left early closes the inner stream (and its connection) before the store is disposed.
    async with await Store.open(s.db, "existing") as store, aclosing(iter_results(store, job_id)) as rows:
        async for row in rows:
            yield row


async def show(job_id: str, custom_id: str, *, db: str | None = None) -> RequestDetail:
    """One request: its body as sent, every recorded attempt, and its final answer or error."""
    s = _settings(None, db)
    async with await Store.open(s.db, "existing") as store:
        return await store.request_detail(job_id, custom_id)


@dataclass
class DoctorReport:
    """What `doctor` found, and what it fixed."""

    integrity: str
    health: dict[str, int]
    fixed: dict[str, int] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        h = self.health
        problems = ("stale_leases_unsent", "stale_leases_background", "unowned_unsent", "staging_jobs")
        return self.integrity == "ok" and not any(h.get(k, 0) for k in problems)


async def doctor(*, fix: bool = False, db: str | None = None) -> DoctorReport:
    """Check the store: SQLite integrity, leases of dead runners, stuck rows, abandoned submits; `fix` also gives
    the space of deleted rows back to the file system."""
    s = _settings(None, db)
    async with await Store.open(s.db, "existing") as store:
        report = DoctorReport(await store.integrity_check(), await store.health(owner_is_dead))
        if fix:
            ids = await store.all_job_ids()
            report.fixed["requeued"] = await store.reclaim_expired(ids, owner_is_dead) if ids else 0
            report.fixed["requeued"] += await store.repair_unowned()
            report.fixed["dropped_staging_jobs"] = len(await store.drop_abandoned_staging(owner_is_dead))
            # What a `delete` stopped half way left (its jobs are gone, their space not yet given back).
            before = store.file_size()
            await store.reclaim_space()
            report.fixed["bytes_given_back"] = max(before - store.file_size(), 0)
        return report


async def report(
    job_id: str, *, db: str | None = None, prices: str | Path | None = None, html: str | Path | None = None
) -> Report:
    """Counts, usage, cost, latency percentiles, errors by code and the slowest requests of a job.

    Prices come from the table shipped with runner, overridden by `prices` (or RUNNER_PRICES), a TOML file.
    With `html`, the report is also written there as one self-contained HTML page with charts.
    """
    from runner.htmlreport import write_html
    from runner.report import build_report

    s = _settings(None, db)
    table = _price_table(prices, s)
    async with await Store.open(s.db, "existing") as store:
        if html is not None:
            return await write_html(store, job_id, table, html)
        return await build_report(store, job_id, table)


def _prices_file(prices: str | Path | None, s: Settings) -> Path | None:
    """The price table to read: `prices` (the flag) over the setting (RUNNER_PRICES); None for the shipped one."""
    chosen = prices if prices is not None else s.prices
    return Path(chosen) if chosen else None


@dataclass
class SpecJob:
    """One job of a spec run and where its outputs went."""

    job_id: str
    input: Path
    results: Path | None = None
    errors: Path | None = None
    report_file: Path | None = None
    report_html: Path | None = None
    report: Report | None = None


@dataclass
class SpecOutcome:
    """What `run_spec` did."""

    spec: JobSpec
    jobs: list[SpecJob]
    run: RunOutcome
    day: dt.date  # the day the jobs belong to ({date} in the outputs): today, or the day before (carried over)
    carried_over: bool = False  # the day before's unfinished jobs were resumed, not today's started

    @property
    def failed(self) -> int:
        return sum(j.report.failed for j in self.jobs if j.report is not None)

    @property
    def total(self) -> int:
        return sum(j.report.total for j in self.jobs if j.report is not None)

    @property
    def over_threshold(self) -> bool:
        """More requests failed than the spec's policy allows."""
        return self.spec.policy.exceeded(self.failed, self.total)


async def run_spec(
    spec_path: str | Path,
    *,
    overrides: dict[str, Any] | None = None,
    db: str | None = None,
    on_progress: Callable[[Snapshot], None] | None = None,
    handle_signals: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    today: dt.date | None = None,
    prices: str | Path | None = None,
) -> SpecOutcome:
    """Submit (idempotently: the same spec on the same day is the same job), run, export and report a spec.

    Limits come from the spec unless `overrides` (explicit flags, as Settings fields) say otherwise.
    """
    from runner.ingest import SubmitOptions, submit_files
    from runner.spec import load_spec

    spec = load_spec(Path(spec_path))
    date = today or dt.date.today()
    lane = {"lane": spec.job.lane} if spec.job.lane is not None else {}
    base = {**spec.limits.settings_update(), **lane, **(overrides or {})}
    if db is not None:
        base["db"] = db
    try:
        s = Settings(**base)
    except ValidationError as e:
        raise ConfigError(f"{spec.path}: invalid settings: {e.errors()[0]['msg']}") from None
    _refuse_processes(s)  # before the job is queued: a refused spec run changes nothing
    _check_key(s)  # likewise: it created the store and queued the job, then refused
    if "db" not in s.model_fields_set:  # neither --db nor RUNNER_DB: the spec's store, wherever we run from
        s = s.model_copy(update={"db": spec.store_db})
    files = spec.input_files()

    # The tables are applied line by line as the input is read (no copy of the file is kept); their hash
    # joins the fingerprint, so the same input with changed tables is another job.
    def options(day: dt.date) -> SubmitOptions:
        return SubmitOptions(
            background=spec.job.background,
            lenient=spec.job.lenient,
            tag=f"{spec.name}@{day}#{spec.tables_digest()[:16]}",
            reuse=spec.job.reuse,
            cache_keys=spec.job.cache_keys,
            transform=spec.apply_line,
        )

    for src in files:
        # Before anything is queued or paid for; the job id is not known yet, and a path named by it is new.
        spec.check_outputs(job_id="job_id", date=date, source=src, store_file=store_file(s.db))
    # Every file of a glob in one submit: each is validated before any is published, so one bad file queues
    # none (file by file, the good files before it were queued though the run was refused).
    async with _queueing_store(s.db) as store:
        yesterday = date - dt.timedelta(days=1)
        carried = await _unfinished_day_before(store, files, options(date), options(yesterday))
        if carried:
            date = yesterday
        submitted = await submit_files(store, files, name=spec.name, options=options(date))
    jobs = [SpecJob(res.job_id, src) for res, src in zip(submitted, files, strict=True)]
    outcome = await run(
        [j.job_id for j in jobs],
        s,
        on_progress=on_progress,
        handle_signals=handle_signals,
        transport=transport,
        prices=prices,
    )
    table = _price_table(prices, s)
    try:
        await _write_spec_outputs(spec, jobs, s.db, date, table)
    except ConfigError as e:  # a path that was writable at the start is not any more (checked before sending)
        raise ConfigError(
            f"{e}; every answer is saved in the store: fix it and run {spec.path} again to write the outputs"
            " (nothing is sent again)"
        ) from None
    return SpecOutcome(spec, jobs, outcome, day=date, carried_over=carried)


async def _write_spec_outputs(spec: JobSpec, jobs: list[SpecJob], db: str, date: dt.date, table: PriceTable) -> None:
    """Export each job of a spec run and write its reports where the spec says."""
    from runner.export import export_job
    from runner.files import atomic_writer
    from runner.htmlreport import write_html
    from runner.report import build_report

    async with await Store.open(db, "existing") as store:
        for j in jobs:
            j.results = spec.output_path("results", job_id=j.job_id, date=date, source=j.input)
            j.errors = spec.output_path("errors", job_id=j.job_id, date=date, source=j.input)
            j.report_file = spec.output_path("report", job_id=j.job_id, date=date, source=j.input)
            if j.results is not None:
                await export_job(
                    store, j.job_id, str(j.results), str(j.errors) if j.errors else None, spec.output.format
                )
            j.report = await build_report(store, j.job_id, table)
            j.report_html = spec.output_path("report_html", job_id=j.job_id, date=date, source=j.input)
            if j.report_html is not None:
                await write_html(store, j.job_id, table, j.report_html)
            if j.report_file is not None:
                # Whole or not at all: a kill while writing left half a JSON document where the last one was.
                with atomic_writer(j.report_file) as f:
                    f.write((json.dumps(j.report.to_json(), indent=2) + "\n").encode())


# A spec's job of the day before is resumed by a run this soon after it was submitted: a nightly run that
# crossed midnight and was killed, then started again, would otherwise buy every answer again as a new day's
# job. Tomorrow night's run (24 h on) starts its own day, whatever is left of tonight's.
CARRY_OVER_SECONDS = 24 * 3600.0


async def _unfinished_day_before(
    store: Store, files: Sequence[Path], today: SubmitOptions, yesterday: SubmitOptions
) -> bool:
    """Whether a spec run should resume the day before's jobs instead of starting today's: today has none of
    them yet, the day before has every one (same input, same tables), submitted less than CARRY_OVER_SECONDS
    ago, and at least one of them is unfinished and not cancelled."""
    from runner.ingest import file_sha256

    try:
        hashes = [await anyio.to_thread.run_sync(file_sha256, f) for f in files]
    except OSError:
        return False  # the submit names what cannot be read
    for h in hashes:
        if await store.find_job_by_fingerprint(today.fingerprint(h)) is not None:
            return False
    before: list[str] = []
    for h in hashes:
        job_id = await store.find_job_by_fingerprint(yesterday.fingerprint(h))
        if job_id is None:
            return False
        before.append(job_id)
    unfinished = False
    for job_id in before:
        job = await store.get_job(job_id)
        if time.time() - job.created_at >= CARRY_OVER_SECONDS:
            return False
        counts, _ = await store.progress([job_id])
        unfinished = unfinished or (job.cancelled_at is None and count(counts, *ACTIVE) > 0)
    return unfinished


@dataclass
class DeleteResult:
    """What `delete` did: the jobs chosen, whether they went, and the store's size before and after."""

    jobs: list[JobRow]
    deleted: bool
    requests: int = 0
    size_before: int = 0
    size_after: int = 0


async def delete(
    job_ids: Sequence[str] = (),
    *,
    older_than: float | None = None,
    confirm: Callable[[list[JobRow]], bool] | None = None,
    db: str | None = None,
) -> DeleteResult:
    """Delete jobs (`job_ids`, or those created more than `older_than` seconds ago) and reclaim their space.

    `confirm` sees the chosen jobs first and may say no. A job a live runner is working on raises JobBusy
    and nothing is deleted; so does an unknown id (JobNotFound).
    """
    if bool(job_ids) == (older_than is not None):
        raise ConfigError("give job ids or --older-than, not both or neither")
    s = _settings(None, db)
    async with await Store.open(s.db, "existing") as store:
        if older_than is not None:
            chosen = await store.jobs_created_before(time.time() - older_than)
        else:
            chosen = [await store.get_job(j) for j in dict.fromkeys(job_ids)]
        if not chosen or (confirm is not None and not confirm(chosen)):
            return DeleteResult(chosen, deleted=False)
        before = store.file_size()
        ids = [j.id for j in chosen]
        try:
            n = await store.delete_jobs(ids, owner_is_dead)
            await store.reclaim_space()
        except anyio.get_cancelled_exc_class():
            # Ctrl-C or SIGTERM: alone, `runner: interrupted` read as if nothing was deleted, though the delete
            # may have committed (giving the space back takes seconds more); a second `delete` then said the
            # jobs did not exist, and their space stayed taken. Say which it was, and how to finish.
            with anyio.CancelScope(shield=True):
                deleted = not set(ids) & set(await store.all_job_ids())
            if deleted:
                log.warning(
                    "deleted %d job(s) before the interrupt; their space may not be given back yet:"
                    " `runner doctor --fix` gives it back",
                    len(ids),
                )
            raise
        return DeleteResult(chosen, True, n, before, store.file_size())


async def retry(job_id: str, *, db: str | None = None) -> int:
    """Put a job's failed requests back in the queue with fresh attempts; returns how many."""
    s = _settings(None, db)
    async with await Store.open(s.db, "existing") as store:
        return await store.retry_job(job_id)


async def cancel(
    job_id: str,
    settings: Settings | None = None,
    *,
    db: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> CancelResult:
    """Cancel a job: queued requests at once, running background responses through the API, many at once."""
    from runner.store.batches import open_batches

    s = _settings(settings, db)
    async with await Store.open(s.db, "existing") as store:
        queued, in_flight = await store.cancel_job(job_id)
        batches = await open_batches(store, [job_id])
        if not in_flight and not batches:
            return CancelResult(queued)
        from runner.lanes.batch import cancel_batches
        from runner.worker.cancel import CANCEL_CONCURRENCY, cancel_background

        async with _client(s, transport, CANCEL_CONCURRENCY) as client:
            n_batches, n_waiting, batch_failures = (
                await cancel_batches(store, client, job_id) if batches else (0, 0, [])
            )
            if not in_flight:
                return CancelResult(
                    queued, cancel_failures=batch_failures, batches_cancelled=n_batches, batch_requests=n_waiting
                )
            t = await cancel_background(store, client, in_flight)
        return CancelResult(
            queued,
            t.cancelled,
            t.finished_first,
            t.still_running,
            [*t.failures, *batch_failures],
            t.doomed,
            n_batches,
            n_waiting,
        )
