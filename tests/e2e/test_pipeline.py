"""The whole pipeline through the CLI, as users run it: submit, run, status, export against the mock server."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Cli, read_jsonl, run_args, write_jobfile

pytestmark = pytest.mark.e2e

KEY = "sk-test-SECRET-0f9e8d7c6b5a"
USAGE_KEYS = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens", "total_tokens")


def _mock_usage(stats: dict[str, Any]) -> dict[str, int]:
    return {k: int(stats["usage"][k]) for k in USAGE_KEYS}


def test_happy_path_500_lines(cli: Cli, mock_factory: Any, tmp_path: Path, store_db: str) -> None:
    if "://" in store_db:  # PostgreSQL: the same run against a fresh database
        cli.url = store_db
    mock = mock_factory("--api-key", KEY)
    cli.env["OPENAI_API_KEY"] = KEY
    src = write_jobfile(tmp_path / "in.jsonl", 500)
    job = cli.submit(src)
    assert job.startswith("job_")

    r = cli("run", job, *run_args(mock, "--concurrency", "50"))
    assert r.returncode == 0, r.stderr
    st = cli.status(job)
    assert st["job_id"] == job and st["status"] == "completed"
    assert st["counts"]["completed"] + st["counts"]["incomplete"] == 500
    assert st["counts"]["failed"] == st["counts"]["queued"] == st["counts"]["in_progress"] == 0
    # The totals the runner keeps are exactly what the server reported, request by request.
    assert st["usage"] == _mock_usage(mock.stats())
    assert st["usage"]["total_tokens"] == st["usage"]["input_tokens"] + st["usage"]["output_tokens"]
    assert mock.stats()["creates"] == 500

    out = tmp_path / "out.jsonl"
    r = cli("export", job, "-o", str(out))
    assert r.returncode == 0, r.stderr
    lines = read_jsonl(out)
    assert [x["custom_id"] for x in lines] == [f"c-{i:05d}" for i in range(1, 501)]
    for x in lines:
        assert set(x) == {"id", "custom_id", "response", "error"}
        assert x["error"] is None
        assert x["response"]["status_code"] == 200
        assert x["response"]["request_id"].startswith("req_")
        body = x["response"]["body"]
        assert body["object"] == "response" and body["status"] == "completed"
        assert body["output_text"].startswith("echo: Say something about item number")
    assert len({x["id"] for x in lines}) == 500


def test_transient_faults_all_complete(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory("--p429", "0.15", "--retry-after", "0.05", "--p5xx", "0.05", "--pdrop", "0.02", "--seed", "3")
    src = write_jobfile(tmp_path / "in.jsonl", 300)
    job = cli.submit(src)
    r = cli("run", job, *run_args(mock, "--concurrency", "40"))
    assert r.returncode == 0, r.stderr
    st = cli.status(job)
    assert st["counts"]["completed"] == 300, st
    faults = mock.stats()["faults"]
    assert faults["429"] > 0 and faults["5xx"] > 0 and faults["drop"] > 0
    assert st["attempts"] >= 300 + faults["429"] + faults["5xx"] + faults["drop"]
    assert st["rate_limited"] == faults["429"]
    assert st["usage"] == _mock_usage(mock.stats())


def test_billing_error_stops_run_and_resumes(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory("--quota-after", "60", "--latency", "0.02")
    src = write_jobfile(tmp_path / "in.jsonl", 200)
    job = cli.submit(src)
    r = cli("run", job, *run_args(mock, "--concurrency", "8"))
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert "billing" in r.stderr and "insufficient_quota" in r.stderr
    st = cli.status(job)
    assert st["counts"]["failed"] == 0
    assert st["counts"]["in_progress"] == 0
    assert st["counts"]["completed"] >= 60 - 8
    assert st["counts"]["completed"] + st["counts"]["queued"] == 200
    # Never retried: at most the requests in flight when the first quota error came back met one.
    assert mock.stats()["faults"]["quota"] <= 8

    mock.configure(quota_after=None)
    r = cli("run", *run_args(mock, "--concurrency", "8"))
    assert r.returncode == 0, r.stderr
    st = cli.status(job)
    assert st["counts"]["completed"] == 200
    assert mock.stats()["creates"] == 200


def test_background_mode_polls_until_done(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory("--bg-delay", "0.6")
    src = write_jobfile(tmp_path / "in.jsonl", 120)
    job = cli.submit(src, "--background")
    r = cli("run", job, *run_args(mock, "--concurrency", "40"))
    assert r.returncode == 0, r.stderr
    st = cli.status(job)
    assert st["counts"]["completed"] == 120
    stats = mock.stats()
    assert stats["creates"] == 120
    assert sorted(set(stats["creates_by_key"].values())) == [1]
    assert stats["gets"] >= 120  # every response was polled at least once
    assert st["usage"] == _mock_usage(stats)

    out = tmp_path / "out.jsonl"
    assert cli("export", job, "-o", str(out)).returncode == 0
    lines = read_jsonl(out)
    assert all(x["response"]["body"]["background"] is True for x in lines)
    assert all(x["response"]["body"]["status"] == "completed" for x in lines)
    db = sqlite3.connect(cli.db)
    assert db.execute("select count(*) from requests where response_id is null").fetchone()[0] == 0


def test_background_failures_are_retried_as_new_attempts(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory("--bg-delay", "0.2", "--bg-fail", "0.25", "--seed", "5")
    src = write_jobfile(tmp_path / "in.jsonl", 24)
    job = cli.submit(src, "--background")
    r = cli("run", job, *run_args(mock, "--concurrency", "24", "--max-attempts", "10"))
    assert r.returncode == 0, r.stderr
    st = cli.status(job)
    assert st["counts"]["completed"] == 24
    assert st["attempts"] > 24
    assert mock.stats()["creates"] == st["attempts"]


def test_bad_lines_exit_2_and_queue_nothing(cli: Cli, tmp_path: Path) -> None:
    src = write_jobfile(tmp_path / "in.jsonl", 10)
    lines = src.read_text().splitlines()
    lines[2] = '{"custom_id": "x", "method": "POST", "url": "/v1/responses", "body": {"model": "m", "input": "hi",'
    bad = json.loads(lines[5])
    bad["body"]["temperature"] = 3
    lines[5] = json.dumps(bad)
    bad = json.loads(lines[7])
    del bad["body"]["input"]
    lines[7] = json.dumps(bad)
    src.write_text("\n".join(lines) + "\n")

    r = cli("submit", str(src))
    assert r.returncode == 2
    assert str(src) in r.stderr
    assert "line 3" in r.stderr and "JSON" in r.stderr
    assert "line 6" in r.stderr and "body.temperature" in r.stderr and "between 0 and 2" in r.stderr
    assert "line 8" in r.stderr and "body.input" in r.stderr and "required" in r.stderr
    assert r.stdout.strip() == ""
    # Nothing was queued, and the store this submit would have created is not left behind either.
    assert not cli.db.exists()
    jobs = cli("jobs", "--json")
    assert jobs.returncode == 2 and "no store at" in jobs.stderr


def test_export_errors_file_retry_and_no_key_anywhere(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory("--api-key", KEY)
    src = write_jobfile(tmp_path / "in.jsonl", 30)
    job = cli.submit(src)
    outputs: list[str] = []

    # A wrong key dooms the whole job: the run stops at once (exit 5) and nothing is failed.
    wrong = "sk-test-WRONG-a1b2c3d4e5"
    r = cli("run", job, *run_args(mock), extra_env={"OPENAI_API_KEY": wrong})
    outputs += [r.stdout, r.stderr]
    assert r.returncode == 5, r.stderr
    assert cli.status(job)["counts"]["queued"] == 30

    # A server failing every request (500: each request's error, not the server down, which a run waits out)
    # and one attempt each: every request fails, its error reply kept.
    mock.configure(p500=1.0)
    r = cli("run", job, *run_args(mock, "--max-attempts", "1"), extra_env={"OPENAI_API_KEY": KEY})
    outputs += [r.stdout, r.stderr]
    assert r.returncode == 1, r.stderr
    st = cli.status(job)
    assert st["counts"]["failed"] == 30 and st["attempts"] == 30

    ok, errs = tmp_path / "ok.jsonl", tmp_path / "errors.jsonl"
    r = cli("export", job, "-o", str(ok), "--errors", str(errs))
    outputs += [r.stdout, r.stderr]
    assert read_jsonl(ok) == []
    failed = read_jsonl(errs)
    assert len(failed) == 30
    assert failed[0]["response"]["status_code"] == 500
    assert failed[0]["response"]["body"]["error"]["code"] == "server_error"
    assert failed[0]["response"]["request_id"]

    r = cli("retry", job)
    outputs += [r.stdout, r.stderr]
    assert r.returncode == 0
    mock.configure(p500=0.0)
    r = cli("run", job, *run_args(mock), extra_env={"OPENAI_API_KEY": KEY})
    outputs += [r.stdout, r.stderr]
    assert r.returncode == 0, r.stderr
    assert cli.status(job)["counts"]["completed"] == 30
    r = cli("export", job, "-o", str(ok), "--errors", str(errs))
    assert len(read_jsonl(ok)) == 30 and read_jsonl(errs) == []

    for key in (KEY, wrong):
        for p in [cli.db, *cli.db.parent.glob("runner.db*"), ok, errs]:
            assert key.encode() not in p.read_bytes(), p
        assert all(key not in o for o in outputs)


def test_job_not_found_and_bad_flags(cli: Cli, tmp_path: Path) -> None:
    cli.submit(write_jobfile(tmp_path / "in.jsonl", 1))  # a store, so that the job is what is missing
    r = cli("status", "job_nope")
    assert r.returncode == 2 and "no job with id 'job_nope'" in r.stderr
    r = cli("run", "--concurrency", "0", "--base-url", "http://127.0.0.1:9/v1")
    assert r.returncode == 2 and "concurrency" in r.stderr


def test_cancel_stops_queued_and_in_flight_background_requests(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory("--bg-delay", "60")
    src = write_jobfile(tmp_path / "in.jsonl", 30)
    job = cli.submit(src, "--background")
    run = cli.popen("run", job, *run_args(mock, "--concurrency", "10", "--quiet"))
    try:
        deadline = time.monotonic() + 30
        db = sqlite3.connect(cli.db)
        while time.monotonic() < deadline:
            n = db.execute("select count(*) from requests where response_id is not null").fetchone()[0]
            if n >= 10:
                break
            time.sleep(0.1)
        r = cli("cancel", job, *run_args(mock))
        assert r.returncode == 0, r.stderr
        _out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err
    st = cli.status(job)
    assert st["status"] == "cancelled"
    assert st["counts"]["cancelled"] == 30 and st["counts"]["completed"] == 0
    stats = mock.stats()
    assert stats["cancels"] >= 10  # every in-flight background response got POST /responses/{id}/cancel
    assert stats["creates"] == stats["cancels"]  # and nothing else was created


def test_runs_from_a_built_wheel_with_its_migrations(cli: Cli, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=180,
    )
    (wheel,) = wheels.glob("responses_runner-*.whl")  # our own distribution name; "runner" on PyPI is another's
    names = zipfile.ZipFile(wheel).namelist()
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    assert "Name: responses-runner\n" in zipfile.ZipFile(wheel).read(metadata).decode()
    assert "runner/_migrations/versions/0001_jobs_and_requests.py" in names
    assert "runner/_migrations/env.py" in names
    assert "runner_mock/__main__.py" in names  # the fake API ships beside runner, as a package of its own
    # Each backend's hot SQL is a data file read at import: a wheel without it could not open a store.
    assert {"runner/store/sqlite/hot.sql", "runner/store/postgres/hot.sql"} <= set(names)
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    src = write_jobfile(tmp_path / "in.jsonl", 3)
    env = {**cli.environ(), "PYTHONPATH": str(unpacked)}
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import runner, sys; print(runner.__file__); from runner.cli import main; main()",
            "submit",
            str(src),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith(str(unpacked))  # the wheel's code, not the checkout's
    assert r.stdout.strip().splitlines()[-1].startswith("job_")
    # `runner mock-server` runs the wheel's runner_mock.
    r = subprocess.run(
        [sys.executable, "-c", "from runner.cli import main; main()", "mock-server", "--help"],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200"},
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "--bg-delay BG_DELAY" in r.stdout and "(default: 8787)" in r.stdout


def test_a_bad_file_never_removes_an_existing_store(cli: Cli, tmp_path: Path) -> None:
    good = cli.submit(write_jobfile(tmp_path / "good.jsonl", 3))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"model": "m"}\n')
    r = cli("submit", str(bad))
    assert r.returncode == 2 and "field input: is required" in r.stderr and "created store" not in r.stderr
    # The store from before is still there, with its job and nothing else.
    listed = json.loads(cli("jobs", "--json").stdout)
    assert [j["job_id"] for j in listed] == [good]
