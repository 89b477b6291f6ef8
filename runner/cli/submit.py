"""Putting work in: `runner submit` (JSONL files into jobs) and `runner convert` (Chat Completions lines)."""

from __future__ import annotations

import argparse
import sys

from runner import app
from runner.cli import options
from runner.cli.command import Command
from runner.cli.exits import ExitCode
from runner.cli.manage import duration
from runner.cli.output import put, run_async, say
from runner.errors import ConfigError, LineProblem
from runner.term import printable

MAX_WARNINGS_SHOWN = 20  # per file: a key repeated on every line of a big file must not flood the terminal


def _submit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="JSONL: OpenAI Batch lines or bare Create Response bodies; gzip is fine; '-' reads stdin",
    )
    p.add_argument(
        "--name", type=options.job_name, help="a name for the job (default: the file's name; several files: NAME-FILE)"
    )
    p.add_argument("--background", action="store_true", help="send every line with background: true, store: true")
    p.add_argument("--model", type=options.not_blank, help="model for lines that name none")
    p.add_argument(
        "--lenient",
        action="store_true",
        help="unknown enum values, misspelled and Chat Completions keys are warnings, not errors",
    )
    p.add_argument("--new", action="store_true", help="always make a new job, even for a file submitted before")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="complete lines already answered in the store (same model and every field that shapes the answer)"
        " from the stored answer, without a request",
    )
    p.add_argument(
        "--reuse-max-age",
        metavar="DURATION",
        help="with --reuse: reuse only answers at most this old (30m, 12h, 7d, 2w)",
    )
    p.add_argument(
        "--no-cache-keys",
        dest="cache_keys",
        action="store_false",
        help="send lines in file order, without a prompt_cache_key per group of lines that share a long prompt"
        " prefix (default: grouped, see README 'Paying less: the prompt cache')",
    )
    options.db(p)


def _submit(ns: argparse.Namespace) -> ExitCode:
    warned: dict[str, int] = {}

    def warn(source: str, p: LineProblem) -> None:
        warned[source] = n = warned.get(source, 0) + 1
        if n <= MAX_WARNINGS_SHOWN:
            say(f"warning: {printable(source)}:{p}", level="warning")

    if ns.reuse_max_age is not None and not ns.reuse:
        raise ConfigError("--reuse-max-age needs --reuse")
    max_age = duration(ns.reuse_max_age, "--reuse-max-age") if ns.reuse_max_age is not None else None
    results = run_async(
        lambda: app.submit_many(
            ns.files,
            name=ns.name,
            background=ns.background,
            model=ns.model,
            lenient=ns.lenient,
            new=ns.new,
            db=ns.db,
            on_warning=warn,
            reuse=ns.reuse,
            reuse_max_age=max_age,
            cache_keys=ns.cache_keys,
        )
    )
    for source, n in warned.items():
        if n > MAX_WARNINGS_SHOWN:
            more = n - MAX_WARNINGS_SHOWN
            say(f"warning: {printable(source)}: {more} more warning(s) not shown", level="warning")
    for res in results:
        src = printable(res.source)
        if res.existing:
            # The job keeps the name it was given then: a --name that says otherwise is not applied, and saying
            # nothing left the user looking for a job of that name.
            kept = (
                ""
                if res.name_not_taken is None
                else f", named {printable(res.name)!r}, not {printable(res.name_not_taken)!r}"
            )
            say(
                f"{src} was submitted before with the same options: job {res.job_id}{kept}"
                " (use --new for a separate job)"
            )
        elif ns.reuse:
            say(f"queued {res.total - res.reused} requests from {src}; {res.reused} answered from the store (reused)")
        else:
            say(f"queued {res.total} requests from {src}")
    ids = [res.job_id for res in results]
    try:
        for job_id in ids:
            put(job_id)
        sys.stdout.flush()  # here, while what it means for the jobs can still be said
    except OSError as e:
        refused = app.refused_output(e)
        if refused is None:
            raise
        # The jobs are in the store: their ids go to stderr, not lost with the line that failed.
        again = "" if ns.new else " (submitting the same again gives back the same id)"
        queued = f"queued all the same: {', '.join(ids)}"
        raise ConfigError(f"{refused}; {queued}{again}") from None
    return ExitCode.OK


def _convert_options(p: argparse.ArgumentParser) -> None:
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


def _convert(ns: argparse.Namespace) -> ExitCode:
    counts = app.convert(ns.file, ns.output, drop_unsupported=ns.drop_unsupported)
    src = "standard input" if ns.file == "-" else printable(ns.file)
    dst = printable(ns.output or "stdout")
    say(f"converted {counts.lines} lines from {src} to {dst}")
    for key, n in sorted(counts.dropped.items()):
        say(f"dropped {printable(key)} from {n} line(s): the Responses API has no counterpart")
    return ExitCode.OK


SUBMIT = Command(
    "submit",
    "queue JSONL files, one job each (all or none); prints the job ids last, one per line",
    _submit_options,
    _submit,
)
CONVERT = Command("convert", "rewrite Chat Completions JSONL lines as Responses API lines", _convert_options, _convert)
