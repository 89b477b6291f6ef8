"""Small faults of `runner run` a user saw: a job named twice, a refusal after "resuming ...", a global-option
mistake, budgets shown with too few digits, infinite numbers, a missing key, a key with a line end."""

from __future__ import annotations

import pytest

from tests.conftest import Cli, MockServer, run_args, write_jobfile

pytestmark = pytest.mark.e2e


def test_a_job_named_twice_runs_and_reports_once(cli: Cli, mock_factory: object) -> None:
    mock: MockServer = mock_factory()  # type: ignore[operator]
    job = cli.submit(write_jobfile(cli.db.parent / "in.jsonl", 3))

    r = cli("run", job, job, *run_args(mock), "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(f"job {job} ") == 1, r.stdout
    assert mock.stats()["creates"] == 3
    assert cli.status(job)["counts"]["completed"] == 3


def test_processes_refused_before_a_job_is_said_to_resume(cli: Cli, mock_factory: object) -> None:
    mock: MockServer = mock_factory("--batch-run-delay", "30")  # type: ignore[operator]
    job = cli.submit(write_jobfile(cli.db.parent / "in.jsonl", 3))
    r = cli("run", *run_args(mock), "--lane", "batch", "--detach", "--quiet")
    assert r.returncode == 0, r.stderr

    r = cli("run", *run_args(mock), "--processes", "2", "--concurrency", "4", "--quiet")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "runner: --processes 2: these jobs have batches open from a batch-lane run; collect them first with"
        " `runner run` in one process"
    ], r.stderr
    assert job not in r.stderr  # not "resuming JOB ..." first
    assert cli.status(job)["counts"]["in_progress"] == 3


def test_a_missing_key_is_refused_before_a_job_is_said_to_start(cli: Cli) -> None:
    job = cli.submit(write_jobfile(cli.db.parent / "in.jsonl", 2))
    r = cli("run", "--quiet")  # api.openai.com, no OPENAI_API_KEY
    assert r.returncode == 2
    assert r.stderr == "runner: OPENAI_API_KEY is not set (or pass --api-key)\n"
    assert cli.status(job)["counts"]["queued"] == 2


def test_a_key_with_its_line_end_runs_and_one_with_a_line_break_inside_is_refused(
    cli: Cli, mock_factory: object
) -> None:
    # The key as a Kubernetes secret or a key file gives it: a trailing newline crashed the run with a traceback.
    mock: MockServer = mock_factory("--api-key", "sk-abc")  # type: ignore[operator]
    job = cli.submit(write_jobfile(cli.db.parent / "in.jsonl", 2))
    r = cli("run", job, *run_args(mock), "--quiet", extra_env={"OPENAI_API_KEY": "sk-abc\n"})
    assert r.returncode == 0, r.stderr
    assert cli.status(job)["counts"]["completed"] == 2  # the server took it: sent as sk-abc

    other = cli.submit(write_jobfile(cli.db.parent / "more.jsonl", 2, extra={"metadata": {"n": "2"}}))
    r = cli("run", other, *run_args(mock), "--quiet", extra_env={"OPENAI_API_KEY": "sk-a\nbc"})
    assert r.returncode == 2
    assert r.stderr == (
        "runner: OPENAI_API_KEY (or --api-key) has a control character inside: no HTTP header can carry it"
        " (check how the key was copied)\n"
    )
    assert cli.status(other)["counts"]["queued"] == 2
    assert mock.stats()["creates"] == 2  # the first job's only


def test_a_command_option_before_the_command_is_named(cli: Cli) -> None:
    cli.submit(write_jobfile(cli.db.parent / "in.jsonl", 1))
    only = "only -v, --db, --log-level and --log-format go before the command"

    r = cli("--concurrency", "4", "status")
    assert r.returncode == 2
    assert r.stderr == (
        "runner: --concurrency goes after the command, and `runner status` does not take it (it is an option of"
        f" run; {only}) (see `runner --help`)\n"
    )
    r = cli("--db", str(cli.db), "--max-cost=1", "run")
    assert r.returncode == 2
    said = f"runner: --max-cost goes after the command: `runner run --max-cost ...` ({only}) (see `runner --help`)\n"
    assert r.stderr == said

    # The global options still go before it, shortened too as argparse allows (`--d x` was "unknown command 'x'").
    r = cli("--d", str(cli.db), "--log-level=info", "status")
    assert r.returncode == 0, r.stderr
    assert "1 requests" in r.stdout


def test_a_small_budget_is_shown_with_enough_digits(cli: Cli, mock_factory: object) -> None:
    mock: MockServer = mock_factory()  # type: ignore[operator]
    body = {"model": "gpt-4.1-mini", "max_output_tokens": 1000}  # ~$0.0016 at most each: over the budget
    job = cli.submit(write_jobfile(cli.db.parent / "in.jsonl", 2, extra=body))

    r = cli("run", job, *run_args(mock), "--quiet", "--max-cost", "0.00005")
    assert r.returncode == 4, r.stderr
    stop = r.stderr.splitlines()[-1]
    assert stop.startswith("stopped at the budget: spent $0.0000 of $0.000050, $0.000050 left,"), stop
    assert cli.status(job)["counts"]["queued"] == 2


def test_the_azure_auth_style_without_a_key_sends_nothing(cli: Cli, mock_factory: object) -> None:
    mock: MockServer = mock_factory()  # type: ignore[operator]
    job = cli.submit(write_jobfile(cli.db.parent / "in.jsonl", 2))

    r = cli("run", job, *run_args(mock), "--auth-style", "api-key")
    assert r.returncode == 2
    assert r.stderr == "runner: --auth-style api-key needs a key: OPENAI_API_KEY is not set (or pass --api-key)\n"
    assert mock.stats()["creates"] == 0
    assert cli.status(job)["counts"]["queued"] == 2


def test_flex_capacity_waits_are_no_retries_in_the_run_or_in_status(cli: Cli, mock_factory: object) -> None:
    mock: MockServer = mock_factory("--flex-busy", "2")  # type: ignore[operator]
    job = cli.submit(write_jobfile(cli.db.parent / "in.jsonl", 3))

    r = cli("run", job, *run_args(mock), "--lane", "flex", "--quiet")
    assert r.returncode == 0, r.stderr
    assert mock.stats()["faults"]["capacity"] == 2  # two were answered "no capacity" and sent again
    assert r.stderr.splitlines()[-1].endswith("; retries 0, rate limited 0"), r.stderr
    assert "  attempts 3 (0 retries) · rate limited 0" in cli("status", job).stdout.splitlines()
