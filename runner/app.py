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
import json
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import ValidationError

from runner.config import DEFAULT_BASE_URL, Settings, env_name
from runner.convert import NOTHING_WRITTEN, ConvertCounts, convert_file
from runner.errors import ConfigError, DoomedJobError, InputError, LineProblem, StoreUnavailable
from runner.export import FORMATS, ExportCounts, ResultRow, export_job, iter_results
from runner.files import atomic_writer
from runner.ingest import STDIN, STDIN_SHOWN, SubmitOptions, SubmitResult, spool_stdin, submit_file, submit_files
from runner.owners import owner_is_dead
from runner.prices import load_prices
from runner.report import Report, build_report
from runner.spec import JobSpec, load_spec
from runner.states import RequestState, count
from runner.status import JobStatusReport, job_state
from runner.store import JobRow, JobStats, RequestDetail, Store, place_log
from runner.store.fleet import FleetClock, fleet_view
from runner.worker.types import RunOptions, RunResult, Snapshot, StopReason, default_poll_slots

if TYPE_CHECKING:
    import httpx

    from runner.client import ApiClient
    from runner.worker.pool import Run

# FORMATS, JobRow, JobStats, JobStatusReport, StopReason and job_state are re-exported for the CLI,
# which imports app only.
__all__ = [
    "FORMATS",
    "CancelResult",
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
    "export",
    "job_state",
    "jobs",
    "report",
    "results",
    "retry",
    "run",
    "run_spec",
    "show",
    "status",
    "submit",
]


@dataclass
class RunOutcome:
    """How `run` ended, with each job's figures afterwards."""

    result: RunResult
    stats: list[JobStats] = field(default_factory=list)
    signal: int | None = None  # the signal that interrupted the run, if one did

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

    @property
    def cancelled(self) -> int:
        return self.cancelled_queued + self.cancelled_in_flight


def _settings(settings: Settings | None, db: str | None) -> Settings:
    try:
        s = settings or Settings()
    except ValidationError as e:  # a bad environment variable: one line naming it, not a traceback
        first = e.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        raise ConfigError(f"invalid {env_name(name) or name or 'settings'}: {first['msg']}") from None
    if db is not None:
        s = s.model_copy(update={"db": db})
    return s


def _client(s: Settings, transport: httpx.AsyncBaseTransport | None, connections: int) -> ApiClient:
    from runner.client import ApiClient  # the HTTP stack loads only for commands that talk to the API

    if s.api_key is None and s.base_url.rstrip("/") == DEFAULT_BASE_URL:
        raise ConfigError("OPENAI_API_KEY is not set (or pass --api-key)")
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
) -> SubmitResult:
    """Queue a JSONL file as a job (all lines or none); the same file and options again give the same job."""
    warn = None if on_warning is None else (lambda _source, p: on_warning(p))
    (result,) = await submit_many(
        [str(path)], name=name, background=background, model=model, lenient=lenient, new=new, db=db, on_warning=warn
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
) -> list[SubmitResult]:
    """Queue each file as its own job: all of them, or none if any file is invalid.

    "-" is standard input (once); gzip files are read compressed. Results come in the order of `paths`.
    """
    if sum(p == STDIN for p in paths) > 1:
        raise ConfigError("standard input ('-') can be given only once")
    s = _settings(None, db)
    spooled = await anyio.to_thread.run_sync(spool_stdin) if STDIN in paths else None
    try:
        files = [spooled if p == STDIN and spooled is not None else Path(p) for p in paths]
        sources = [STDIN_SHOWN if p == STDIN else p for p in paths]
        options = SubmitOptions(background=background, model=model, lenient=lenient)
        async with _queueing_store(s.db) as store:
            return await submit_files(
                store, files, name=name, options=options, new=new, on_warning=on_warning, sources=sources
            )
    finally:
        if spooled is not None:
            spooled.unlink(missing_ok=True)


def convert(path: str, out: str | None = None, *, drop_unsupported: bool = False) -> ConvertCounts:
    """Rewrite a Chat Completions JSONL file as Responses lines, to `out` (stdout when None); all or nothing.

    "-" reads standard input. InputError names every line that cannot be converted; nothing is written then.
    """
    spooled = spool_stdin() if path == STDIN else None
    src = spooled or Path(path)
    shown = STDIN_SHOWN if path == STDIN else path
    try:
        if not src.is_file():
            raise InputError(shown, [LineProblem(0, "", "no such file")], bad_lines=0, consequence=NOTHING_WRITTEN)
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
) -> RunOutcome:
    """Run jobs (default: every unfinished one) until each request is final, or a stop."""
    from runner.limits import budget_id

    s = _settings(settings, db)
    # A run's clock is the fleet's: corrected to the database's when this machine's is far off.
    async with await Store.open(s.db, "existing", clock=FleetClock()) as store:
        ids = list(job_ids) if job_ids else await store.unfinished_job_ids()
        for jid in ids:
            await store.get_job(jid)  # JobNotFound before any work starts
        if not ids:
            return RunOutcome(RunResult(StopReason.DONE))
        options = RunOptions(
            concurrency=s.concurrency,
            max_attempts=s.max_attempts,
            lease_seconds=s.lease_seconds,
            grace=s.grace,
            rpm=s.rpm,
            tpm=s.tpm,
            budget=budget_id(s.base_url, s.api_key.get_secret_value() if s.api_key is not None else None),
        )
        async with _client(s, transport, s.concurrency + options.poll_slots) as client:
            from runner.worker.pool import Run

            worker = Run(store, client, ids, options, on_progress=on_progress)
            caught: list[int] = []
            async with anyio.create_task_group() as tg:
                if handle_signals:
                    tg.start_soon(_watch_signals, worker, caught)
                try:
                    result: RunResult | StoreUnavailable = await worker.execute()
                except StoreUnavailable as e:  # raised below: through the task group it would come out wrapped
                    result = e
                tg.cancel_scope.cancel()
        if isinstance(result, StoreUnavailable):
            raise result
        stats = [await store.job_stats(j) for j in ids]
        return RunOutcome(result, stats, caught[0] if caught else None)


async def _watch_signals(worker: Run, caught: list[int]) -> None:
    """First SIGINT/SIGTERM: stop claiming and drain within the grace period; a second: stop now."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for sig in signals:
            caught.append(int(sig))
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
    """What `runner status` shows: one job's figures, and the store's live runners and stale leases."""
    s = _settings(None, db)
    async with await Store.open(s.db, "existing") as store:
        return JobStatusReport(await store.job_stats(job_id), await fleet_view(store))


async def jobs(*, db: str | None = None) -> list[JobStats]:
    """Every job with its figures, oldest first."""
    s = _settings(None, db)
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
    s = _settings(None, db)
    async with await Store.open(s.db, "existing") as store:
        return await export_job(store, job_id, out, errors, fmt)


async def results(job_id: str, *, db: str | None = None) -> AsyncGenerator[ResultRow, None]:
    """Every line of a job joined with its answer, in input order, streamed: `async for row in results(job)`.

    Lines not finished yet come too, with status queued or in_progress. The store stays open (one read
    snapshot) until the loop ends; wrap the call in `contextlib.aclosing` to close it at once on `break`.
    """
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
    """Check the store: SQLite integrity, leases of dead runners, stuck rows, abandoned submits."""
    s = _settings(None, db)
    async with await Store.open(s.db, "existing") as store:
        report = DoctorReport(await store.integrity_check(), await store.health(owner_is_dead))
        if fix:
            ids = await store.all_job_ids()
            report.fixed["requeued"] = await store.reclaim_expired(ids, owner_is_dead) if ids else 0
            report.fixed["requeued"] += await store.repair_unowned()
            report.fixed["dropped_staging_jobs"] = len(await store.drop_abandoned_staging(owner_is_dead))
        return report


async def report(job_id: str, *, db: str | None = None, prices: str | Path | None = None) -> Report:
    """Counts, usage, cost, latency percentiles, errors by code and the slowest requests of a job.

    Prices come from the table shipped with runner, overridden by `prices` (or RUNNER_PRICES), a TOML file.
    """
    s = _settings(None, db)
    table = load_prices(_prices_file(prices, s))
    async with await Store.open(s.db, "existing") as store:
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
    report: Report | None = None


@dataclass
class SpecOutcome:
    """What `run_spec` did."""

    spec: JobSpec
    jobs: list[SpecJob]
    run: RunOutcome

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
    spec = load_spec(Path(spec_path))
    date = today or dt.date.today()
    base = {**spec.limits.settings_update(), **(overrides or {})}
    if db is not None:
        base["db"] = db
    try:
        s = Settings(**base)
    except ValidationError as e:
        raise ConfigError(f"{spec.path}: invalid settings: {e.errors()[0]['msg']}") from None
    if "db" not in s.model_fields_set:  # neither --db nor RUNNER_DB: the spec's store, wherever we run from
        s = s.model_copy(update={"db": str(spec.store_path)})
    files = spec.input_files()
    # The tables are applied line by line as the input is read (no copy of the file is kept); their hash
    # joins the fingerprint, so the same input with changed tables is another job.
    tag = f"{spec.name}@{date}#{spec.tables_digest()[:16]}"
    options = SubmitOptions(background=spec.job.background, lenient=spec.job.lenient, tag=tag)
    jobs: list[SpecJob] = []
    async with _queueing_store(s.db) as store:
        for src in files:
            name = spec.name if len(files) == 1 else f"{spec.name}-{src.stem}"
            res = await submit_file(store, src, name=name, options=options, transform=spec.apply_line)
            jobs.append(SpecJob(res.job_id, src))
    outcome = await run(
        [j.job_id for j in jobs], s, on_progress=on_progress, handle_signals=handle_signals, transport=transport
    )
    table = load_prices(_prices_file(prices, s))
    async with await Store.open(s.db, "existing") as store:
        for j in jobs:
            j.results = spec.output_path("results", job_id=j.job_id, date=date, source=j.input)
            j.errors = spec.output_path("errors", job_id=j.job_id, date=date, source=j.input)
            j.report_file = spec.output_path("report", job_id=j.job_id, date=date, source=j.input)
            if j.results is not None:
                await export_job(
                    store, j.job_id, str(j.results), str(j.errors) if j.errors else None, spec.output.format
                )
            j.report = await build_report(store, j.job_id, table)
            if j.report_file is not None:
                j.report_file.parent.mkdir(parents=True, exist_ok=True)
                j.report_file.write_text(json.dumps(j.report.to_json(), indent=2) + "\n")
    return SpecOutcome(spec, jobs, outcome)


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
        n = await store.delete_jobs([j.id for j in chosen], owner_is_dead)
        await store.reclaim_space()
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
    s = _settings(settings, db)
    async with await Store.open(s.db, "existing") as store:
        queued, in_flight = await store.cancel_job(job_id)
        if not in_flight:
            return CancelResult(queued)
        from runner.worker.cancel import CANCEL_CONCURRENCY, cancel_background

        async with _client(s, transport, CANCEL_CONCURRENCY) as client:
            t = await cancel_background(store, client, in_flight)
        return CancelResult(queued, t.cancelled, t.finished_first, t.still_running, t.failures, t.doomed)
