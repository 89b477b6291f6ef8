"""The `runner` command: argument parsing, printing, progress display and exit codes.

Exit codes: 0 success, 1 some requests failed, 2 usage or input error, 3 stopped by a billing error,
130 interrupted by SIGINT, 143 stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import anyio
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from runner import __version__, app
from runner.config import (
    DEFAULT_BASE_URL,
    DEFAULT_CONCURRENCY,
    DEFAULT_DB,
    DEFAULT_GRACE_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TIMEOUT,
    AuthStyle,
    Settings,
)
from runner.errors import ConfigError, InputError, JobNotFound, LineProblem, RunnerError
from runner.export import FORMATS
from runner.runstate import Snapshot, StopReason
from runner.store import JobStats

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BILLING = 0, 1, 2, 3
EXIT_BUDGET = 4  # reserved: a run stopped by its spending budget
EXIT_DOOMED = 5  # the whole job cannot succeed as configured (bad key, wrong base URL, server unreachable)
EXIT_SIGINT, EXIT_SIGTERM = 130, 143
LOG_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal (RUNNER_PROGRESS_EVERY)

log = logging.getLogger("runner")
err = Console(stderr=True, highlight=False)


# -- arguments ------------------------------------------------------------------------------------


def _env_arg(p: argparse.ArgumentParser, *flags: str, env: str, help: str, **kw: Any) -> None:
    """An option whose default comes from an environment variable, named in --help."""
    kw.setdefault("default", None)
    p.add_argument(*flags, help=f"{help} [env: {env}]", **kw)


def _db_arg(p: argparse.ArgumentParser) -> None:
    _env_arg(
        p,
        "--db",
        env="RUNNER_DB",
        help=f"SQLite file or SQLAlchemy URL of the job store (default {DEFAULT_DB})",
    )


def _client_args(p: argparse.ArgumentParser) -> None:
    _env_arg(p, "--base-url", env="OPENAI_BASE_URL", help=f"API base URL (default {DEFAULT_BASE_URL})")
    _env_arg(
        p,
        "--api-key",
        env="OPENAI_API_KEY",
        help="API key; prefer the environment variable, a flag is visible to other users in `ps`",
    )
    _env_arg(
        p,
        "--auth-style",
        env="RUNNER_AUTH_STYLE",
        choices=[a.value for a in AuthStyle],
        help="how the key is sent: 'bearer' (Authorization: Bearer KEY), 'raw' (Authorization: KEY), "
        "'api-key' (api-key: KEY, Azure)",
    )
    _env_arg(
        p,
        "--timeout",
        env="RUNNER_TIMEOUT",
        type=float,
        help=f"seconds to wait for one HTTP reply (default {DEFAULT_TIMEOUT:g})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(
        prog="runner",
        description="Run JSONL files of OpenAI Responses API requests as resumable batch jobs.",
        epilog="Exit codes: 0 ok, 1 some requests failed, 2 usage or input error, 3 billing stop, "
        "130 SIGINT, 143 SIGTERM.",
    )
    parser.add_argument("--version", action="version", version=f"runner {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("submit", help="queue a JSONL file as a job; prints the job id last")
    p.add_argument("file", help="JSONL: OpenAI Batch lines or bare Create Response bodies")
    p.add_argument("--name", help="a name for the job (default: the file's name)")
    p.add_argument("--background", action="store_true", help="send every line with background: true, store: true")
    p.add_argument("--model", help="model for lines that name none")
    p.add_argument("--lenient", action="store_true", help="enum values the runner does not know are warnings")
    p.add_argument("--new", action="store_true", help="always make a new job, even for a file submitted before")
    _db_arg(p)

    p = sub.add_parser(
        "run",
        help="run jobs until every request is final, or run a job spec (SPEC.toml): submit, run, export, report",
    )
    p.add_argument(
        "job_ids",
        nargs="*",
        metavar="JOB_ID|SPEC.toml",
        help="jobs to run (default: every unfinished job), or one job spec file",
    )
    _env_arg(p, "--prices", env="RUNNER_PRICES", help="price table TOML overriding the shipped one (spec runs)")
    _env_arg(
        p,
        "--concurrency",
        env="RUNNER_CONCURRENCY",
        type=int,
        help=f"requests in flight at once (default {DEFAULT_CONCURRENCY})",
    )
    _env_arg(
        p,
        "--max-attempts",
        env="RUNNER_MAX_ATTEMPTS",
        type=int,
        help=f"attempts per request before it fails (default {DEFAULT_MAX_ATTEMPTS})",
    )
    _env_arg(
        p,
        "--grace",
        env="RUNNER_GRACE",
        type=float,
        help=f"seconds in-flight requests get to finish after SIGINT/SIGTERM (default {DEFAULT_GRACE_SECONDS:g})",
    )
    _env_arg(p, "--rpm", env="RUNNER_RPM", type=float, help="requests per minute budget, paced evenly (default: none)")
    _env_arg(p, "--tpm", env="RUNNER_TPM", type=float, help="tokens per minute budget, paced evenly (default: none)")
    p.add_argument("--quiet", action="store_true", help="no progress display or progress lines")
    _client_args(p)
    _db_arg(p)

    p = sub.add_parser("status", help="counts, usage and timing of a job (default: the newest)")
    p.add_argument("job_id", nargs="?", metavar="JOB_ID")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _db_arg(p)

    p = sub.add_parser("jobs", help="list jobs")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _db_arg(p)

    p = sub.add_parser("export", help="write a job's results in the OpenAI Batch output format")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("-o", "--output", help="output file (default: stdout)")
    p.add_argument("--errors", help="write failed and cancelled lines to this file instead")
    p.add_argument(
        "--format",
        default="batch",
        choices=list(FORMATS),
        help="batch: OpenAI Batch output lines (default); jsonl-flat, csv and parquet: each answer joined with"
        " its input (custom_id, line, model, instructions, input text, status, output_text, the five usage"
        " counts, error, and the metadata: one metadata.KEY column per key in csv and parquet; parquet needs"
        " pyarrow: pip install 'runner[parquet]')",
    )
    _db_arg(p)

    p = sub.add_parser(
        "show",
        help="one request in full: the body as sent, every attempt, the final answer or error",
        description="Show one request: the body as sent, every attempt (time, HTTP status, code, message,"
        " request id) and the final answer or error in full. With one argument, the newest job is used.",
    )
    p.add_argument("job_id", nargs="?", metavar="JOB_ID", help="default: the newest job")
    p.add_argument("custom_id", metavar="CUSTOM_ID", help="the line's custom_id (line-N for bare-body lines)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _db_arg(p)

    p = sub.add_parser("report", help="counts, usage, cost, latency percentiles, errors by code, slowest requests")
    p.add_argument("job_id", nargs="?", metavar="JOB_ID", help="default: the newest job")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _env_arg(p, "--prices", env="RUNNER_PRICES", help="price table TOML overriding the shipped one")
    _db_arg(p)

    p = sub.add_parser("cancel", help="cancel a job's queued and in-flight background requests")
    p.add_argument("job_id", metavar="JOB_ID")
    _client_args(p)
    _db_arg(p)

    p = sub.add_parser("retry", help="put a job's failed requests back in the queue with fresh attempts")
    p.add_argument("job_id", metavar="JOB_ID")
    _db_arg(p)

    p = sub.add_parser("doctor", help="check the store: integrity, stale leases, stuck requests")
    p.add_argument("--fix", action="store_true", help="requeue abandoned work and drop half-submitted jobs")
    _db_arg(p)

    sub.add_parser(
        "mock-server",
        help="the built-in fake Responses API (see `runner mock-server --help`)",
        add_help=False,
    )
    return parser


def _flags(ns: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (not those from the environment)."""
    return {
        k: getattr(ns, k)
        for k in (
            "db",
            "base_url",
            "api_key",
            "auth_style",
            "concurrency",
            "max_attempts",
            "timeout",
            "grace",
            "rpm",
            "tpm",
        )
        if getattr(ns, k, None) is not None
    }


def _settings(ns: argparse.Namespace) -> Settings:
    """Flags over environment over defaults."""
    try:
        return Settings(**_flags(ns))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "settings"
        raise ConfigError(f"invalid {where}: {first['msg']}") from None


# -- printing -------------------------------------------------------------------------------------


def stats_json(st: JobStats) -> dict[str, Any]:
    """The `status --json` document."""
    elapsed = st.elapsed()
    finished = st.finished
    u = st.usage
    return {
        "job_id": st.job.id,
        "name": st.job.name,
        "source": st.job.source,
        "status": st.status.value,
        "total": st.job.total,
        "counts": st.counts,
        "attempts": st.attempts,
        "rate_limited": st.rate_limited,
        "usage": u.as_dict(),
        "elapsed_seconds": round(elapsed, 3) if elapsed is not None else None,
        "throughput_rps": round(finished / elapsed, 2) if elapsed else None,
        "background": st.job.background,
        "created_at": st.job.created_at,
        "in_flight_by_owner": st.in_flight_by_owner,
        "stale_leases": st.stale_leases,
    }


def print_stats(st: JobStats, out: Callable[[str], None]) -> None:
    """Human-readable figures of one job."""
    d = stats_json(st)
    c, u = d["counts"], d["usage"]
    out(f"job {d['job_id']} ({d['name']}) · {d['total']} requests · {d['status']}")
    out(
        "  "
        + " · ".join(
            f"{k.replace('_', ' ')} {c.get(k, 0)}"
            for k in ("queued", "in_progress", "completed", "incomplete", "failed", "cancelled")
        )
    )
    retries = max(d["attempts"] - sum(v for k, v in c.items() if k != "queued"), 0)
    out(f"  attempts {d['attempts']} ({retries} retries) · rate limited {d['rate_limited']}")
    out(
        f"  usage: input {u['input_tokens']:,} · cached {u['cached_tokens']:,} · output {u['output_tokens']:,}"
        f" · reasoning {u['reasoning_tokens']:,} · total {u['total_tokens']:,}"
    )
    if d["elapsed_seconds"] is not None:
        rate = f" · {d['throughput_rps']:.1f} requests/s" if d["throughput_rps"] else ""
        out(f"  elapsed {d['elapsed_seconds']:.1f} s{rate}")
    if d["in_flight_by_owner"] or d["stale_leases"]:
        owners = ", ".join(f"{o}: {n}" for o, n in d["in_flight_by_owner"].items()) or "none"
        out(f"  in flight by runner: {owners} · stale leases {d['stale_leases']}")


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")


class ProgressView:
    """A live bar on a terminal; a concise log line every few seconds otherwise (cron, CI)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.live = not quiet and sys.stderr.isatty()
        self.every = float(os.environ.get("RUNNER_PROGRESS_EVERY", LOG_EVERY))
        self._last_line = 0.0
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> ProgressView:
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]run"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeRemainingColumn(),
                console=err,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("run", total=None, detail="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, s: Snapshot) -> None:
        if self.quiet:
            return
        rate = s.done and (s.completed + s.incomplete + s.failed) / max(s.elapsed, 1e-6)
        tps = s.tokens / max(s.elapsed, 1e-6)
        if self._progress is not None:
            detail = (
                f"ok {s.completed + s.incomplete} · failed {s.failed} · in flight {s.in_flight}"
                f" · polling {s.polling} · {rate:.1f} req/s · {tps:,.0f} tok/s"
                f" · retries {s.retries} · 429s {s.rate_limited} · concurrency {s.concurrency}"
            )
            self._progress.update(self._task, total=s.total, completed=s.done, detail=detail)
            return
        now = time.monotonic()
        if now - self._last_line >= self.every:
            self._last_line = now
            err.print(
                f"progress done={s.done}/{s.total} completed={s.completed} incomplete={s.incomplete}"
                f" failed={s.failed} in_flight={s.in_flight} polling={s.polling} rps={rate:.1f}"
                f" tokens_per_s={tps:.0f} retries={s.retries} rate_limited={s.rate_limited}"
                f" concurrency={s.concurrency} pauses={s.pauses}",
                soft_wrap=True,
            )


# -- commands -------------------------------------------------------------------------------------


def cmd_submit(ns: argparse.Namespace) -> int:
    def warn(p: LineProblem) -> None:
        err.print(f"warning: {ns.file}:{p}", soft_wrap=True, markup=False)

    res = anyio.run(
        lambda: app.submit(
            ns.file,
            name=ns.name,
            background=ns.background,
            model=ns.model,
            lenient=ns.lenient,
            new=ns.new,
            db=ns.db,
            on_warning=warn,
        )
    )
    if res.existing:
        err.print(
            f"{ns.file} was submitted before with the same options: job {res.job_id} (use --new for a separate job)",
            markup=False,
        )
    else:
        err.print(f"queued {res.total} requests from {ns.file}", markup=False)
    _print(res.job_id)
    return EXIT_OK


def cmd_run(ns: argparse.Namespace) -> int:
    specs = [a for a in ns.job_ids if a.endswith(".toml")]
    if specs:
        if len(ns.job_ids) != 1:
            raise ConfigError("give one job spec (.toml) or job ids, not both")
        return _run_spec(ns, specs[0])
    settings = _settings(ns)
    with ProgressView(ns.quiet) as view:
        outcome = anyio.run(lambda: app.run(ns.job_ids or None, settings, on_progress=view, handle_signals=True))
    for st in outcome.stats:
        print_stats(st, _print)
    stopped = _stop_verdict(outcome)
    if stopped is not None:
        return stopped
    if not outcome.stats:
        err.print("nothing to run: no job has queued requests", markup=False)
    return EXIT_FAILED if outcome.failed else EXIT_OK


def _run_spec(ns: argparse.Namespace, path: str) -> int:
    """`runner run SPEC.toml`: submit (or resume today's job), run, export, report; exit by the spec's policy."""
    overrides = _flags(ns)
    db = overrides.pop("db", None)
    with ProgressView(ns.quiet) as view:
        done = anyio.run(
            lambda: app.run_spec(
                path, overrides=overrides, db=db, on_progress=view, handle_signals=True, prices=ns.prices
            )
        )
    for j in done.jobs:
        if j.report is not None:
            _print(j.report.render_text())
        for label, p in (("results", j.results), ("errors", j.errors), ("report", j.report_file)):
            if p is not None:
                _print(f"  {label}: {os.path.normpath(p)}")
    stopped = _stop_verdict(done.run)
    if stopped is not None:
        return stopped
    if done.over_threshold:
        rate = done.spec.policy.max_failure_rate
        err.print(f"failed: {done.failed} of {done.total} requests failed (the spec allows {rate:.2%})", markup=False)
        return EXIT_FAILED
    return EXIT_OK


def _stop_verdict(outcome: app.RunOutcome) -> int | None:
    """The exit code of a run that stopped early (billing, signal), after saying so; None if it ran to the end."""
    r = outcome.result
    s = r.snapshot
    here = s.completed + s.incomplete + s.failed + s.cancelled
    err.print(
        f"this run: {here} requests finished (completed {s.completed}, incomplete {s.incomplete},"
        f" failed {s.failed}, cancelled {s.cancelled}) in {s.elapsed:.1f} s; retries {s.retries},"
        f" rate limited {s.rate_limited}",
        markup=False,
        soft_wrap=True,
    )
    if r.reason is StopReason.BILLING:
        assert r.billing_error is not None
        e = r.billing_error
        err.print(
            f"stopped: the API refused for billing reasons ({e.status} {e.code}: {e.message}). "
            "Unfinished requests stay queued; top up the account and run `runner run` again.",
            markup=False,
            soft_wrap=True,
        )
        return EXIT_BILLING
    if r.reason is StopReason.INTERRUPTED:
        err.print("interrupted: every result received is saved; `runner run` resumes.", markup=False)
        return EXIT_SIGTERM if outcome.signal == signal.SIGTERM else EXIT_SIGINT
    return None


def _newest_job(db: str | None) -> str:
    all_jobs = anyio.run(lambda: app.jobs(db=db))
    if not all_jobs:
        raise ConfigError("no job was submitted yet: give a JOB_ID or run `runner submit FILE` first")
    return all_jobs[-1].job.id


def cmd_report(ns: argparse.Namespace) -> int:
    job_id = ns.job_id or _newest_job(ns.db)
    rep = anyio.run(lambda: app.report(job_id, db=ns.db, prices=ns.prices))
    _print(json.dumps(rep.to_json()) if ns.json else rep.render_text())
    return EXIT_OK


def cmd_show(ns: argparse.Namespace) -> int:
    from runner import show  # only this command renders a single request

    job_id = ns.job_id or _newest_job(ns.db)
    detail = anyio.run(lambda: app.show(job_id, ns.custom_id, db=ns.db))
    _print(json.dumps(show.to_json(detail)) if ns.json else show.render_text(detail))
    return EXIT_OK


def cmd_status(ns: argparse.Namespace) -> int:
    job_id = ns.job_id or _newest_job(ns.db)
    st = anyio.run(lambda: app.status(job_id, db=ns.db))
    if ns.json:
        _print(json.dumps(stats_json(st)))
    else:
        print_stats(st, _print)
    return EXIT_OK


def cmd_jobs(ns: argparse.Namespace) -> int:
    all_jobs = anyio.run(lambda: app.jobs(db=ns.db))
    if ns.json:
        _print(json.dumps([stats_json(s) for s in all_jobs]))
        return EXIT_OK
    if not all_jobs:
        err.print("no jobs", markup=False)
    for st in all_jobs:
        d = stats_json(st)
        c = d["counts"]
        done = sum(v for k, v in c.items() if k not in ("queued", "in_progress"))
        _print(
            f"{d['job_id']}  {d['status']:<11}  {done}/{d['total']} done  failed {c.get('failed', 0)}"
            f"  tokens {d['usage']['total_tokens']:,}  {d['name']}"
        )
    return EXIT_OK


def cmd_export(ns: argparse.Namespace) -> int:
    counts = anyio.run(lambda: app.export(ns.job_id, ns.output, errors=ns.errors, fmt=ns.format, db=ns.db))
    where = ns.output or "stdout"
    msg = f"exported {counts.results} lines to {where}"
    if ns.errors:
        msg += f", {counts.errors} to {ns.errors}"
    if counts.unfinished:
        msg += f"; {counts.unfinished} requests are not finished yet and were left out"
    err.print(msg, markup=False)
    return EXIT_OK


def cmd_cancel(ns: argparse.Namespace) -> int:
    settings = _settings(ns)
    res = anyio.run(lambda: app.cancel(ns.job_id, settings))
    err.print(
        f"cancelled {res.cancelled_queued} queued and {res.cancelled_in_flight} in-flight requests",
        markup=False,
    )
    for f in res.cancel_failures:
        err.print(f"could not cancel {f}", markup=False)
    return EXIT_FAILED if res.cancel_failures else EXIT_OK


def cmd_retry(ns: argparse.Namespace) -> int:
    n = anyio.run(lambda: app.retry(ns.job_id, db=ns.db))
    err.print(f"{n} failed requests queued again; `runner run {ns.job_id}` sends them", markup=False)
    return EXIT_OK


def cmd_doctor(ns: argparse.Namespace) -> int:
    rep = anyio.run(lambda: app.doctor(fix=ns.fix, db=ns.db))
    h = rep.health
    _print(f"integrity_check: {rep.integrity}")
    _print(f"leases held by live runners: {h['live_leases']}")
    _print(
        f"stale leases (runner gone): {h['stale_leases_unsent']} unsent -> would requeue,"
        f" {h['stale_leases_background']} background -> next run polls them"
    )
    _print(
        f"in progress with no owner: {h['unowned_unsent']} unsent -> would requeue,"
        f" {h['unowned_background']} background -> next run polls them"
    )
    _print(f"half-submitted jobs: {h['staging_jobs']} -> would drop those whose submit process is gone")
    if rep.fixed:
        _print("fixed: " + ", ".join(f"{k} {v}" for k, v in rep.fixed.items()))
        return EXIT_OK if rep.integrity == "ok" else EXIT_FAILED
    if not rep.healthy:
        _print("run `runner doctor --fix` to repair (a plain `runner run` also reclaims stale work)")
    return EXIT_OK if rep.healthy else EXIT_FAILED


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "submit": cmd_submit,
    "run": cmd_run,
    "status": cmd_status,
    "jobs": cmd_jobs,
    "export": cmd_export,
    "cancel": cmd_cancel,
    "retry": cmd_retry,
    "doctor": cmd_doctor,
    "report": cmd_report,
    "show": cmd_show,
}


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"runner: {message}", markup=False, soft_wrap=True)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `runner` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "mock-server":
        from runner import mock_server

        mock_server.main(args[1:])
        return
    ns = build_parser().parse_args(args)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Request bodies and keys must never reach a log line, whatever the level.
    for noisy in ("httpx", "httpcore", "aiohttp", "sqlalchemy", "aiosqlite", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        code = COMMANDS[ns.command](ns)
    except InputError as e:
        _fail(e.render(), EXIT_USAGE)
    except (ConfigError, JobNotFound) as e:
        _fail(str(e), EXIT_USAGE)
    except RunnerError as e:
        if ns.verbose:
            raise
        _fail(str(e), EXIT_FAILED)
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_SIGINT)
    except OSError as e:
        if ns.verbose:
            raise
        _fail(f"{type(e).__name__}: {e}", EXIT_FAILED)
    sys.stdout.flush()
    sys.exit(code)
