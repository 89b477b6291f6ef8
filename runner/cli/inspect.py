"""Reading jobs: `runner status`, `jobs`, `show`, `report` and `export`."""

from __future__ import annotations

import argparse
import json

from runner import DISTRIBUTION, app
from runner.cli import options
from runner.cli.command import Command, newest_job
from runner.cli.exits import ExitCode
from runner.cli.options import setting
from runner.cli.output import put, run_async, say, when
from runner.term import printable


def _json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _status_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", nargs="?", metavar="JOB_ID")
    _json_option(p)
    options.db(p)


def _status(ns: argparse.Namespace) -> ExitCode:
    job_id = ns.job_id or newest_job(ns.db)
    status = run_async(lambda: app.status_report(job_id, db=ns.db))
    put(json.dumps(status.to_json()) if ns.json else status.render_text())
    return ExitCode.OK


def _jobs_options(p: argparse.ArgumentParser) -> None:
    _json_option(p)
    options.db(p)


def _jobs(ns: argparse.Namespace) -> ExitCode:
    all_jobs = run_async(lambda: app.jobs(db=ns.db))
    if ns.json:
        put(json.dumps([app.JobStatusReport(s).to_json() for s in all_jobs]))
        return ExitCode.OK
    if not all_jobs:
        say("no jobs")
        return ExitCode.OK
    rows = [("JOB", "CREATED", "STATUS", "DONE", "TOKENS")]
    names = ["NAME"]
    for st in all_jobs:
        rows.append(
            (
                st.job.id,
                when(st.job.created_at),
                app.job_state(st),
                f"{st.finished:,}/{st.job.total:,}",
                f"{st.usage.total_tokens:,}",
            )
        )
        names.append(printable(st.job.name))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row, name in zip(rows, names, strict=True):
        cells = [c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        put("  ".join([*cells, name]))
    return ExitCode.OK


def _export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", nargs="?", metavar="JOB_ID", help="default: the newest job")
    p.add_argument("-o", "--output", help="output file (default: stdout)")
    p.add_argument("--errors", help="write failed and cancelled lines to this file instead")
    p.add_argument(
        "--format",
        default="batch",
        choices=list(app.FORMATS),
        help="batch: OpenAI Batch output lines (default); jsonl-flat, csv and parquet: each answer joined with"
        " its input (custom_id, line, model, instructions, input text, status, output_text, the five usage"
        " counts, error, and the metadata: one metadata.KEY column per key in csv and parquet; parquet needs"
        f" pyarrow: pip install '{DISTRIBUTION}[parquet]')",
    )
    options.db(p)


def _export(ns: argparse.Namespace) -> ExitCode:
    job_id = ns.job_id or newest_job(ns.db)
    counts = run_async(lambda: app.export(job_id, ns.output, errors=ns.errors, fmt=ns.format, db=ns.db))
    for warning in counts.warnings:
        say(f"warning: {printable(warning)}", level="warning")
    where = printable(ns.output) if ns.output and ns.output != "-" else "stdout"
    msg = f"exported {counts.results} lines of {job_id} to {where}"
    if ns.errors:
        msg += f", {counts.errors} to {printable(ns.errors) if ns.errors != '-' else 'stdout'}"
    if counts.unfinished:
        msg += f"; {counts.unfinished} requests are not finished yet and were left out"
    say(msg)
    return ExitCode.OK


def _show_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", nargs="?", metavar="JOB_ID", help="default: the newest job")
    p.add_argument("custom_id", metavar="CUSTOM_ID", help="the line's custom_id (line-N for bare-body lines)")
    _json_option(p)
    options.db(p)


def _show(ns: argparse.Namespace) -> ExitCode:
    from runner import show  # only this command renders a single request

    job_id = ns.job_id or newest_job(ns.db)
    detail = run_async(lambda: app.show(job_id, ns.custom_id, db=ns.db))
    put(json.dumps(show.to_json(detail)) if ns.json else show.render_text(detail))
    return ExitCode.OK


def _report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", nargs="?", metavar="JOB_ID", help="default: the newest job")
    _json_option(p)
    p.add_argument("--html", metavar="PATH", help="also write the report as one self-contained HTML page with charts")
    setting(p, "prices", help="price table TOML overriding the shipped one")
    options.db(p)


def _report(ns: argparse.Namespace) -> ExitCode:
    job_id = ns.job_id or newest_job(ns.db)
    rep = run_async(lambda: app.report(job_id, db=ns.db, prices=ns.prices, html=ns.html))
    put(json.dumps(rep.to_json()) if ns.json else rep.render_text())
    if ns.html:
        say(f"wrote the HTML report to {printable(ns.html)}")
    return ExitCode.OK


STATUS = Command("status", "counts, usage and timing of a job (default: the newest)", _status_options, _status)
JOBS = Command("jobs", "list jobs, oldest first, with when they were created", _jobs_options, _jobs)
EXPORT = Command("export", "write a job's results in the OpenAI Batch output format", _export_options, _export)
SHOW = Command(
    "show",
    "one request in full: the body as sent, every attempt, the final answer or error",
    _show_options,
    _show,
    description="Show one request: the body as sent, every attempt (time, HTTP status, code, message,"
    " request id) and the final answer or error in full. With one argument, the newest job is used.",
)
REPORT = Command(
    "report",
    "counts, usage, cost, latency percentiles, errors by code, slowest requests",
    _report_options,
    _report,
)
