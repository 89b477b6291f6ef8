"""What the README's feature sections promise, pushed the way users get them wrong: each test here failed
before the fix it came with."""

from __future__ import annotations

import json
from pathlib import Path

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
