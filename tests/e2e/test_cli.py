"""The command line as a user meets it: escaped text from outside, the jobs table, export into a closed pipe,
global flags on either side of the command, did-you-mean, refused flag values, what a plain `runner run`
picks, JSON logs, and a concurrency above the open-file limit."""

from __future__ import annotations

import json
import re
import resource
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner import app
from tests.conftest import Cli, run_args, write_jobfile

pytestmark = pytest.mark.e2e

CLEAR, TITLE = "\x1b[2J", "\x1b]0;pwned\x07"


def _submit(cli: Cli, path: Path, name: str) -> str:
    """Set-up only, in this process: a new job (the CLI's own submit is tested elsewhere)."""
    return anyio.run(lambda: app.submit(path, name=name, new=True, db=str(cli.db))).job_id


def _counts(db: Path, job: str) -> dict[str, int]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return dict(conn.execute("select state, count(*) from requests where job_id=? group by state", (job,)))


def _sql(db: Path, sql: str, *args: Any) -> None:
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(sql, args)


def _fail_lines(db: Path, job: str, lines: range, code: str, message: str) -> None:
    """Requests finished as failed, with an error as a hostile server could have sent it."""
    for n in lines:
        _sql(
            db,
            "update requests set state='failed', attempts=1, http_status=400, error_code=?, error_message=?,"
            " started_at=?, finished_at=? where job_id=? and line_no=?",
            code,
            message,
            time.time() - 1,
            time.time(),
            job,
            n,
        )


def _complete_lines(db: Path, job: str, lines: range) -> None:
    for n in lines:
        _sql(
            db,
            "update requests set state='completed', attempts=1, http_status=200, started_at=?, finished_at=?"
            " where job_id=? and line_no=?",
            time.time() - 1,
            time.time(),
            job,
            n,
        )


def test_server_text_is_escaped_and_jobs_shows_dates_and_failures(cli: Cli, tmp_path: Path) -> None:
    src = write_jobfile(tmp_path / "in.jsonl", 6)
    mixed = _submit(cli, src, "eval")
    # A name with an escape in it, as a store of a runner from before names were checked may hold one.
    _sql(cli.db, "update jobs set name = ? where id = ?", f"eval{CLEAR}", mixed)
    dead = _submit(cli, src, "all-bad")
    message = f"the server says {TITLE}hello{CLEAR} and more"
    _fail_lines(cli.db, mixed, range(1, 4), f"bad{CLEAR}", message)
    _complete_lines(cli.db, mixed, range(4, 7))
    _fail_lines(cli.db, dead, range(1, 7), "invalid_request_error", "no")

    shown = {}
    for args in (("report", mixed), ("status", mixed), ("jobs",)):
        r = cli(*args)
        assert r.returncode == 0, r.stderr
        assert "\x1b" not in r.stdout + r.stderr and "\x07" not in r.stdout, (args, r.stdout)
        shown[args[0]] = r.stdout
    report = shown["report"]
    assert "bad\\x1b[2J ×3: the server says \\x1b]0;pwned\\x07hello\\x1b[2J and more" in report, report
    status = shown["status"]
    assert status.splitlines()[0] == f"job {mixed} (eval\\x1b[2J) · 6 requests · done, 3 failed", status

    lines = shown["jobs"].splitlines()
    assert lines[0].split() == ["JOB", "CREATED", "STATUS", "DONE", "TOKENS", "NAME"]
    today = time.strftime("%Y-%m-%d")
    by_id = {line.split()[0]: line for line in lines[1:]}
    assert set(by_id) == {mixed, dead}
    assert f"{today} " in by_id[mixed] and "done, 3 failed" in by_id[mixed] and "6/6" in by_id[mixed]
    assert by_id[dead].split()[3:5] == ["failed", "6/6"], by_id[dead]  # not "completed"


def test_export_defaults_to_the_newest_job_and_ends_quietly_when_the_pipe_closes(cli: Cli, tmp_path: Path) -> None:
    src = write_jobfile(tmp_path / "in.jsonl", 30)
    _submit(cli, src, "old")
    newest = _submit(cli, src, "new")
    _fail_lines(cli.db, newest, range(1, 31), "invalid_request_error", "x" * 2000)

    r = cli("export")
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["custom_id"] for x in r.stdout.splitlines()] == [f"c-{i:05d}" for i in range(1, 31)]
    assert f"exported 30 lines of {newest} to stdout" in r.stderr

    # `runner export | head -1`: the reader is gone before the export has written everything.
    p = subprocess.Popen(
        [sys.executable, "-m", "runner", "export"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli.environ(),
        cwd=tmp_path,
    )
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()
    with p.stderr:
        err = p.stderr.read().decode()
    assert p.wait(timeout=30) == 141, err
    assert err == ""


def test_global_flags_after_the_command_and_mistakes_get_one_line(cli: Cli, tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    job = anyio.run(lambda: app.submit(write_jobfile(tmp_path / "in.jsonl", 3), db=str(other))).job_id
    r = cli("status", "--json", "--db", str(other), "-v")  # RUNNER_DB points elsewhere: --db must win
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["job_id"] == job

    cases = {
        ("stauts",): "runner: unknown command 'stauts'; did you mean 'status'?",
        ("run", "--concurrency", "100000"): "runner run: argument --concurrency: must be a whole number from 1"
        " to 10,000 (got 100000)",
        # A port out of range: aiohttp found it only at the first request, a traceback from every sender.
        ("run", job, "--base-url", "http://127.0.0.1:99999/v1"): "runner: base URL is not a valid URL: Port out"
        " of range 0-65535",
        ("run", job, "--base-url", "http:///v1"): "runner: base URL names no host",
        ("submit", str(tmp_path)): f"runner: {tmp_path}: is a directory, not a file; nothing was queued",
    }
    for args, expected in cases.items():
        r = cli(*args, "--db", str(other))
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(expected), (args, r.stderr)
    # Nothing was changed: the job was not touched, no job was added.
    assert json.loads(cli("status", job, "--json", "--db", str(other)).stdout)["counts"]["queued"] == 3
    assert len(json.loads(cli("jobs", "--json", "--db", str(other)).stdout)) == 1


def test_plain_run_names_the_jobs_it_resumes_and_skips_old_ones_with_json_logs(
    cli: Cli, mock_factory: Any, tmp_path: Path
) -> None:
    key = "sk-test-never-printed-0123456789"
    mock = mock_factory("--api-key", key, "--p5xx", "0.3", "--seed", "3")
    src = write_jobfile(tmp_path / "in.jsonl", 8)
    old = _submit(cli, src, "last-month")
    recent = _submit(cli, src, "tonight")
    _sql(cli.db, "update jobs set created_at=? where id=?", time.time() - 30 * 86400, old)

    r = cli(
        "run",
        "--base-url",
        mock.base_url,
        "--quiet",
        "--log-level",
        "debug",
        "--log-format",
        "json",
        extra_env={"OPENAI_API_KEY": key},
    )
    assert r.returncode == 0, r.stderr
    assert f"starting {recent} (tonight): 8 of 8 requests left" in r.stderr
    assert f"skipping {old} (last-month): unfinished, untouched since" in r.stderr
    assert f"`runner run {old}` resumes it" in r.stderr
    assert _counts(cli.db, old) == {"queued": 8}
    assert _counts(cli.db, recent) == {"completed": 8}
    # Every line on stderr is one JSON object: the log lines, and what the run says (it said that as text).
    logs = [json.loads(line) for line in r.stderr.splitlines()]
    assert any(doc["level"] == "debug" for doc in logs), r.stderr  # the 503s were retried, and said so
    assert all({"time", "level", "logger", "message"} <= set(doc) for doc in logs)
    said = {doc["message"]: doc["level"] for doc in logs if doc["logger"] == "runner"}
    assert said[f"starting {recent} (tonight): 8 of 8 requests left"] == "info"
    assert key not in r.stderr + r.stdout
    assert "Say something about item" not in r.stderr  # no request body in a log line


def test_concurrency_above_the_open_file_limit_is_lowered_with_a_warning(
    cli: Cli, mock_factory: Any, tmp_path: Path
) -> None:
    mock = mock_factory()
    job = _submit(cli, write_jobfile(tmp_path / "in.jsonl", 20), "fds")

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (160, 160))

    r = subprocess.run(
        [sys.executable, "-m", "runner", "run", job, "--base-url", mock.base_url, "--concurrency", "500", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli.environ(),
        cwd=tmp_path,
        preexec_fn=low_limit,
    )
    assert r.returncode == 0, r.stderr
    assert "warning: only 160 open files allowed (ulimit -n); concurrency lowered from 500 to 48" in r.stderr
    assert "Traceback" not in r.stderr
    assert _counts(cli.db, job) == {"completed": 20}


def test_jobs_json_says_in_words_what_the_table_says(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    # `runner jobs` read `failed` for a job whose only line failed, and `jobs --json` "completed": a script that
    # checked the JSON took it for a success.
    mock = mock_factory()

    def job(name: str, failing: int, ok: int) -> str:
        src = tmp_path / f"{name}.jsonl"
        lines = [
            {"custom_id": f"{name}-{i}", "method": "POST", "url": "/v1/responses", "body": body}
            for i, body in enumerate(
                [{"model": "gpt-4.1-mini", "input": "x", "metadata": {"mock_error": "invalid_prompt"}}] * failing
                + [{"model": "gpt-4.1-mini", "input": "y"}] * ok
            )
        ]
        src.write_text("".join(json.dumps(line) + "\n" for line in lines))
        return cli.submit(src)

    all_failed, some_failed, fine = job("a", 1, 0), job("b", 2, 3), job("c", 0, 2)
    assert cli("run", *run_args(mock, "--quiet")).returncode == 1
    listed = {j["job_id"]: (j["status"], j["state"]) for j in json.loads(cli("jobs", "--json").stdout)}
    assert listed == {
        all_failed: ("completed", "failed"),
        some_failed: ("completed", "done, 2 failed"),
        fine: ("completed", "completed"),
    }
    table = cli("jobs").stdout
    for job_id, (_, state) in listed.items():
        assert re.search(rf"^{job_id}\s+\S+ \S+\s+{re.escape(state)}\s", table, re.M), table
    assert json.loads(cli("status", all_failed, "--json").stdout)["state"] == "failed"


def test_json_log_format_makes_warnings_and_errors_json_too(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    # `--log-format json` applied to log lines only: warnings, the run's summary and the last line's error were
    # text, among the JSON a log collector expects one object per line of.
    src = tmp_path / "in.jsonl"
    body = {"model": "gpt-4.1-mini", "input": "hi", "reasoning": {"effort": "ultra"}}
    src.write_text(json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/responses", "body": body}) + "\n")
    mock = mock_factory()
    seen: list[dict[str, Any]] = []
    for args in (
        ["submit", str(src), "--lenient"],
        ["run", "--base-url", mock.base_url],
        ["export", "-o", str(tmp_path / "x.csv")],
        ["submit", str(tmp_path / "missing.jsonl")],
    ):
        r = cli("--log-format", "json", *args)
        assert r.returncode in (0, 2), r.stderr
        seen += [json.loads(line) for line in r.stderr.splitlines()]  # each line an object, or this fails
    levels = {(doc["level"], doc["message"].split(":")[0]) for doc in seen}
    assert ("warning", "warning") in levels  # the --lenient warning, and the file named for csv
    assert ("error", "runner") in levels  # the missing file
    assert any(doc["message"].startswith("this run: 1 requests finished") for doc in seen)
    assert all(doc["logger"] == "runner" and doc["time"].endswith("Z") for doc in seen)


def test_doctor_exits_1_while_it_finds_something_to_fix_and_0_once_fixed(cli: Cli, tmp_path: Path) -> None:
    from runner.owners import host_id

    job = _submit(cli, write_jobfile(tmp_path / "in.jsonl", 3), "stale")
    assert cli("doctor").returncode == 0
    # A runner that died holding a line (its process is gone: pid 2**22 + 1 is above any pid_max here).
    _sql(
        cli.db,
        "update requests set state='in_progress', lease_owner=?, lease_expires_at=? where line_no=1",
        f"{host_id()}:{2**22 + 1}:dead",
        time.time() + 3600,
    )
    r = cli("doctor")
    assert r.returncode == 1 and "stale leases (runner gone): 1 unsent -> would requeue" in r.stdout, r.stdout
    assert cli("doctor", "--fix").returncode == 0
    assert cli("doctor").returncode == 0
    assert _counts(cli.db, job) == {"queued": 3}
