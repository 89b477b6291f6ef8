"""Sending requests: `runner run` (jobs or a job spec) and `runner cancel` (a job's background requests)."""

from __future__ import annotations

import argparse
import os
import resource
import time

from runner import app
from runner.cli import options
from runner.cli.command import Command
from runner.cli.exits import ExitCode
from runner.cli.options import bounded, setting
from runner.cli.output import json_lines, put, run_async, say, when
from runner.config import (
    BATCH_MAX_LINES,
    DEFAULT_CONCURRENCY,
    DEFAULT_GRACE_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    MAX_CONCURRENCY,
    MAX_GRACE_SECONDS,
    MAX_MAX_ATTEMPTS,
    MAX_PROCESSES,
    MAX_REPAIR,
    MAX_TIMEOUT,
    Lane,
    parse_duration,
)
from runner.display import ProgressView
from runner.errors import ConfigError
from runner.states import JobStatus, RequestState, count
from runner.term import printable, usd

STALE_AFTER_DAYS = 7  # a plain `runner run` leaves alone unfinished jobs untouched for longer than this
RESERVED_FILES = 64  # file descriptors beside the HTTP connections: the store, its WAL, logs, the interpreter


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "job_ids",
        nargs="*",
        metavar="JOB_ID|SPEC.toml",
        help="jobs to run (default: every unfinished job touched in the last "
        f"{STALE_AFTER_DAYS} days), or one job spec file",
    )
    setting(p, "prices", help="price table TOML overriding the shipped one (spec runs)")
    setting(
        p,
        "concurrency",
        type=bounded(int, 1, MAX_CONCURRENCY),
        help=f"requests in flight at once (default {DEFAULT_CONCURRENCY}, at most {MAX_CONCURRENCY:,})",
    )
    setting(
        p,
        "processes",
        type=bounded(int, 1, MAX_PROCESSES),
        help="worker processes on the store, for more cores; they split --concurrency and share --rpm/--tpm"
        f" (default 1, at most {MAX_PROCESSES})",
    )
    setting(
        p,
        "max_attempts",
        type=bounded(int, 1, MAX_MAX_ATTEMPTS),
        help=f"attempts per request before it fails (default {DEFAULT_MAX_ATTEMPTS}, at most {MAX_MAX_ATTEMPTS})",
    )
    setting(
        p,
        "repair",
        type=bounded(int, 0, MAX_REPAIR),
        help="ask a completed answer that fails its structured-output check again, up to N times"
        f" (default 0, at most {MAX_REPAIR})",
    )
    setting(
        p,
        "grace",
        type=bounded(float, 0, MAX_GRACE_SECONDS),
        help="seconds in-flight requests get to finish after SIGINT/SIGTERM/SIGHUP "
        f"(default {DEFAULT_GRACE_SECONDS:g}, at most {MAX_GRACE_SECONDS:,g})",
    )
    setting(
        p,
        "rpm",
        type=bounded(float, 0, None, low_open=True),
        help="requests per minute budget, paced evenly (default: none)",
    )
    setting(
        p,
        "tpm",
        type=bounded(float, 0, None, low_open=True),
        help="tokens per minute budget, paced evenly (default: none)",
    )
    setting(
        p,
        "lane",
        choices=[lane.value for lane in Lane],
        help="how requests travel: sync (default), flex (service_tier flex: Batch prices, slower, 15-minute"
        " timeout) or batch (the Batch API: files and batches, results within 24 h)",
    )
    setting(
        p,
        "flex_fallback",
        type=_duration,
        metavar="DURATION",
        help="flex lane: send a request still unanswered on flex after this long (90s, 15m, 1h) on the default tier",
    )
    setting(
        p,
        "batch_max_lines",
        type=bounded(int, 1, BATCH_MAX_LINES),
        help=f"batch lane: lines per Batch input file (default and most {BATCH_MAX_LINES:,})",
    )
    p.add_argument(
        "--detach",
        action="store_true",
        help="batch lane: create the batches, commit their ids and exit 0; a later `runner run` collects them",
    )
    setting(
        p,
        "max_cost",
        type=bounded(float, 0, None, low_open=True),
        help="USD the jobs may cost in all (earlier runs included, priced from the price table): no request"
        " starts that would pass it; what is unsent stays queued, exit 4 (default: none)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress display or progress lines")
    options.client(p)
    options.db(p)


def _duration(text: str) -> float:
    """An argparse `type` for a duration such as 90s, 15m or 1h: positive, at most a day."""
    try:
        seconds = parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not 0 < seconds <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most {MAX_TIMEOUT:,g} s (got {text!r})")
    return seconds


def fit_open_files(concurrency: int, *, lower: bool = True) -> int:
    """Make room for `concurrency` connections under RLIMIT_NOFILE: raise the soft limit toward the hard one,
    else lower the concurrency with a warning (running out of descriptors mid-run fails requests and the store)."""
    poll_slots = app.default_poll_slots(concurrency)
    need = concurrency + poll_slots + RESERVED_FILES
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return concurrency
    if soft == resource.RLIM_INFINITY or soft >= need:
        return concurrency
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    except (OSError, ValueError):
        pass
    if soft >= need:
        return concurrency
    # Each request may hold a connection and so may each poll; keep both within what is left.
    fitted = max(1, (soft - RESERVED_FILES) // 2)
    if lower and fitted < concurrency:
        say(
            f"warning: only {soft} open files allowed (ulimit -n); concurrency lowered from {concurrency} to {fitted}",
            level="warning",
        )
        return fitted
    return concurrency


def _choose_jobs(ns: argparse.Namespace, settings: app.Settings) -> tuple[list[str] | None, list[str]]:
    """The jobs a plain `runner run` resumes (None: nothing), and the lines that name them for stderr; jobs
    untouched for STALE_AFTER_DAYS are skipped and named too (an old, half-done job should not start spending
    again unasked). The lines are said once the run is known not to be refused."""
    now = time.time()
    chosen: list[str] = []
    lines: list[str] = []
    # The run's own settings: a flag over a bad variable (RUNNER_CONCURRENCY=99999 --concurrency 4) wins here too.
    for st in run_async(lambda: app.jobs(db=ns.db, settings=settings)):
        if st.job.cancelled_at is not None or st.status not in (JobStatus.QUEUED, JobStatus.IN_PROGRESS):
            continue
        last = max(st.job.created_at, st.first_started or 0.0, st.last_finished or 0.0)
        name = printable(st.job.name)
        left = st.job.total - st.finished
        if now - last > STALE_AFTER_DAYS * 86400:
            lines.append(
                f"skipping {st.job.id} ({name}): unfinished, untouched since {when(last)};"
                f" `runner run {st.job.id}` resumes it"
            )
            continue
        verb = "resuming" if st.attempts else "starting"
        lines.append(f"{verb} {st.job.id} ({name}): {left:,} of {st.job.total:,} requests left")
        chosen.append(st.job.id)
    return chosen or None, lines


def _next_steps(outcome: app.RunOutcome) -> list[str]:
    """What to do about failed requests, per job."""
    steps = []
    for st in outcome.stats:
        failed = count(st.counts, RequestState.FAILED)
        if failed:
            steps.append(
                f"{failed:,} failed in {st.job.id}: `runner report {st.job.id}` shows why,"
                f" `runner retry {st.job.id}` queues them again"
            )
    return steps


def _run(ns: argparse.Namespace) -> ExitCode:
    specs = [a for a in ns.job_ids if a.endswith(".toml")]
    if specs:
        if len(ns.job_ids) != 1:
            raise ConfigError("give one job spec (.toml) or job ids, not both")
        return _run_spec(ns, specs[0])
    settings = options.settings(ns)
    if app.is_child():
        return _run_child(ns, settings)
    if ns.detach and settings.lane is not Lane.BATCH:
        raise ConfigError("--detach needs --lane batch (only batches can be left running)")
    # With --processes N this process sends too, over the whole concurrency until the others are up.
    fitted = fit_open_files(settings.concurrency)
    if fitted != settings.concurrency:
        settings = settings.model_copy(update={"concurrency": fitted})
    ids, named = (ns.job_ids, []) if ns.job_ids else _choose_jobs(ns, settings)
    if ids is not None:
        chosen = ids
        run_async(lambda: app.refuse_run(chosen, settings))  # before any line says that work starts
    for line in named:
        say(line)
    if ids is None:
        say("nothing to run: no recent job has queued requests")
        return ExitCode.OK
    with ProgressView(ns.quiet, every=settings.progress_every, say=say if json_lines() else None) as view:
        outcome = run_async(
            lambda: app.run(ids, settings, on_progress=view, handle_signals=True, detach=ns.detach, prices=ns.prices)
        )
        view.finish(outcome.result.snapshot if outcome.stats else None, _next_steps(outcome))
    for st in outcome.stats:
        put(app.JobStatusReport(st).render_text())
    stopped = _stop_verdict(outcome)
    if stopped is not None:
        return stopped
    if not outcome.stats:
        say("nothing to run: no job has queued requests")
    if outcome.result.detached:
        n = outcome.result.batches_open
        say(f"detached: {n} batch{'es' if n != 1 else ''} open; a later `runner run` merges their results")
        return ExitCode.OK
    for problem in outcome.result.problems:
        say(printable(problem))
    return ExitCode.FAILED if outcome.failed or outcome.result.problems else ExitCode.OK


def _run_child(ns: argparse.Namespace, settings: app.Settings) -> ExitCode:
    """A worker process of `runner run --processes N`: run the jobs its parent named, quietly, reporting to it."""
    settings = settings.model_copy(update={"concurrency": fit_open_files(settings.concurrency)})
    report = app.ChildReport()
    if not report.wait_for_turn():  # the parent sends meanwhile; it lets this one go when its share is free
        return ExitCode.OK
    outcome = run_async(lambda: app.run(ns.job_ids, settings, on_progress=report, handle_signals=True))
    report.end(outcome.result)  # the parent says what happened, once for all its processes
    return ExitCode.OK


def _run_spec(ns: argparse.Namespace, path: str) -> ExitCode:
    """`runner run SPEC.toml`: submit (or resume today's job), run, export, report; exit by the spec's policy."""
    if ns.detach:
        # It was ignored: a cron line with a batch-lane spec waited for the batches (up to 24 h) to export them.
        # Detached, there is nothing to export, and tomorrow's run of the spec is another day's job.
        raise ConfigError(
            "--detach is for `runner run JOB_ID`: a spec run waits for its batches and exports their results"
        )
    overrides = options.flags(ns)
    db = overrides.pop("db", None)
    if "concurrency" in overrides:
        overrides["concurrency"] = fit_open_files(overrides["concurrency"])
    else:  # the spec's own value is read later: make room for the largest allowed, without lowering anything
        fit_open_files(MAX_CONCURRENCY, lower=False)
    with ProgressView(ns.quiet, every=options.progress_every(ns), say=say if json_lines() else None) as view:
        done = run_async(
            lambda: app.run_spec(
                path, overrides=overrides, db=db, on_progress=view, handle_signals=True, prices=ns.prices
            )
        )
        view.finish(done.run.result.snapshot if done.run.stats else None, _next_steps(done.run))
    if done.carried_over:
        say(
            f"resumed the unfinished {'jobs' if len(done.jobs) > 1 else 'job'} of {done.day}"
            " (a run that crossed midnight): what was answered then was not sent again"
        )
    for j in done.jobs:
        if j.report is not None:
            put(j.report.render_text())
        for label, p in (
            ("results", j.results),
            ("errors", j.errors),
            ("report", j.report_file),
            ("html report", j.report_html),
        ):
            if p is not None:
                put(f"  {label}: {printable(os.path.normpath(p))}")
    stopped = _stop_verdict(done.run)
    if stopped is not None:
        return stopped
    if done.over_threshold:
        rate = done.spec.policy.max_failure_rate
        say(f"failed: {done.failed} of {done.total} requests failed (the spec allows {rate:.2%})", level="error")
        return ExitCode.FAILED
    return ExitCode.OK


def _stop_verdict(outcome: app.RunOutcome) -> ExitCode | None:
    """The exit code of a run that stopped early (billing, signal), after saying so; None if it ran to the end."""
    r = outcome.result
    s = r.snapshot
    here = s.completed + s.incomplete + s.failed + s.cancelled
    split = ""
    if len(outcome.processes) > 1:
        split = f" by {len(outcome.processes)} processes ({' + '.join(str(n) for n in outcome.processes)})"
    say(
        f"this run: {here} requests finished{split} (completed {s.completed}, incomplete {s.incomplete},"
        f" failed {s.failed}, cancelled {s.cancelled}) in {s.elapsed:.1f} s; retries {s.retries},"
        f" rate limited {s.rate_limited}"
    )
    if r.reason is app.StopReason.BILLING:
        assert r.billing_error is not None
        e = r.billing_error
        said = " ".join(printable(str(v)) for v in (e.status, e.code) if v is not None)  # a 402 may have no code
        say(
            f"stopped: the API refused for billing reasons ({said}: {printable(e.message)}). "
            "Unfinished requests stay queued; top up the account and run `runner run` again.",
            level="error",
        )
        return ExitCode.BILLING
    if r.reason is app.StopReason.DOOMED:
        assert r.doomed_error is not None
        say(
            f"stopped: {printable(r.doomed_error.message)} (unfinished requests stay queued; run again after the fix)",
            level="error",
        )
        return ExitCode.DOOMED
    if r.reason is app.StopReason.BUDGET:
        queued = sum(count(st.counts, RequestState.QUEUED) for st in outcome.stats)
        assert r.budget is not None
        spent, limit = r.budget.spent, r.budget.limit
        if (model := r.budget.unpriced_model) is not None:
            say(
                f"stopped: cannot keep to --max-cost: no price for model {printable(model)} (add it with"
                f" --prices FILE); spent {usd(spent)} of {usd(limit)}; {queued:,} requests left queued"
            )
        elif (r.budget.refused_usd or 0) <= limit - spent:
            # The batch lane packs once per run: its batches cost less than estimated, so some is left.
            say(
                f"stopped at the budget: spent {usd(spent)} of {usd(limit)}; the batches were packed to fit it with"
                f" estimates above what they cost, so {usd(limit - spent)} is left; {queued:,} requests left queued"
                " (run again to send more, with a higher --max-cost to finish)"
            )
        else:
            say(
                f"stopped at the budget: spent {usd(spent)} of {usd(limit)}, {usd(max(limit - spent, 0))} left,"
                f" not enough for the next request (estimated {usd(r.budget.refused_usd or 0)}); {queued:,} requests"
                " left queued (run again with a higher --max-cost to finish)"
            )
        return ExitCode.BUDGET
    if r.reason is app.StopReason.INTERRUPTED:
        say("interrupted: every result received is saved; `runner run` resumes.", level="warning")
        # 128 + the signal, as for every other command (runner/interrupt.py).
        return ExitCode(128 + outcome.signal) if outcome.signal is not None else ExitCode.SIGINT
    return None


RUN = Command(
    "run",
    "run jobs until every request is final, or run a job spec (SPEC.toml): submit, run, export, report",
    _run_options,
    _run,
)
