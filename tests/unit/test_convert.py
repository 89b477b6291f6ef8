"""`runner convert` without the CLI: Chat Completions lines in, Responses lines (that validate) out."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from runner.convert import convert_file
from runner.errors import InputError
from runner.validate import validate_line


def convert(tmp_path: Path, lines: list[Any], **kw: Any) -> list[Any]:
    src = tmp_path / "chat.jsonl"
    src.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    out = io.BytesIO()
    convert_file(src, out, shown="chat.jsonl", **kw)
    return [json.loads(x) if x else None for x in out.getvalue().decode().split("\n")[:-1]]


IMAGE = {"url": "https://x/y.png", "detail": "low"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{}"}}
INPUT_IMAGE = {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}
SCHEMA = {"name": "a", "schema": {"type": "object"}, "strict": True}


def test_a_batch_line_becomes_a_responses_batch_line_that_validates(tmp_path: Path) -> None:
    chat = {
        "custom_id": "q1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Q"}, {"type": "image_url", "image_url": IMAGE}]},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
            ],
            "max_completion_tokens": 100,
            "response_format": {"type": "json_schema", "json_schema": SCHEMA},
            "tools": [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "look"}},
            "reasoning_effort": "low",
            "temperature": 0.3,
            "n": 1,
            "metadata": {"gold": "cat"},
        },
    }  # fmt: skip
    [out] = convert(tmp_path, [chat])
    assert out == {
        "custom_id": "q1",
        "method": "POST",
        "url": "/v1/responses",
        "body": {
            "model": "gpt-4o",
            "input": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "input_text", "text": "Q"}, INPUT_IMAGE]},
                {"type": "function_call", "call_id": "call_1", "name": "look", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "a cat"},
            ],
            "max_output_tokens": 100,
            "text": {"format": {"type": "json_schema", **SCHEMA}},
            "tools": [{"type": "function", "name": "look", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "look"},
            "reasoning": {"effort": "low"},
            "temperature": 0.3,
            "metadata": {"gold": "cat"},
        },
    }  # fmt: skip
    v = validate_line(out, 1)
    assert (v.errors, v.warnings) == ([], [])


def test_bare_bodies_stay_bare_and_blank_lines_keep_line_numbers(tmp_path: Path) -> None:
    bare = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "logprobs": True}
    out = convert(tmp_path, [bare, "", bare])
    assert out[1] is None
    assert (
        out[0]
        == out[2]
        == {
            "model": "m",
            "input": [{"role": "user", "content": "hi"}],
            "max_output_tokens": 5,
            "include": ["message.output_text.logprobs"],
        }
    )


def test_unsupported_keys_are_refused_by_line_and_field_and_nothing_is_written(tmp_path: Path) -> None:
    ok = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    lines = [ok, {**ok, "seed": 7}, "{oops", {**ok, "messages": [{"role": "user", "content": "x", "name": "bob"}]}]
    with pytest.raises(InputError) as info:
        convert(tmp_path, lines)
    out = str(info.value).splitlines()
    assert out[:2] == [
        "chat.jsonl: 3 invalid line(s); nothing was written",
        "chat.jsonl:line 2: field seed: has no Responses API counterpart; remove it (or pass --drop-unsupported)",
    ]
    assert out[2].startswith("chat.jsonl:line 3: is not valid JSON: ")
    assert out[3].startswith("chat.jsonl:line 4: field messages[0].name: has no Responses API counterpart")


def test_drop_unsupported_leaves_them_out_and_counts_them(tmp_path: Path) -> None:
    src = tmp_path / "chat.jsonl"
    src.write_text(
        json.dumps({"model": "m", "messages": [], "seed": 1, "stop": ["x"], "presence_penalty": None}) + "\n"
    )
    out = io.BytesIO()
    counts = convert_file(src, out, shown="chat.jsonl", drop_unsupported=True)
    assert json.loads(out.getvalue()) == {"model": "m", "input": []}
    assert (counts.lines, dict(counts.dropped)) == (1, {"seed": 1, "stop": 1})


def test_a_line_for_another_endpoint_is_refused(tmp_path: Path) -> None:
    line = {"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}}
    with pytest.raises(InputError) as info:
        convert(tmp_path, [line])
    assert "chat.jsonl:line 1: field url: must be '/v1/chat/completions' to be converted (got '/v1/embeddings')" in str(
        info.value
    )
