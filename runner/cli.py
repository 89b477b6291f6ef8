"""The `runner` command: argument parsing, printing and exit codes (the progress display is runner.display).

Exit codes: 0 success, 1 some requests failed, 2 usage or input error, 3 stopped by a billing error,
4 reserved for the budget stop, 5 the whole job is doomed (bad key, wrong base URL, server unreachable),
130 interrupted by SIGINT, 141 stdout closed early (a pipe into `head`), 143 stopped by SIGTERM.

Everything printed that came from a server or a file (error codes and messages, custom_ids, model names,
job names, paths) goes through `runner.term.printable`, so it cannot drive the terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import difflib
import json
import logging
import math
import os
import re
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, TypeVar

import anyio
from pydantic import ValidationError

from runner import DISTRIBUTION, __version__, app, interrupt
from runner.config import (
    DEFAULT_BASE_URL,
    DEFAULT_CONCURRENCY,
    DEFAULT_DB,
    DEFAULT_GRACE_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PROGRESS_EVERY,
    DEFAULT_TIMEOUT,
    MAX_CONCURRENCY,
    MAX_GRACE_SECONDS,
    MAX_MAX_ATTEMPTS,
    MAX_TIMEOUT,
    AuthStyle,
    Settings,
    env_name,
)
from runner.display import ProgressView, err
from runner.errors import ConfigError, InputError, JobBusy, JobNotFound, LineProblem, RunnerError, StoreUnavailable
from runner.export import FORMATS
from runner.states import RESULTS, JobStatus, RequestState, count
from runner.store import JobRow, JobStats
from runner.term import printable
from runner.worker.types import StopReason

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BILLING = 0, 1, 2, 3
EXIT_BUDGET = 4  # reserved: a run stopped by its spending budget
EXIT_DOOMED = 5  # the whole job cannot succeed as configured (bad key, wrong base URL, server unreachable)
EXIT_SIGINT, EXIT_SIGTERM = 130, 143
EXIT_PIPE = 141  # stdout was closed early (`runner export JOB | head`): 128 + SIGPIPE, as `cat` would exit
STALE_AFTER_DAYS = 7  # a plain `runner run` leaves alone unfinished jobs untouched for longer than this
RESERVED_FILES = 64  # file descriptors beside the HTTP connections: the store, its WAL, logs, the interpreter
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")

log = logging.getLogger("runner")
T = TypeVar("T")


def _run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """anyio.run, then re-arm SIGTERM: asyncio resets it to the default (die silently) when it lets go."""
    try:
        return anyio.run(fn)
    finally:
        interrupt.unwind()


# -- arguments ------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (`runner run: argument --concurrency: ...`) instead of the usage text."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {printable(message)} (see `{self.prog} --help`)\n")
        sys.exit(EXIT_USAGE)


_ENV_OF: dict[str, str] = {}  # setting name -> its environment variable, for error messages


def _env_arg(p: argparse.ArgumentParser, *flags: str, env: str, help: str, **kw: Any) -> None:
    """An option whose default comes from an environment variable, named in --help."""
    kw.setdefault("default", None)
    action = p.add_argument(*flags, help=f"{help} [env: {env}]", **kw)
    _ENV_OF[action.dest] = env


def _bounded(kind: type[int] | type[float], low: float, high: float | None, *, low_open: bool = False) -> Any:
    """An argparse `type` that refuses values out of [low, high] (and NaN, infinity) with one clear line."""
    what = "a whole number" if kind is int else "a number"
    if high is None:
        span = f"greater than {low:g}" if low_open else f"at least {low:g}"
    else:
        span = f"{'above' if low_open else 'from'} {low:g} to {high:,g}"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what} {span} (got {text!r})") from None
        if (
            not math.isfinite(value)
            or value < low
            or (low_open and value == low)
            or (high is not None and value > high)
        ):
            raise argparse.ArgumentTypeError(f"must be {what} {span} (got {text})")
        return value

    return parse


def _db_arg(p: argparse.ArgumentParser) -> None:
    """--db on a command; it is also a global flag, so given before the command it must not be reset here."""
    _env_arg(
        p,
        "--db",
        env="RUNNER_DB",
        help=f"SQLite file or SQLAlchemy URL of the job store (default {DEFAULT_DB})",
        default=argparse.SUPPRESS,
    )


def _global_args(p: argparse.ArgumentParser, *, top: bool) -> None:
    """Flags every command takes, before or after the command name (`runner --db x status`, `runner status
    --db x`). On the commands their default is SUPPRESS, so a value given before the command survives."""
    keep: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    candidates: list[Callable[[], object]] = [
        lambda: p.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks", **keep),
        lambda: _env_arg(
            p,
            "--db",
            env="RUNNER_DB",
            help=f"SQLite file or SQLAlchemy URL of the job store (default {DEFAULT_DB})",
            **({"default": None} if top else keep),
        ),
        lambda: _env_arg(
            p,
            "--log-level",
            env="RUNNER_LOG_LEVEL",
            choices=LOG_LEVELS,
            help="least severe log messages shown on stderr (default warning; debug with -v)",
            **({"default": None} if top else keep),
        ),
        lambda: _env_arg(
            p,
            "--log-format",
            env="RUNNER_LOG_FORMAT",
            choices=LOG_FORMATS,
            help="text (default), or json: one JSON object per log line",
            **({"default": None} if top else keep),
        ),
    ]
    for add in candidates:
        with contextlib.suppress(argparse.ArgumentError):  # the command defines the flag itself (--db)
            add()


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
        type=_bounded(float, 0, MAX_TIMEOUT, low_open=True),
        help=f"seconds to wait for one HTTP reply (default {DEFAULT_TIMEOUT:g}, at most {MAX_TIMEOUT:,g})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = _Parser(
        prog="runner",
        description="Run JSONL files of OpenAI Responses API requests as resumable batch jobs.",
        epilog="Exit codes: 0 ok, 1 some requests failed, 2 usage or input error, 3 billing stop, "
        "5 job doomed (bad key, wrong base URL, server unreachable), 130 SIGINT, 141 output pipe closed, "
        "143 SIGTERM.",
    )
    parser.add_argument("--version", action="version", version=f"runner {__version__}")
    _global_args(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "submit",
        help="queue JSONL files, one job each (all or none); prints the job ids last, one per line",
    )
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="JSONL: OpenAI Batch lines or bare Create Response bodies; gzip is fine; '-' reads stdin",
    )
    p.add_argument("--name", help="a name for the job (default: the file's name; several files: NAME-FILE)")
    p.add_argument("--background", action="store_true", help="send every line with background: true, store: true")
    p.add_argument("--model", help="model for lines that name none")
    p.add_argument(
        "--lenient",
        action="store_true",
        help="unknown enum values, misspelled and Chat Completions keys are warnings, not errors",
    )
    p.add_argument("--new", action="store_true", help="always make a new job, even for a file submitted before")
    _db_arg(p)

    p = sub.add_parser("convert", help="rewrite Chat Completions JSONL lines as Responses API lines")
    p.add_argument(
        "file", metavar="FILE", help="Chat Completions Batch lines or bare bodies; gzip is fine; '-' is stdin"
    )
    p.add_argument(
        "-o", "--output", help="output file (default: stdout); nothing is written if a line cannot be converted"
    )
    p.add_argument(
        "--drop-unsupported",
        action="store_true",
        help="leave out keys with no Responses counterpart (stop, seed, penalties, ...) instead of refusing the file",
    )

    p = sub.add_parser(
        "run",
        help="run jobs until every request is final, or run a job spec (SPEC.toml): submit, run, export, report",
    )
    p.add_argument(
        "job_ids",
        nargs="*",
        metavar="JOB_ID|SPEC.toml",
        help="jobs to run (default: every unfinished job touched in the last "
        f"{STALE_AFTER_DAYS} days), or one job spec file",
    )
    _env_arg(p, "--prices", env="RUNNER_PRICES", help="price table TOML overriding the shipped one (spec runs)")
    _env_arg(
        p,
        "--concurrency",
        env="RUNNER_CONCURRENCY",
        type=_bounded(int, 1, MAX_CONCURRENCY),
        help=f"requests in flight at once (default {DEFAULT_CONCURRENCY}, at most {MAX_CONCURRENCY:,})",
    )
    _env_arg(
        p,
        "--max-attempts",
        env="RUNNER_MAX_ATTEMPTS",
        type=_bounded(int, 1, MAX_MAX_ATTEMPTS),
        help=f"attempts per request before it fails (default {DEFAULT_MAX_ATTEMPTS}, at most {MAX_MAX_ATTEMPTS})",
    )
    _env_arg(
        p,
        "--grace",
        env="RUNNER_GRACE",
        type=_bounded(float, 0, MAX_GRACE_SECONDS),
        help="seconds in-flight requests get to finish after SIGINT/SIGTERM "
        f"(default {DEFAULT_GRACE_SECONDS:g}, at most {MAX_GRACE_SECONDS:,g})",
    )
    _env_arg(
        p,
        "--rpm",
        env="RUNNER_RPM",
        type=_bounded(float, 0, None, low_open=True),
        help="requests per minute budget, paced evenly (default: none)",
    )
    _env_arg(
        p,
        "--tpm",
        env="RUNNER_TPM",
        type=_bounded(float, 0, None, low_open=True),
        help="tokens per minute budget, paced evenly (default: none)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress display or progress lines")
    _client_args(p)
    _db_arg(p)

    p = sub.add_parser("status", help="counts, usage and timing of a job (default: the newest)")
    p.add_argument("job_id", nargs="?", metavar="JOB_ID")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _db_arg(p)

    p = sub.add_parser("jobs", help="list jobs, oldest first, with when they were created")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _db_arg(p)

    p = sub.add_parser("export", help="write a job's results in the OpenAI Batch output format")
    p.add_argument("job_id", nargs="?", metavar="JOB_ID", help="default: the newest job")
    p.add_argument("-o", "--output", help="output file (default: stdout)")
    p.add_argument("--errors", help="write failed and cancelled lines to this file instead")
    p.add_argument(
        "--format",
        default="batch",
        choices=list(FORMATS),
        help="batch: OpenAI Batch output lines (default); jsonl-flat, csv and parquet: each answer joined with"
        " its input (custom_id, line, model, instructions, input text, status, output_text, the five usage"
        " counts, error, and the metadata: one metadata.KEY column per key in csv and parquet; parquet needs"
        f" pyarrow: pip install '{DISTRIBUTION}[parquet]')",
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

    p = sub.add_parser("delete", help="delete jobs and their results from the store, and reclaim the space")
    p.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="the jobs to delete")
    p.add_argument(
        "--older-than",
        metavar="DURATION",
        help="delete every job created longer ago than this: 30m, 12h, 7d, 2w",
    )
    p.add_argument("--yes", action="store_true", help="do not ask (required when stdin is not a terminal)")
    _db_arg(p)

    p = sub.add_parser("doctor", help="check the store: integrity, stale leases, stuck requests")
    p.add_argument("--fix", action="store_true", help="requeue abandoned work and drop half-submitted jobs")
    _db_arg(p)

    sub.add_parser(
        "mock-server",
        help="the built-in fake Responses API (see `runner mock-server --help`)",
        add_help=False,
    )
    for name, command in sub.choices.items():
        if name != "mock-server":
            _global_args(command, top=False)
    return parser


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(text: str, flag: str) -> float:
    """`7d`, `12h`, `30m`, `45s`, `2w` -> seconds; ConfigError naming `flag` otherwise."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise ConfigError(f"{flag}: {text!r} is not a duration (for example 30m, 12h, 7d, 2w)")
    return float(m[1]) * _UNIT_SECONDS[m[2]]


def _takes_value(parser: argparse.ArgumentParser) -> set[str]:
    """The top-level option strings that consume the next argument (--db PATH)."""
    return {
        opt
        for action in parser._actions  # argparse keeps no public list of its options
        if action.option_strings and action.nargs != 0
        for opt in action.option_strings
    }


def _command_word(args: Sequence[str], takes_value: set[str]) -> str | None:
    """The command among `args`, skipping global flags and their values; None if there is none."""
    it = iter(args)
    for a in it:
        if a == "--":
            return next(it, None)
        if a.startswith("-"):
            if a in takes_value:
                next(it, None)
            continue
        return a
    return None


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the command line; a mistyped command or flag gets a did-you-mean, a bad value a one-line error."""
    parser = build_parser()
    commands = _subparsers(parser)
    word = _command_word(argv, _takes_value(parser))
    if word is not None and word not in commands:
        hint = _suggest(word, list(commands)) or f" (commands: {', '.join(commands)})"
        parser.error(f"unknown command '{word}'{hint}")
    ns, extras = parser.parse_known_args(argv)
    if extras:
        command = commands[ns.command]
        options = [o for o in {*command._option_string_actions, *parser._option_string_actions} if o.startswith("--")]
        first = extras[0]
        if first.startswith("-"):
            command.error(f"unknown option {first.split('=', 1)[0]}{_suggest(first.split('=', 1)[0], options)}")
        command.error(f"unexpected argument '{first}'")
    return ns


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
    """Flags over environment over defaults; a bad value names its flag and variable."""
    try:
        return Settings(**_flags(ns))
    except ValidationError as e:
        first = e.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        raise ConfigError(f"invalid {_where(name)}: {first['msg']}") from None


def _where(name: str) -> str:
    """How a user sets a Settings field: its flag and variable, or the variable alone (no flag)."""
    if name in _ENV_OF:
        return f"--{name.replace('_', '-')} / {_ENV_OF[name]}"
    return env_name(name) or name or "settings"


def _progress_every(ns: argparse.Namespace) -> float:
    """RUNNER_PROGRESS_EVERY, read through Settings, for a command that makes its other settings later.

    A spec run validates its settings with the spec's limits over the environment, so here only this
    field's own error stops the command; the others' are left for the spec run to judge as before.
    """
    flags = _flags(ns)
    for _ in range(len(Settings.model_fields)):
        try:
            return Settings(**flags).progress_every
        except ValidationError as e:
            bad = {str(x["loc"][0]) for x in e.errors() if x["loc"]}
            if "progress_every" in bad or not bad:
                raise ConfigError(f"invalid {_where('progress_every')}: {e.errors()[0]['msg']}") from None
            # Put a default over each other variable in error (it does not matter for the display).
            flags.update({k: Settings.model_fields[k].default for k in bad})
    return DEFAULT_PROGRESS_EVERY


# -- printing -------------------------------------------------------------------------------------


def _say(text: str) -> None:
    """A message on stderr (no markup, no emoji codes: parts of it may come from outside, escaped by callers)."""
    err.out(text, highlight=False)


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


def job_state(st: JobStats) -> str:
    """A job's status in words: a finished job whose every line failed is `failed`, not `completed`."""
    failed = count(st.counts, RequestState.FAILED)
    status = st.status
    if status is JobStatus.COMPLETED:
        if not failed:
            return JobStatus.COMPLETED.value
        ok = count(st.counts, *RESULTS)
        return RequestState.FAILED.value if not ok else f"done, {failed:,} failed"
    text = status.value.replace("_", " ")
    return f"{text}, {failed:,} failed" if failed and status is not JobStatus.CANCELLED else text


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def print_stats(st: JobStats, out: Callable[[str], None]) -> None:
    """Human-readable figures of one job."""
    d = stats_json(st)
    c, u = d["counts"], d["usage"]
    out(f"job {d['job_id']} ({printable(d['name'])}) · {d['total']} requests · {job_state(st)}")
    out(
        "  "
        + " · ".join(
            f"{k.replace('_', ' ')} {c.get(k, 0)}"
            for k in (s.value for s in RequestState)  # the order of the flow: queued first, cancelled last
        )
    )
    retries = max(d["attempts"] - sum(v for k, v in c.items() if k != RequestState.QUEUED.value), 0)
    out(f"  attempts {d['attempts']} ({retries} retries) · rate limited {d['rate_limited']}")
    out(
        f"  usage: input {u['input_tokens']:,} · cached {u['cached_tokens']:,} · output {u['output_tokens']:,}"
        f" · reasoning {u['reasoning_tokens']:,} · total {u['total_tokens']:,}"
    )
    if d["elapsed_seconds"] is not None:
        rate = f" · {d['throughput_rps']:.1f} requests/s" if d["throughput_rps"] else ""
        out(f"  elapsed {d['elapsed_seconds']:.1f} s{rate}")
    if d["in_flight_by_owner"] or d["stale_leases"]:
        owners = ", ".join(f"{printable(o)}: {n}" for o, n in d["in_flight_by_owner"].items()) or "none"
        out(f"  in flight by runner: {owners} · stale leases {d['stale_leases']}")


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")


# -- commands -------------------------------------------------------------------------------------


MAX_WARNINGS_SHOWN = 20  # per file: a key repeated on every line of a big file must not flood the terminal


def cmd_submit(ns: argparse.Namespace) -> int:
    warned: dict[str, int] = {}

    def warn(source: str, p: LineProblem) -> None:
        warned[source] = n = warned.get(source, 0) + 1
        if n <= MAX_WARNINGS_SHOWN:
            _say(f"warning: {printable(source)}:{p}")

    results = _run_async(
        lambda: app.submit_many(
            ns.files,
            name=ns.name,
            background=ns.background,
            model=ns.model,
            lenient=ns.lenient,
            new=ns.new,
            db=ns.db,
            on_warning=warn,
        )
    )
    for source, n in warned.items():
        if n > MAX_WARNINGS_SHOWN:
            more = n - MAX_WARNINGS_SHOWN
            _say(f"warning: {printable(source)}: {more} more warning(s) not shown")
    for res in results:
        src = printable(res.source)
        if res.existing:
            _say(f"{src} was submitted before with the same options: job {res.job_id} (use --new for a separate job)")
        else:
            _say(f"queued {res.total} requests from {src}")
    for res in results:
        _print(res.job_id)
    return EXIT_OK


def cmd_convert(ns: argparse.Namespace) -> int:
    counts = app.convert(ns.file, ns.output, drop_unsupported=ns.drop_unsupported)
    src = "standard input" if ns.file == "-" else printable(ns.file)
    dst = printable(ns.output or "stdout")
    _say(f"converted {counts.lines} lines from {src} to {dst}")
    for key, n in sorted(counts.dropped.items()):
        _say(f"dropped {printable(key)} from {n} line(s): the Responses API has no counterpart")
    return EXIT_OK


def _fit_open_files(concurrency: int, *, lower: bool = True) -> int:
    """Make room for `concurrency` connections under RLIMIT_NOFILE: raise the soft limit toward the hard one,
    else lower the concurrency with a warning (running out of descriptors mid-run fails requests and the store)."""
    poll_slots = max(4, min(concurrency, 256))
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
        _say(f"warning: only {soft} open files allowed (ulimit -n); concurrency lowered from {concurrency} to {fitted}")
        return fitted
    return concurrency


def _choose_jobs(ns: argparse.Namespace) -> list[str] | None:
    """The jobs a plain `runner run` resumes, each named on stderr; jobs untouched for STALE_AFTER_DAYS are
    skipped and named too (an old, half-done job should not start spending again unasked). None: nothing."""
    now = time.time()
    chosen: list[str] = []
    for st in _run_async(lambda: app.jobs(db=ns.db)):
        if st.job.cancelled_at is not None or st.status not in (JobStatus.QUEUED, JobStatus.IN_PROGRESS):
            continue
        last = max(st.job.created_at, st.first_started or 0.0, st.last_finished or 0.0)
        name = printable(st.job.name)
        left = st.job.total - st.finished
        if now - last > STALE_AFTER_DAYS * 86400:
            _say(
                f"skipping {st.job.id} ({name}): unfinished, untouched since {_when(last)};"
                f" `runner run {st.job.id}` resumes it"
            )
            continue
        verb = "resuming" if st.attempts else "starting"
        _say(f"{verb} {st.job.id} ({name}): {left:,} of {st.job.total:,} requests left")
        chosen.append(st.job.id)
    return chosen or None


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


def cmd_run(ns: argparse.Namespace) -> int:
    specs = [a for a in ns.job_ids if a.endswith(".toml")]
    if specs:
        if len(ns.job_ids) != 1:
            raise ConfigError("give one job spec (.toml) or job ids, not both")
        return _run_spec(ns, specs[0])
    settings = _settings(ns)
    fitted = _fit_open_files(settings.concurrency)
    if fitted != settings.concurrency:
        settings = settings.model_copy(update={"concurrency": fitted})
    ids = ns.job_ids or _choose_jobs(ns)
    if ids is None:
        _say("nothing to run: no recent job has queued requests")
        return EXIT_OK
    with ProgressView(ns.quiet, every=settings.progress_every) as view:
        outcome = _run_async(lambda: app.run(ids, settings, on_progress=view, handle_signals=True))
        view.finish(outcome.result.snapshot if outcome.stats else None, _next_steps(outcome))
    for st in outcome.stats:
        print_stats(st, _print)
    stopped = _stop_verdict(outcome)
    if stopped is not None:
        return stopped
    if not outcome.stats:
        _say("nothing to run: no job has queued requests")
    return EXIT_FAILED if outcome.failed else EXIT_OK


def _run_spec(ns: argparse.Namespace, path: str) -> int:
    """`runner run SPEC.toml`: submit (or resume today's job), run, export, report; exit by the spec's policy."""
    overrides = _flags(ns)
    db = overrides.pop("db", None)
    if "concurrency" in overrides:
        overrides["concurrency"] = _fit_open_files(overrides["concurrency"])
    else:  # the spec's own value is read later: make room for the largest allowed, without lowering anything
        _fit_open_files(MAX_CONCURRENCY, lower=False)
    with ProgressView(ns.quiet, every=_progress_every(ns)) as view:
        done = _run_async(
            lambda: app.run_spec(
                path, overrides=overrides, db=db, on_progress=view, handle_signals=True, prices=ns.prices
            )
        )
        view.finish(done.run.result.snapshot if done.run.stats else None, _next_steps(done.run))
    for j in done.jobs:
        if j.report is not None:
            _print(j.report.render_text())
        for label, p in (("results", j.results), ("errors", j.errors), ("report", j.report_file)):
            if p is not None:
                _print(f"  {label}: {printable(os.path.normpath(p))}")
    stopped = _stop_verdict(done.run)
    if stopped is not None:
        return stopped
    if done.over_threshold:
        rate = done.spec.policy.max_failure_rate
        _say(f"failed: {done.failed} of {done.total} requests failed (the spec allows {rate:.2%})")
        return EXIT_FAILED
    return EXIT_OK


def _stop_verdict(outcome: app.RunOutcome) -> int | None:
    """The exit code of a run that stopped early (billing, signal), after saying so; None if it ran to the end."""
    r = outcome.result
    s = r.snapshot
    here = s.completed + s.incomplete + s.failed + s.cancelled
    _say(
        f"this run: {here} requests finished (completed {s.completed}, incomplete {s.incomplete},"
        f" failed {s.failed}, cancelled {s.cancelled}) in {s.elapsed:.1f} s; retries {s.retries},"
        f" rate limited {s.rate_limited}"
    )
    if r.reason is StopReason.BILLING:
        assert r.billing_error is not None
        e = r.billing_error
        _say(
            f"stopped: the API refused for billing reasons ({e.status} {printable(e.code)}: {printable(e.message)}). "
            "Unfinished requests stay queued; top up the account and run `runner run` again."
        )
        return EXIT_BILLING
    if r.reason is StopReason.DOOMED:
        assert r.doomed_error is not None
        _say(f"stopped: {printable(r.doomed_error.message)} (unfinished requests stay queued; run again after the fix)")
        return EXIT_DOOMED
    if r.reason is StopReason.INTERRUPTED:
        _say("interrupted: every result received is saved; `runner run` resumes.")
        return EXIT_SIGTERM if outcome.signal == signal.SIGTERM else EXIT_SIGINT
    return None


def _newest_job(db: str | None) -> str:
    all_jobs = _run_async(lambda: app.jobs(db=db))
    if not all_jobs:
        raise ConfigError("no job was submitted yet: give a JOB_ID or run `runner submit FILE` first")
    return all_jobs[-1].job.id


def cmd_report(ns: argparse.Namespace) -> int:
    job_id = ns.job_id or _newest_job(ns.db)
    rep = _run_async(lambda: app.report(job_id, db=ns.db, prices=ns.prices))
    _print(json.dumps(rep.to_json()) if ns.json else rep.render_text())
    return EXIT_OK


def cmd_show(ns: argparse.Namespace) -> int:
    from runner import show  # only this command renders a single request

    job_id = ns.job_id or _newest_job(ns.db)
    detail = _run_async(lambda: app.show(job_id, ns.custom_id, db=ns.db))
    _print(json.dumps(show.to_json(detail)) if ns.json else show.render_text(detail))
    return EXIT_OK


def cmd_status(ns: argparse.Namespace) -> int:
    job_id = ns.job_id or _newest_job(ns.db)
    st = _run_async(lambda: app.status(job_id, db=ns.db))
    if ns.json:
        _print(json.dumps(stats_json(st)))
    else:
        print_stats(st, _print)
    return EXIT_OK


def cmd_jobs(ns: argparse.Namespace) -> int:
    all_jobs = _run_async(lambda: app.jobs(db=ns.db))
    if ns.json:
        _print(json.dumps([stats_json(s) for s in all_jobs]))
        return EXIT_OK
    if not all_jobs:
        _say("no jobs")
        return EXIT_OK
    rows = [("JOB", "CREATED", "STATUS", "DONE", "TOKENS")]
    names = ["NAME"]
    for st in all_jobs:
        rows.append(
            (
                st.job.id,
                _when(st.job.created_at),
                job_state(st),
                f"{st.finished:,}/{st.job.total:,}",
                f"{st.usage.total_tokens:,}",
            )
        )
        names.append(printable(st.job.name))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row, name in zip(rows, names, strict=True):
        cells = [c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        _print("  ".join([*cells, name]))
    return EXIT_OK


def cmd_export(ns: argparse.Namespace) -> int:
    job_id = ns.job_id or _newest_job(ns.db)
    counts = _run_async(lambda: app.export(job_id, ns.output, errors=ns.errors, fmt=ns.format, db=ns.db))
    where = printable(ns.output) if ns.output else "stdout"
    msg = f"exported {counts.results} lines of {job_id} to {where}"
    if ns.errors:
        msg += f", {counts.errors} to {printable(ns.errors)}"
    if counts.unfinished:
        msg += f"; {counts.unfinished} requests are not finished yet and were left out"
    _say(msg)
    return EXIT_OK


def cmd_cancel(ns: argparse.Namespace) -> int:
    settings = _settings(ns)
    res = _run_async(lambda: app.cancel(ns.job_id, settings))
    if res.doomed is not None:
        _say(
            f"cancelled {res.cancelled_queued} queued requests of job {ns.job_id}; running background responses"
            f" were not cancelled: {printable(res.doomed.message)}"
        )
        return EXIT_DOOMED
    # One summary line whatever the number of requests: its count is what `runner status` now shows.
    parts = [
        f"cancelled {res.cancelled} requests of job {ns.job_id}"
        f" ({res.cancelled_queued} queued, {res.cancelled_in_flight} in flight)"
    ]
    if res.finished_first:
        parts.append(f"{res.finished_first} had finished before their cancel and keep their result")
    if res.still_running:
        parts.append(f"{res.still_running} are still stopping (`runner run` records how they end)")
    if res.cancel_failures:
        parts.append(f"{len(res.cancel_failures)} could not be cancelled (first: {printable(res.cancel_failures[0])})")
    _say("; ".join(parts))
    return EXIT_FAILED if res.cancel_failures else EXIT_OK


def cmd_retry(ns: argparse.Namespace) -> int:
    n = _run_async(lambda: app.retry(ns.job_id, db=ns.db))
    _say(f"{n} failed requests queued again; `runner run {printable(ns.job_id)}` sends them")
    return EXIT_OK


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")  # pragma: no cover


def _confirm_delete(chosen: list[JobRow]) -> bool:
    """Show the jobs about to go and ask on the terminal."""
    requests = sum(j.total for j in chosen)
    _say(f"about to delete {len(chosen)} job(s), {requests} requests, with their results:")
    for j in chosen:
        created = dt.datetime.fromtimestamp(j.created_at).strftime("%Y-%m-%d %H:%M")
        _say(f"  {j.id}  {created}  {j.total:>7} requests  {printable(j.name)}")
    err.print("delete them? [y/N] ", markup=False, end="")
    try:
        answer = input()
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def cmd_delete(ns: argparse.Namespace) -> int:
    if not ns.job_ids and ns.older_than is None:
        raise ConfigError("delete: give JOB_ID ... or --older-than DURATION")
    if ns.job_ids and ns.older_than is not None:
        raise ConfigError("delete: give JOB_ID ... or --older-than DURATION, not both")
    older_than = duration(ns.older_than, "--older-than") if ns.older_than is not None else None
    if not ns.yes and not sys.stdin.isatty():
        raise ConfigError("delete: refusing to delete without confirmation (stdin is not a terminal); pass --yes")
    res = _run_async(
        lambda: app.delete(ns.job_ids, older_than=older_than, confirm=None if ns.yes else _confirm_delete, db=ns.db)
    )
    if not res.jobs:
        _say(f"no job was created more than {printable(ns.older_than)} ago; nothing deleted")
        return EXIT_OK
    if not res.deleted:
        _say("nothing deleted")
        return EXIT_OK
    for j in res.jobs:
        _print(j.id)
    _say(
        f"deleted {len(res.jobs)} job(s) and {res.requests} requests; the store went from"
        f" {_size(res.size_before)} to {_size(res.size_after)}"
    )
    return EXIT_OK


def cmd_doctor(ns: argparse.Namespace) -> int:
    rep = _run_async(lambda: app.doctor(fix=ns.fix, db=ns.db))
    h = rep.health
    _print(f"integrity_check: {printable(rep.integrity)}")
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
    "convert": cmd_convert,
    "run": cmd_run,
    "status": cmd_status,
    "jobs": cmd_jobs,
    "export": cmd_export,
    "cancel": cmd_cancel,
    "retry": cmd_retry,
    "doctor": cmd_doctor,
    "report": cmd_report,
    "delete": cmd_delete,
    "show": cmd_show,
}


class _StoreNotices(logging.Handler):
    """Says which store a command uses, once per path: "created store PATH" always, "using store PATH" at -v."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[object] = set()

    def emit(self, record: logging.LogRecord) -> None:
        path = record.args[0] if isinstance(record.args, tuple) and record.args else record.msg
        if path not in self._seen:
            self._seen.add(path)
            _say(printable(record.getMessage()))


def _show_store_notices(verbose: bool) -> None:
    notices = logging.getLogger("runner.store.place")
    notices.setLevel(logging.DEBUG if verbose else logging.INFO)
    notices.propagate = False
    notices.addHandler(_StoreNotices())


# -- settings and logging -------------------------------------------------------------------------


class _LogFormatter(logging.Formatter):
    """Text or JSON log lines; text from outside is escaped, and the API key never appears."""

    def __init__(self, style: str, secret: str | None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.json = style == "json"
        self.secret = secret

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if self.json:
            doc: dict[str, Any] = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": message,
            }
            if record.exc_info:
                doc["exception"] = self.formatException(record.exc_info)
            text = json.dumps(doc, ensure_ascii=False)  # JSON escapes control characters and newlines
        else:
            plain = logging.makeLogRecord({**record.__dict__, "msg": printable(message), "args": None})
            text = super().format(plain)
        return text.replace(self.secret, "***") if self.secret else text


class _LogHandler(logging.Handler):
    """Log lines through the console, so that they appear above the live display instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _say(self.format(record))
        except Exception:
            self.handleError(record)


def _setup_logging(ns: argparse.Namespace) -> None:
    level = ns.log_level or os.environ.get("RUNNER_LOG_LEVEL") or ("debug" if ns.verbose else "warning")
    style = ns.log_format or os.environ.get("RUNNER_LOG_FORMAT") or "text"
    if level not in LOG_LEVELS:
        raise ConfigError(f"invalid RUNNER_LOG_LEVEL {printable(level)!r}: use one of {', '.join(LOG_LEVELS)}")
    if style not in LOG_FORMATS:
        raise ConfigError(f"invalid RUNNER_LOG_FORMAT {printable(style)!r}: use one of {', '.join(LOG_FORMATS)}")
    secret = getattr(ns, "api_key", None) or os.environ.get("OPENAI_API_KEY") or None
    handler = _LogHandler()
    handler.setFormatter(_LogFormatter(style, secret))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Request bodies and keys must never reach a log line, whatever the level.
    for noisy in ("httpx", "httpcore", "aiohttp", "sqlalchemy", "aiosqlite", "alembic", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- entry point ----------------------------------------------------------------------------------


def _quiet_stdout() -> None:
    """stdout's reader went away: send what is left to /dev/null so the exit does not complain either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _is_broken_pipe(e: BaseException) -> bool:
    if isinstance(e, BrokenPipeError):
        return True
    return isinstance(e, BaseExceptionGroup) and e.subgroup(BrokenPipeError) is not None


def _dispatch(ns: argparse.Namespace) -> tuple[int, str | None]:
    """Run the command; its exit code and the one-line message to end with, if any."""
    try:
        _setup_logging(ns)
        _show_store_notices(ns.verbose)
        return COMMANDS[ns.command](ns), None
    except KeyboardInterrupt:
        return interrupt.exit_code(), interrupt.MESSAGE.removeprefix("runner: ")
    except InputError as e:
        return EXIT_USAGE, e.render()
    except (ConfigError, JobNotFound, JobBusy, StoreUnavailable) as e:
        return EXIT_USAGE, str(e)
    except RunnerError as e:
        if ns.verbose:
            raise
        return EXIT_FAILED, str(e)
    except (OSError, BaseExceptionGroup) as e:
        if _is_broken_pipe(e):
            _quiet_stdout()
            return EXIT_PIPE, None
        if ns.verbose or not isinstance(e, OSError):
            raise
        return EXIT_FAILED, f"{type(e).__name__}: {e}"


def _fail(message: str, code: int) -> NoReturn:
    _say(
        "\n".join(
            f"runner: {printable(line)}" if i == 0 else printable(line) for i, line in enumerate(message.split("\n"))
        )
    )
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `runner` command (through runner.__main__, which arms the signals first)."""
    interrupt.leave_at_once()
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "mock-server":
        # The fake API is a package of its own (runner_mock, in the same wheel) that runner never imports:
        # this process becomes it, keeping its pid, so whoever started it can still stop it with a signal.
        os.execv(sys.executable, [sys.executable, "-m", "runner_mock", *args[1:]])
    ns = parse_args(args)
    interrupt.unwind()
    code, message = _dispatch(ns)
    interrupt.leave_at_once()  # from here on there is nothing left to close: a signal just ends the exit
    if message is not None:
        _fail(message, code)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
        code = EXIT_PIPE
    sys.exit(code)
