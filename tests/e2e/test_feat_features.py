"""What the README's feature sections promise, pushed the way users get them wrong: each test here failed
before the fix it came with."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli


@pytest.mark.parametrize("dollar_schema", [5, {}])
def test_submit_refuses_a_schema_whose_dollar_schema_is_not_a_string(
    cli: Cli, tmp_path: Path, dollar_schema: object
) -> None:
    # jsonschema looked a non-string $schema up as a URL: submit died with an AttributeError traceback.
    schema = {"$schema": dollar_schema, "type": "object"}
    body = {"model": "m", "input": "q", "text": {"format": {"type": "json_schema", "name": "x", "schema": schema}}}
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/responses", "body": body}) + "\n")
    r = cli("submit", str(path))
    assert r.returncode == 2, r.stderr
    assert "in.jsonl:line 1: field body.text.format.schema: is not a valid JSON Schema: schema.$schema:" in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 2  # the summary and the line
    assert cli("jobs").stdout.count("job_") == 0


def test_report_says_failed_as_status_and_jobs_do_when_every_line_failed(
    cli: Cli, mock_factory: Any, tmp_path: Path
) -> None:
    # `runner status` and `runner jobs` said `failed`; `runner report` (text and HTML) said `completed`.
    mock = mock_factory()
    path = tmp_path / "in.jsonl"
    lines = [
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/responses", "body": {"model": "m", "input": "q"}}
        for i in (1, 2)
    ]
    for line in lines:
        line["body"]["metadata"] = {"mock_error": "invalid_value"}
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    job = cli.submit(path)
    assert cli("run", job, "--base-url", mock.base_url, extra_env={"OPENAI_API_KEY": "sk-test"}).returncode == 1
    assert cli("status", job).stdout.splitlines()[0].endswith(" · failed")
    r = cli("report", job, "--html", str(tmp_path / "r.html"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"job {job} (in) · 2 requests · failed"
    assert "status <b>failed</b>" in (tmp_path / "r.html").read_text()


def test_max_cost_holds_on_the_batch_lane(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    # `--lane batch --max-cost` uploaded every queued line: $0.0037 spent against a $0.001 budget, exit 0.
    mock = mock_factory("--batch-validate-delay", "0", "--batch-run-delay", "0", "--batch-finalize-delay", "0")
    example = Path(__file__).resolve().parents[2] / "jobs" / "example.jsonl"
    job = cli.submit(example)
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": mock.base_url}
    r = cli("run", job, "--lane", "batch", "--batch-max-lines", "20", "--max-cost", "0.001", extra_env=env)
    assert r.returncode == 4, r.stderr
    assert "stopped at the budget: spent $" in r.stderr
    report = json.loads(cli("report", job, "--json").stdout)
    assert 0 < report["cost"]["usd"] <= 0.001
    queued = report["counts"]["queued"]
    assert queued > 0
    assert f"{queued:,} requests left queued" in r.stderr
    # A later run without the budget finishes the job and sends no line twice.
    r = cli("run", job, "--lane", "batch", extra_env=env)
    assert r.returncode == 0, r.stderr
    stats = json.loads(urllib.request.urlopen(mock.base_url.removesuffix("/v1") + "/_mock/stats").read())
    assert stats["batch"]["max_uploads_of_a_line"] == 1
    assert stats["batch"]["lines_uploaded"] == 200


def test_max_cost_counts_the_batches_a_detached_run_left_open(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    # A cron line `runner run --lane batch --max-cost X --detach`, run twice, packed X twice: the open
    # batches of the first were not counted by the second.
    mock = mock_factory("--batch-run-delay", "30")
    example = Path(__file__).resolve().parents[2] / "jobs" / "example.jsonl"
    job = cli.submit(example)
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": mock.base_url}
    args = ("run", job, "--lane", "batch", "--max-cost", "0.002", "--detach")
    r = cli(*args, extra_env=env)
    assert r.returncode == 0, r.stderr
    queued = cli.status(job)["counts"]["queued"]
    assert 0 < queued < 200
    r = cli(*args, extra_env=env)
    assert cli.status(job)["counts"]["queued"] == queued, r.stderr


def test_a_spec_whose_output_is_a_directory_stops_before_anything_is_sent(
    cli: Cli, mock_factory: Any, tmp_path: Path
) -> None:
    # The run sent and paid for every line, then failed writing the results (exit 2, "nothing was changed").
    mock = mock_factory()
    example = Path(__file__).resolve().parents[2] / "jobs" / "example.jsonl"
    (tmp_path / "in.jsonl").write_bytes(example.read_bytes())
    (tmp_path / "out" / "r.jsonl").mkdir(parents=True)
    spec = tmp_path / "n.toml"
    spec.write_text('[job]\ninput = "in.jsonl"\n[output]\nresults = "out/r.jsonl"\n')
    r = cli("run", str(spec), extra_env={"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": mock.base_url})
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"runner: {spec}: [output] results: {tmp_path}/out/r.jsonl is a directory"]
    stats = json.loads(urllib.request.urlopen(mock.base_url.removesuffix("/v1") + "/_mock/stats").read())
    assert stats["creates"] == 0


@pytest.mark.parametrize(
    ("output", "said"),
    [
        # The report replaced the results (exit 0, the answers gone from the file), the HTML page the errors.
        ('results = "o/r.jsonl"\nreport = "o/r.jsonl"', "[output] report: {tmp}/o/r.jsonl is [output] results too"),
        (
            'results = "o/r.jsonl"\nerrors = "o/e.jsonl"\nreport_html = "./o/e.jsonl"',
            "[output] report_html: {tmp}/o/e.jsonl is [output] errors too",
        ),
        # These two were found only after every line was sent, and named with flags the user never typed.
        ('results = "o/r.jsonl"\nerrors = "o/r.jsonl"', "[output] errors: {tmp}/o/r.jsonl is [output] results too"),
        ('results = "runner.db"', "[output] results: {tmp}/runner.db is the job store"),
    ],
    ids=["report-over-results", "html-over-errors", "errors-over-results", "the-store"],
)
def test_a_spec_whose_outputs_collide_stops_before_anything_is_made(
    cli: Cli, mock_factory: Any, tmp_path: Path, output: str, said: str
) -> None:
    mock = mock_factory()
    example = Path(__file__).resolve().parents[2] / "jobs" / "example.jsonl"
    (tmp_path / "in.jsonl").write_bytes(example.read_bytes())
    spec = tmp_path / "n.toml"
    spec.write_text(f'[job]\ninput = "in.jsonl"\n[output]\n{output}\n')
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": mock.base_url, "RUNNER_DB": ""}
    r = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(spec)],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in cli.environ(env).items() if k != "RUNNER_DB"},  # the spec's store, beside it
        cwd=tmp_path,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().startswith(f"runner: {spec}: {said.format(tmp=tmp_path)}"), r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert mock.stats()["creates"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "n.toml"]  # no store, no output


def test_a_chain_run_on_the_batch_lane_then_the_sync_lane_completes(cli: Cli, mock_factory: Any) -> None:
    # The batch lane sent the parents (trip-1...) as batch lines and left their children to the sync lane,
    # where every child failed previous_response_not_found: a batch answer cannot be continued.
    mock = mock_factory("--batch-validate-delay", "0", "--batch-run-delay", "0", "--batch-finalize-delay", "0")
    chains = Path(__file__).resolve().parents[2] / "jobs" / "chains.jsonl"
    job = cli.submit(chains)
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": mock.base_url}
    r = cli("run", job, "--lane", "batch", extra_env=env)
    assert "9 requests share a conversation or continue another line" in r.stderr  # parents too
    assert cli.status(job)["counts"]["queued"] == 9
    r = cli("run", job, extra_env=env)
    assert r.returncode == 0, r.stderr
    assert cli.status(job)["counts"]["completed"] == 9
