"""The structured-output check itself: what counts as asking for JSON, and each verdict with its reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runner.outputcheck import CheckStatus, check, schema_problem, wanted

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "scores": {"type": "array", "items": {"type": "number"}}},
    "required": ["name"],
}


def body(fmt: dict[str, Any] | None, **extra: Any) -> str:
    b: dict[str, Any] = {"model": "m", "input": 'mentions "json_schema" in the prompt', **extra}
    if fmt is not None:
        b["text"] = {"format": fmt}
    return json.dumps(b)


def test_only_lines_asking_for_json_are_checked() -> None:
    assert wanted(body(None)) is None  # the word in a prompt is not a request for JSON
    assert wanted(body({"type": "text"})) is None
    assert wanted(json.dumps({"model": "m", "input": "x"})) is None
    obj = wanted(body({"type": "json_object"}))
    assert obj is not None and (obj.kind, obj.schema) == ("json_object", None)
    sch = wanted(body({"type": "json_schema", "name": "n", "schema": SCHEMA}))
    assert sch is not None and sch.kind == "json_schema" and json.loads(sch.schema or "") == SCHEMA


@pytest.mark.parametrize(
    ("text", "status", "detail", "parsed"),
    [
        ('{"name": "a", "scores": [1, 2.5]}', CheckStatus.VALID, None, {"name": "a", "scores": [1, 2.5]}),
        ('```json\n{"name": "a"}\n```', CheckStatus.INVALID_JSON, "not JSON: ", None),
        ("", CheckStatus.INVALID_JSON, "not JSON: ", None),
        ('{"scores": []}', CheckStatus.SCHEMA_MISMATCH, "$: 'name' is a required property", {"scores": []}),
        (
            '{"name": "a", "scores": [1, "two"]}',
            CheckStatus.SCHEMA_MISMATCH,
            "$.scores[1]: 'two' is not of type 'number'",
            {"name": "a", "scores": [1, "two"]},
        ),
    ],
)
def test_verdicts_against_the_lines_schema(text: str, status: CheckStatus, detail: str | None, parsed: Any) -> None:
    want = wanted(body({"type": "json_schema", "name": "n", "schema": SCHEMA}))
    assert want is not None
    got = check(text, want)
    assert got.status is status
    if detail is None:
        assert got.detail is None
    else:
        assert got.detail is not None and got.detail.startswith(detail)
    assert (json.loads(got.parsed) if got.parsed is not None else None) == parsed


def test_json_object_must_be_an_object() -> None:
    want = wanted(body({"type": "json_object"}))
    assert want is not None
    assert check('{"a": 1}', want).status is CheckStatus.VALID
    assert (check("[1]", want).status, check("[1]", want).detail) == (
        CheckStatus.SCHEMA_MISMATCH,
        "$: is not a JSON object",
    )


def test_a_remote_ref_is_never_fetched() -> None:
    # Only 127.0.0.1 is reachable here; a fetch would hang or fail differently. It is reported, not followed.
    schema = {"$ref": "https://example.invalid/schema.json"}
    want = wanted(body({"type": "json_schema", "name": "n", "schema": schema}))
    assert want is not None
    got = check("1", want)
    assert got.status is CheckStatus.SCHEMA_MISMATCH
    assert got.detail is not None and "cannot be used" in got.detail


def test_schema_problem_names_what_is_wrong() -> None:
    assert schema_problem(SCHEMA) is None
    problem = schema_problem({"type": "object", "properties": {"n": {"type": "integr"}}})
    assert problem is not None and problem.startswith("schema.properties.n.type: 'integr' is not valid")
    long_value = {"type": "object", "required": "x" * 5000}
    assert len(schema_problem(long_value) or "") <= 500


def test_hostile_answers_get_a_verdict_never_an_exception() -> None:
    obj = wanted(body({"type": "json_object"}))
    sch = wanted(body({"type": "json_schema", "name": "n", "schema": {"type": "array"}}))
    assert obj is not None and sch is not None
    deep = "[" * 300 + "]" * 300  # valid JSON, deeper than orjson writes back
    assert (check(deep, obj).status, check(deep, obj).parsed) == (CheckStatus.SCHEMA_MISMATCH, None)
    assert check(deep, sch).status in (CheckStatus.VALID, CheckStatus.SCHEMA_MISMATCH)
    assert check(deep, sch).parsed is None
    for text in ('"\ud800"', "1e999", "NaN", "9" * 5000):
        assert check(text, sch).status is CheckStatus.INVALID_JSON
