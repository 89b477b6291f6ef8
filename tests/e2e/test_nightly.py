"""Nightly jobs through the CLI: `runner run SPEC.toml` end to end, reports, exit codes, exports of a running job."""

from __future__ import annotations

import csv
import datetime as dt
import json
import sqlite3
import time
import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, read_jsonl, run_args, write_jobfile

pytestmark = pytest.mark.e2e


def _spec(tmp_path: Path, body: str, name: str = "nightly.toml") -> Path:
    p = tmp_path / name
    p.write_text(body)
    return p


SPEC = """
[job]
name = "eval"
input = "in.jsonl"

[defaults]
model = "gpt-4.1-mini"
instructions = "Answer briefly."

[overrides]
max_output_tokens = 400

[limits]
concurrency = 16

[output]
results = "out/{job}-{date}.jsonl"
errors = "out/{job}-{date}.errors.jsonl"
format = "%(format)s"
report = "out/{job}-{date}.report.json"

[policy]
max_failure_rate = %(rate)s
"""


def test_spec_run_exports_reports_and_resumes_the_same_job(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory()
    with (tmp_path / "in.jsonl").open("w") as f:
        for i in range(60):
            body: dict[str, Any] = {"input": f"Question {i}?"}
            if i == 1:
                body.update(model="gpt-4.1-nano", max_output_tokens=20)  # the line's own model wins
            f.write(json.dumps(body) + "\n")
    spec = _spec(tmp_path, SPEC % {"format": "batch", "rate": "0.0"})
    r = cli("run", str(spec), *run_args(mock, "--quiet"))
    assert r.returncode == 0, r.stderr
    today = dt.date.today().isoformat()
    results = tmp_path / "out" / f"eval-{today}.jsonl"
    lines = read_jsonl(results)
    assert len(lines) == 60
    # Defaults and overrides reached the API (the mock echoes the request in its Response object).
    body = lines[0]["response"]["body"]
    assert body["model"] == "gpt-4.1-mini" and body["instructions"] == "Answer briefly."
    assert body["max_output_tokens"] == 400
    assert lines[1]["response"]["body"]["model"] == "gpt-4.1-nano"  # defaults fill, never replace
    assert lines[1]["response"]["body"]["max_output_tokens"] == 400  # overrides always win
    assert read_jsonl(tmp_path / "out" / f"eval-{today}.errors.jsonl") == []

    report = json.loads((tmp_path / "out" / f"eval-{today}.report.json").read_text())
    usage = mock.stats()["usage"]
    assert report["usage"]["input_tokens"] == usage["input_tokens"]
    assert report["usage"]["output_tokens"] == usage["output_tokens"]
    assert report["usage"]["total_tokens"] == usage["total_tokens"]
    # The cost, by hand, from the shipped price table.
    table = tomllib.loads(files("runner").joinpath("prices.toml").read_text())["models"]
    by_model: dict[str, dict[str, int]] = {}
    for line in lines:
        b = line["response"]["body"]
        u = by_model.setdefault(b["model"], {"in": 0, "cached": 0, "out": 0})
        u["in"] += b["usage"]["input_tokens"]
        u["cached"] += b["usage"]["input_tokens_details"]["cached_tokens"]
        u["out"] += b["usage"]["output_tokens"]
    expected = sum(
        (
            (u["in"] - u["cached"]) * table[m]["input"]
            + u["cached"] * table[m].get("cached_input", table[m]["input"])
            + u["out"] * table[m]["output"]
        )
        / 1e6
        for m, u in by_model.items()
    )
    assert set(by_model) == {"gpt-4.1-mini", "gpt-4.1-nano"}
    assert report["cost"]["usd"] == pytest.approx(expected, abs=1e-6)  # the report rounds to micro-dollars
    assert report["cost"]["complete"] is True
    assert report["counts"]["completed"] == 60
    assert report["latency_seconds"]["count"] == 60 and 0 < report["latency_seconds"]["p50"] < 5
    assert "eval" in r.stdout and "cost" in r.stdout  # the one-screen report is printed

    creates = mock.stats()["creates"]
    again = cli("run", str(spec), *run_args(mock, "--quiet"))
    assert again.returncode == 0, again.stderr
    assert mock.stats()["creates"] == creates  # the same day's job, resumed: nothing sent twice
    jobs = json.loads(cli("jobs", "--json").stdout)
    assert len(jobs) == 1 and jobs[0]["name"] == "eval"
    assert jobs[0]["source"] == str(tmp_path / "in.jsonl")  # the user's file, not the derived copy


def test_failure_threshold_decides_the_exit_code(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    # Every background response ends failed with a code that is final: all requests fail.
    mock = mock_factory("--bg-delay", "0.1", "--bg-fail", "1.0", "--bg-fail-code", "invalid_prompt")
    write_jobfile(tmp_path / "in.jsonl", 10, bare=True)
    strict = SPEC.replace('input = "in.jsonl"', 'input = "in.jsonl"\nbackground = true')
    spec = _spec(tmp_path, strict % {"format": "csv", "rate": "0.5"})
    r = cli("run", str(spec), *run_args(mock, "--quiet"))
    assert r.returncode == 1, r.stderr
    assert "10 of 10 requests failed" in r.stderr
    today = dt.date.today().isoformat()
    with (tmp_path / "out" / f"eval-{today}.errors.jsonl").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10 and all(x["error"].startswith("invalid_prompt") for x in rows)

    lenient = _spec(tmp_path, strict.replace('name = "eval"', 'name = "eval2"') % {"format": "csv", "rate": "1.0"})
    r = cli("run", str(lenient), *run_args(mock, "--quiet"))
    assert r.returncode == 0, r.stderr


def test_bad_spec_names_the_key_and_exits_2(cli: Cli, tmp_path: Path) -> None:
    write_jobfile(tmp_path / "in.jsonl", 2, bare=True)
    spec = _spec(tmp_path, '[job]\ninput = "in.jsonl"\n[limits]\nconcurency = 4\n')
    r = cli("run", str(spec))
    assert r.returncode == 2
    assert "concurency" in r.stderr and str(spec) in r.stderr
    bad_input = _spec(tmp_path, '[job]\ninput = "in.jsonl"\n[defaults]\ntemperature = 5\n', "t.toml")
    r = cli("run", str(bad_input))
    assert r.returncode == 2
    # Named once, against the spec key (not once per line of the input).
    assert r.stderr == f"runner: {bad_input}: [defaults] temperature: must be between 0 and 2 (got 5)\n"


def test_billing_stop_in_a_spec_run_exits_3(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory("--quota")
    write_jobfile(tmp_path / "in.jsonl", 5, bare=True)
    spec = _spec(tmp_path, SPEC % {"format": "jsonl-flat", "rate": "0.0"})
    r = cli("run", str(spec), *run_args(mock, "--quiet"))
    assert r.returncode == 3, r.stderr


def test_export_of_a_running_job_has_what_is_done_so_far(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    # 80 lines two at a time at 0.5 s: 20 s in all, so the run is still going when the export (a CLI start, slow
    # on a loaded machine: at 0.3 s and four at a time the run once finished first) reads the store.
    mock = mock_factory("--latency", "0.5")
    src = write_jobfile(tmp_path / "in.jsonl", 80)
    job = cli.submit(src)
    run = cli.popen("run", job, *run_args(mock, "--concurrency", "2", "--quiet"))
    try:
        db = sqlite3.connect(cli.db)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if db.execute("select count(*) from requests where state = 'completed'").fetchone()[0] >= 8:
                break
            time.sleep(0.1)
        out = tmp_path / "partial.jsonl"
        r = cli("export", job, "-o", str(out), "--format", "jsonl-flat")
        assert r.returncode == 0, r.stderr
        rows = read_jsonl(out)
        assert 8 <= len(rows) < 80
        assert all(x["status"] == "completed" and x["output_text"].startswith("echo: ") for x in rows)
        assert "not finished yet" in r.stderr
    finally:
        run.kill()
        run.communicate()


def test_spec_run_can_write_parquet(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    mock = mock_factory()
    write_jobfile(tmp_path / "in.jsonl", 12, bare=True)
    parquet = SPEC.replace("{date}.jsonl", "{date}.parquet").replace("{date}.errors.jsonl", "{date}.errors.parquet")
    spec = _spec(tmp_path, parquet % {"format": "parquet", "rate": "0.0"})
    r = cli("run", str(spec), *run_args(mock, "--quiet"))
    assert r.returncode == 0, r.stderr
    today = dt.date.today().isoformat()
    rows = pq.read_table(tmp_path / "out" / f"eval-{today}.parquet").to_pylist()
    assert [x["custom_id"] for x in rows] == [f"line-{i}" for i in range(1, 13)]
    assert all(x["status"] == "completed" and x["output_text"].startswith("echo: ") for x in rows)
    assert sum(x["total_tokens"] for x in rows) == mock.stats()["usage"]["total_tokens"]
    assert pq.read_table(tmp_path / "out" / f"eval-{today}.errors.parquet").num_rows == 0

    job = json.loads(cli("jobs", "--json").stdout)[0]["job_id"]
    r = cli("export", job, "--format", "parquet")  # binary to a terminal or pipe: refused, nothing written
    assert r.returncode == 2 and "give -o FILE" in r.stderr and r.stdout == ""
