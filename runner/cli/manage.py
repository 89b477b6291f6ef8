"""Looking after the store and its jobs: `runner cancel`, `retry`, `delete` and `doctor`."""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys

from runner import app
from runner.cli import options
from runner.cli.command import Command
from runner.cli.exits import ExitCode
from runner.cli.output import put, run_async, say
from runner.display import err
from runner.errors import ConfigError
from runner.term import printable

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(text: str, flag: str) -> float:
    """`7d`, `12h`, `30m`, `45s`, `2w` -> seconds; ConfigError naming `flag` otherwise."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise ConfigError(f"{flag}: {text!r} is not a duration (for example 30m, 12h, 7d, 2w)")
    return float(m[1]) * _UNIT_SECONDS[m[2]]


def _retry_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", metavar="JOB_ID")
    options.db(p)


def _retry(ns: argparse.Namespace) -> ExitCode:
    n = run_async(lambda: app.retry(ns.job_id, db=ns.db))
    # "finishes", not "sends": a request that failed as `poll_failed` is polled again, never sent again.
    say(f"{n} failed requests queued again; `runner run {printable(ns.job_id)}` finishes them")
    return ExitCode.OK


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")  # pragma: no cover


def _confirm_delete(chosen: list[app.JobRow]) -> bool:
    """Show the jobs about to go and ask on the terminal."""
    requests = sum(j.total for j in chosen)
    say(f"about to delete {len(chosen)} job(s), {requests} requests, with their results:")
    for j in chosen:
        created = dt.datetime.fromtimestamp(j.created_at).strftime("%Y-%m-%d %H:%M")
        say(f"  {j.id}  {created}  {j.total:>7} requests  {printable(j.name)}")
    err.print("delete them? [y/N] ", markup=False, end="")
    try:
        answer = input()
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _delete_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="the jobs to delete")
    p.add_argument(
        "--older-than",
        metavar="DURATION",
        help="delete every job created longer ago than this: 30m, 12h, 7d, 2w",
    )
    p.add_argument("--yes", action="store_true", help="do not ask (required when stdin is not a terminal)")
    options.db(p)


def _delete(ns: argparse.Namespace) -> ExitCode:
    if not ns.job_ids and ns.older_than is None:
        raise ConfigError("delete: give JOB_ID ... or --older-than DURATION")
    if ns.job_ids and ns.older_than is not None:
        raise ConfigError("delete: give JOB_ID ... or --older-than DURATION, not both")
    older_than = duration(ns.older_than, "--older-than") if ns.older_than is not None else None
    if not ns.yes and not sys.stdin.isatty():
        raise ConfigError("delete: refusing to delete without confirmation (stdin is not a terminal); pass --yes")
    res = run_async(
        lambda: app.delete(ns.job_ids, older_than=older_than, confirm=None if ns.yes else _confirm_delete, db=ns.db)
    )
    if not res.jobs:
        say(f"no job was created more than {printable(ns.older_than)} ago; nothing deleted")
        return ExitCode.OK
    if not res.deleted:
        say("nothing deleted")
        return ExitCode.OK
    for j in res.jobs:
        put(j.id)
    say(
        f"deleted {len(res.jobs)} job(s) and {res.requests} requests; the store went from"
        f" {_size(res.size_before)} to {_size(res.size_after)}"
    )
    return ExitCode.OK


def _doctor_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fix", action="store_true", help="requeue abandoned work and drop half-submitted jobs")
    options.db(p)


def _doctor(ns: argparse.Namespace) -> ExitCode:
    rep = run_async(lambda: app.doctor(fix=ns.fix, db=ns.db))
    h = rep.health
    put(f"integrity_check: {printable(rep.integrity)}")
    put(f"leases held by live runners: {h['live_leases']}")
    put(
        f"stale leases (runner gone): {h['stale_leases_unsent']} unsent -> would requeue,"
        f" {h['stale_leases_background']} background -> next run polls them"
    )
    put(
        f"in progress with no owner: {h['unowned_unsent']} unsent -> would requeue,"
        f" {h['unowned_background']} background -> next run polls them"
    )
    put(f"half-submitted jobs: {h['staging_jobs']} -> would drop those whose submit process is gone")
    if rep.fixed:
        put("fixed: " + ", ".join(f"{k} {v}" for k, v in rep.fixed.items()))
        return ExitCode.OK if rep.integrity == "ok" else ExitCode.FAILED
    if not rep.healthy:
        put("run `runner doctor --fix` to repair (a plain `runner run` also reclaims stale work)")
    return ExitCode.OK if rep.healthy else ExitCode.FAILED


RETRY = Command("retry", "put a job's failed requests back in the queue with fresh attempts", _retry_options, _retry)
DELETE = Command(
    "delete", "delete jobs and their results from the store, and reclaim the space", _delete_options, _delete
)
DOCTOR = Command("doctor", "check the store: integrity, stale leases, stuck requests", _doctor_options, _doctor)


def _cancel_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", metavar="JOB_ID")
    options.client(p)
    options.db(p)


def _cancel(ns: argparse.Namespace) -> ExitCode:
    settings = options.settings(ns)
    res = run_async(lambda: app.cancel(ns.job_id, settings))
    if res.doomed is not None:
        say(
            f"cancelled {res.cancelled_queued} queued requests of job {ns.job_id}; running background responses"
            f" were not cancelled: {printable(res.doomed.message)}"
        )
        return ExitCode.DOOMED
    # One summary line whatever the number of requests: its count is what `runner status` now shows.
    parts = [
        f"cancelled {res.cancelled} requests of job {ns.job_id}"
        f" ({res.cancelled_queued} queued, {res.cancelled_in_flight} in flight)"
    ]
    if res.finished_first:
        parts.append(f"{res.finished_first} had finished before their cancel and keep their result")
    if res.batches_cancelled:
        n = res.batches_cancelled
        parts.append(
            f"{n} batch{'es' if n != 1 else ''} cancelled, {res.batch_requests} requests in them not merged yet"
            f" (in progress until `runner run {ns.job_id}` merges what the batches finished and marks the rest"
            " cancelled)"
        )
    if res.still_running:
        parts.append(f"{res.still_running} are still stopping (`runner run` records how they end)")
    if res.cancel_failures:
        parts.append(f"{len(res.cancel_failures)} could not be cancelled (first: {printable(res.cancel_failures[0])})")
    say("; ".join(parts))
    return ExitCode.FAILED if res.cancel_failures else ExitCode.OK


CANCEL = Command("cancel", "cancel a job's queued and in-flight background requests", _cancel_options, _cancel)
