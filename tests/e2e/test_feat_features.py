"""What the README's feature sections promise, pushed the way users get them wrong: each test here failed
before the fix it came with."""

from __future__ import annotations

import json
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
