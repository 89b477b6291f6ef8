"""Structured outputs through the CLI: each answer of a JSON line checked, `--repair N` asking again, the
verdicts in the flat exports and the report. The mock answers each line's scripted texts in turn."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from runner import app
from runner.config import Settings
from tests.conftest import Cli, read_jsonl, run_args

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["answer"],
    "additionalProperties": False,
}
JSON_SCHEMA = {"format": {"type": "json_schema", "name": "reply", "schema": SCHEMA, "strict": True}}
JSON_OBJECT = {"format": {"type": "json_object"}}

# custom_id -> (text.format, the mock's answers in turn)
LINES: dict[str, tuple[dict[str, Any] | None, list[str]]] = {
    "valid": (JSON_SCHEMA, ['{"answer": 42, "tags": ["a"]}']),
    "not-json": (JSON_SCHEMA, ["The answer is 42."]),
    "mismatch": (JSON_SCHEMA, ['{"answer": 1, "tags": ["a", 7]}']),
    "repaired": (JSON_SCHEMA, ['{"answer": "forty-two"}', '{"answer": 42}']),
    "object": (JSON_OBJECT, ["[1, 2]", '{"ok": true}']),
    "plain": (None, ["{not checked}"]),
    "cut": (JSON_SCHEMA, ['{"answer": 42, "tags": ["a long answer cut short"]}']),  # incomplete: no verdict
}


def write_lines(path: Path) -> Path:
    with path.open("w") as f:
        for i, (cid, (fmt, texts)) in enumerate(LINES.items()):
            body: dict[str, Any] = {
                "model": "gpt-4.1-mini",
                "input": f"question {i}",
                "metadata": {"mock_outputs": json.dumps(texts)},
            }
            if fmt is not None:
                body["text"] = fmt
            if cid == "cut":
                body["max_output_tokens"] = 2
            f.write(json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/responses", "body": body}) + "\n")
    return path


def test_repair_asks_failing_answers_again_and_exports_the_verdicts(
    cli: Cli, mock_factory: Any, tmp_path: Path
) -> None:
    mock = mock_factory()
    job = cli.submit(write_lines(tmp_path / "in.jsonl"))
    r = cli("run", job, *run_args(mock, "--repair", "2", "--quiet"))
    assert r.returncode == 0, r.stderr

    # The ledger: a failing answer is asked again up to 2 more times, a passing one never.
    creates = mock.stats()["creates_by_key"]
    per_line = {cid: creates[f"{job}/{i + 1}"] for i, cid in enumerate(LINES)}
    assert per_line == {"valid": 1, "not-json": 3, "mismatch": 3, "repaired": 2, "object": 2, "plain": 1, "cut": 1}

    out = tmp_path / "flat.jsonl"
    assert cli("export", job, "--format", "jsonl-flat", "-o", str(out)).returncode == 0
    rows = {x["custom_id"]: x for x in read_jsonl(out)}
    assert {c: (x["status"], x["output_check"], x["parsed"]) for c, x in rows.items()} == {
        "valid": ("completed", "valid", {"answer": 42, "tags": ["a"]}),
        "not-json": ("completed", "invalid_json", None),  # kept after 2 repairs, never dropped
        "mismatch": ("completed", "schema_mismatch", {"answer": 1, "tags": ["a", 7]}),
        "repaired": ("completed", "valid", {"answer": 42}),
        "object": ("completed", "valid", {"ok": True}),
        "plain": ("completed", None, None),
        "cut": ("incomplete", None, None),
    }
    assert rows["repaired"]["output_text"] == '{"answer": 42}'

    csv_out = tmp_path / "flat.csv"
    assert cli("export", job, "--format", "csv", "-o", str(csv_out)).returncode == 0
    with csv_out.open(newline="") as f:
        table = {x["custom_id"]: x for x in csv.DictReader(f)}
    assert json.loads(table["mismatch"]["parsed"]) == {"answer": 1, "tags": ["a", 7]}
    assert (table["not-json"]["output_check"], table["not-json"]["parsed"]) == ("invalid_json", "")

    # The Batch export is the Batch format as before: no new fields.
    batch = tmp_path / "batch.jsonl"
    assert cli("export", job, "-o", str(batch)).returncode == 0
    assert all(set(x) == {"id", "custom_id", "response", "error"} for x in read_jsonl(batch))

    rep = cli("report", job, "--json")
    assert rep.returncode == 0, rep.stderr
    checks = json.loads(rep.stdout)["output_checks"]
    # 2 + 2 + 1 + 1 rejected answers, each paid for: their tokens are counted and priced.
    assert {k: checks[k] for k in ("valid", "invalid_json", "schema_mismatch", "repairs", "repaired_requests")} == {
        "valid": 3,
        "invalid_json": 1,
        "schema_mismatch": 1,
        "repairs": 6,
        "repaired_requests": 4,
    }
    assert checks["rejected_usage"]["total_tokens"] > 0 and checks["rejected_usd"] > 0

    # Every rejected answer is an attempt of its own, with the reason.
    shown = json.loads(cli("show", job, "mismatch", "--json").stdout)
    codes = [(a["outcome"], a["error_code"]) for a in shown["attempts"]]
    assert codes == [("queued", "schema_mismatch"), ("queued", "schema_mismatch"), ("completed", None)]
    assert "$.tags[1]: 7 is not of type 'string'; asked again (repair 1 of 2)" in shown["attempts"][0]["error_message"]


@pytest.mark.anyio
async def test_the_structured_example_runs_as_the_readme_shows(mock_factory: Any, tmp_path: Path) -> None:
    # In-process (app), against the mock as a real server: the same job without and with --repair.
    mock = mock_factory()
    db = str(tmp_path / "r.db")
    example = Path(__file__).resolve().parents[2] / "jobs" / "structured.jsonl"
    plain = await app.submit(example, db=db)
    await app.run([plain.job_id], Settings(db=db, base_url=mock.base_url))
    assert mock.stats()["creates"] == 11  # no repair: each line answered once, and checked
    checks = (await app.report(plain.job_id, db=db)).checks
    assert (checks.by_status, checks.repairs) == ({"valid": 6, "invalid_json": 2, "schema_mismatch": 3}, 0)

    repaired = await app.submit(example, db=db, new=True)
    outcome = await app.run([repaired.job_id], Settings(db=db, base_url=mock.base_url, repair=2))
    assert outcome.failed == 0
    text = (await app.report(repaired.job_id, db=db)).render_text()
    assert (
        "structured outputs: valid 10 · invalid json 0 · schema mismatch 1 · 6 answer(s) asked again for"
        " 5 request(s) ($0.00018)" in text
    )


def test_submit_refuses_a_schema_that_is_not_json_schema(cli: Cli, tmp_path: Path) -> None:
    bad = {"type": "json_schema", "name": "x", "schema": {"type": "objekt"}}
    line = {"custom_id": "a", "method": "POST", "url": "/v1/responses"}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({**line, "body": {"model": "m", "input": "q", "text": {"format": bad}}}) + "\n")
    r = cli("submit", str(path))
    assert r.returncode == 2
    assert "bad.jsonl:line 1: field body.text.format.schema: is not a valid JSON Schema: schema.type:" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 2  # the summary and the line: no traceback


@pytest.mark.anyio
async def test_a_spec_repairs_and_writes_the_html_report(mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory()
    example = Path(__file__).resolve().parents[2] / "jobs" / "structured.jsonl"
    (tmp_path / "in.jsonl").write_bytes(example.read_bytes())
    spec = tmp_path / "nightly.toml"
    spec.write_text(
        '[job]\ninput = "in.jsonl"\n[limits]\nrepair = 1\n'
        '[output]\nresults = "out/r.jsonl"\nformat = "jsonl-flat"\nreport_html = "out/{job}.html"\n'
    )
    done = await app.run_spec(spec, overrides={"base_url": mock.base_url})
    [job] = done.jobs
    assert mock.stats()["creates"] == 11 + 5  # five lines fail their first answer; one repair each
    assert job.report is not None and job.report.checks.repairs == 5
    assert job.report_html == tmp_path / "out" / "nightly.html"
    page = job.report_html.read_text()
    assert "<td>schema_mismatch</td><td>1</td>" in page  # city-10 after its one repair
    rows = read_jsonl(tmp_path / "out" / "r.jsonl")
    assert sum(r["output_check"] == "valid" for r in rows) == 10
