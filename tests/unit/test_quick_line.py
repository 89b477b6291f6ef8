"""The submit's fast path (`quick_line`) against the full check (`validate_line`): it may decline any line, but
a line it accepts must be one the full check passes without an error or a warning, with the same body."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from runner.validate import quick_line, validate_line
from tests.unit.test_validate import CASES, batch, body

# Values tried in every field the fast path knows: right and wrong types, bounds, enum values and near misses.
SAMPLES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2,
    3,
    0.5,
    2.5,
    5.0,
    math.nan,
    math.inf,
    "",
    "x",
    "auto",
    "low",
    "high",
    "max",
    "detailed",
    "disabled",
    "flex",
    "user",
    "message",
    [],
    ["x"],
    [{"role": "user", "content": "hi"}],
    [{"role": "robot", "content": "hi"}],
    [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
    [{"role": "user", "content": 5}],
    [{"role": "user", "content": "hi", "type": "reasoning"}],
    [{"role": "user", "content": "hi", "phase": "final_answer"}],
    [{"type": "message", "content": "hi"}],
    [{"type": "function_call_output", "call_id": "c", "output": "x"}],
    {},
    {"k": "v"},
    {"k": 1},
    {"k" * 65: "v"},
    {"k": "v" * 513},
    {f"k{i}": "v" for i in range(17)},
    {"effort": "low"},
    {"effort": "turbo"},
    {"summary": "auto", "effort": None},
    {"effort": "low", "other": 1},
    {"verbosity": "low"},
    {"verbosity": "loud"},
    {"format": {"type": "text"}},
    {"format": {"type": "json_object"}},
    {"format": {"type": "json_schema", "name": "o", "schema": {"type": "nope"}}},
    {"format": {"type": "text", "strict": 1}},
]
FIELDS = [
    "model",
    "input",
    "instructions",
    "max_output_tokens",
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "truncation",
    "text",
    "reasoning",
    "store",
    "background",
    "metadata",
    "user",
    "prompt_cache_key",
    "safety_identifier",
    "service_tier",
]
# Fields the fast path leaves to the full check: stateful ones (no hash), typos, Chat Completions keys, the rest.
DECLINED = [
    "conversation",
    "previous_response_id",
    "stream",
    "tools",
    "mesages",
    "messages",
    "unknown_field_of_the_future",
]


def assert_agrees(obj: Any, **options: Any) -> bool:
    """Whether the fast path took `obj`; when it did, the full check must pass it with the same result."""
    quick = quick_line(obj, 7, **options)
    if quick is None:
        return False
    full = validate_line(obj, 7, **options)
    assert full.errors == [] and full.warnings == [] and full.chat_keys == (), obj
    assert quick == (full.custom_id, full.body), obj
    return True


@pytest.mark.parametrize("field", FIELDS + DECLINED)
def test_fast_path_accepts_only_what_the_full_check_passes(field: str) -> None:
    taken = 0
    for value, wrap, options in itertools.product(SAMPLES, (False, True), ({}, {"model": "m"}, {"background": True})):
        fields = {field: value}
        if field == "model" and value is None:
            fields = {}  # a missing model, for --model to fill
        obj = batch(body(**fields)) if wrap else body(**fields)
        if field == "model" and not fields:
            obj_body = obj["body"] if wrap else obj
            del obj_body["model"]
        taken += assert_agrees(obj, **options)
    if field in DECLINED:
        assert not taken, f"{field} took the fast path"
    else:
        assert taken, f"no value of {field} took the fast path"


def test_fast_path_takes_the_common_lines() -> None:
    assert quick_line(batch(), 1) == ("req-1", body())
    assert quick_line(body(), 12) == ("line-12", body())
    messages = [{"role": "system", "content": "Be brief."}, {"type": "message", "role": "user", "content": "Hi"}]
    line = body(input=messages, metadata={"k": "v"}, temperature=0, max_output_tokens=50, store=False)
    assert quick_line(batch(line), 1) == ("req-1", line)


def test_fast_path_fills_model_and_background_without_touching_the_line() -> None:
    obj = batch({"input": "Hi"})
    assert quick_line(obj, 1, model="m", background=True) == (
        "req-1",
        {"input": "Hi", "model": "m", "background": True, "store": True},
    )
    assert obj["body"] == {"input": "Hi"}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fast_path_declines_every_broken_body(case: tuple[Any, ...]) -> None:
    obj = case[1]
    assert quick_line(obj, 1) is None
    assert quick_line(batch(obj), 1) is None


@pytest.mark.parametrize(
    "line",
    [
        batch(custom_id=""),
        batch(custom_id=7),
        batch(method="GET"),
        batch(url="/v1/chat/completions"),
        batch("hi"),
        batch(priority=1),
        {"custom_id": "a", "method": "POST", "url": "/v1/responses"},
        {"custom_id": "a", "model": "m", "input": "x"},
        [],
        "line",
        None,
    ],
)
def test_fast_path_declines_every_broken_envelope(line: Any) -> None:
    assert quick_line(line, 1) is None
    assert validate_line(line, 1).errors
