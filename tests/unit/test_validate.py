from __future__ import annotations

import copy
from typing import Any

import pytest

from runner.validate import (
    BACKGROUND_STORE_REASON,
    REASONING_EFFORTS,
    STREAM_REASON,
    FieldIssue,
    check_partial_body,
    validate_line,
)


def body(**fields: Any) -> dict[str, Any]:
    """A valid bare body, with fields added or overridden."""
    return {"model": "gpt-4o-mini", "input": "Hello", **fields}


def batch(b: Any = None, **envelope: Any) -> dict[str, Any]:
    """A valid batch line around `b`, with envelope keys added or overridden."""
    line: dict[str, Any] = {
        "custom_id": "req-1",
        "method": "POST",
        "url": "/v1/responses",
        "body": body() if b is None else b,
    }
    line.update(envelope)
    return line


def issues(obj: Any, **kw: Any) -> list[tuple[str, str]]:
    return [(i.field, i.reason) for i in validate_line(obj, 3, **kw).errors]


def one_issue(obj: Any, **kw: Any) -> FieldIssue:
    errors = validate_line(obj, 3, **kw).errors
    assert len(errors) == 1, errors
    return errors[0]


# --- valid lines ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({}, id="minimal"),
        pytest.param({"input": [{"role": "user", "content": "hi"}]}, id="message-list"),
        pytest.param(
            {
                "input": [
                    {
                        "type": "message",
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "what is this?"},
                            {"type": "input_image", "image_url": "https://x/y.png"},
                            {"type": "input_file", "file_id": "file-1"},
                        ],
                    }
                ]
            },
            id="content-parts",
        ),
        pytest.param(
            {
                "input": [
                    {"role": "assistant", "content": "ok", "phase": "final_answer", "status": "completed"},
                    {"type": "function_call_output", "call_id": "call_1", "output": "42"},
                    {"type": "item_reference", "id": "msg_1"},
                    {"type": "reasoning", "id": "rs_1", "summary": []},
                ]
            },
            id="non-message-items",
        ),
        pytest.param({"reasoning": {"effort": "xhigh", "summary": "auto"}}, id="effort-xhigh"),
        pytest.param({"reasoning": {"effort": "max"}}, id="effort-max"),
        pytest.param({"reasoning": None}, id="reasoning-null"),
        pytest.param({"service_tier": "fast"}, id="service-tier-fast"),
        pytest.param({"conversation": "conv_123"}, id="conversation-string"),
        pytest.param({"conversation": {"id": "conv_123"}}, id="conversation-object"),
        pytest.param({"max_output_tokens": 5.0}, id="integral-float-is-integer"),
        pytest.param(
            {
                "instructions": None,
                "previous_response_id": "resp_1",
                "max_output_tokens": 256,
                "max_tool_calls": 0,
                "temperature": 0,
                "top_p": 1,
                "top_logprobs": 20,
                "tools": [{"type": "function", "name": "f", "parameters": {}}],
                "tool_choice": {"type": "function", "name": "f"},
                "parallel_tool_calls": False,
                "truncation": "auto",
                "text": {
                    "format": {"type": "json_schema", "name": "out", "schema": {}, "strict": True},
                    "verbosity": "low",
                },
                "include": ["reasoning.encrypted_content", "message.output_text.logprobs"],
                "store": True,
                "stream": False,
                "background": True,
                "metadata": {f"k{i}": "v" * 512 for i in range(16)},
                "user": "u",
                "prompt_cache_key": "p",
                "safety_identifier": "s",
                "context_management": [{"type": "compaction", "compact_threshold": 2000}],
            },
            id="everything",
        ),
    ],
)
def test_valid_bodies_have_no_issues(fields: dict[str, Any]) -> None:
    result = validate_line(body(**fields), 1)
    assert result.errors == []
    assert result.warnings == []


def test_valid_batch_line() -> None:
    result = validate_line(batch(), 1)
    assert result.errors == []
    assert result.custom_id == "req-1"
    assert result.body == body()


# --- one rule each ----------------------------------------------------------------------------------------

CASES: list[Any] = [
    # (id, bare body, field, reason, is_enum)
    ("missing-model", {"input": "hi"}, "model", "is required", False),
    ("model-not-string", body(model=4), "model", "must be a string (got 4)", False),
    ("missing-input", {"model": "m"}, "input", "is required", False),
    (
        "input-wrong-type",
        body(input=5),
        "input",
        "must be a string or an array of input items (got 5)",
        False,
    ),
    ("input-item-not-object", body(input=["hi"]), "input[0]", "must be an object (got 'hi')", False),
    ("temperature-3", body(temperature=3), "temperature", "must be between 0 and 2 (got 3)", False),
    (
        "temperature-negative",
        body(temperature=-0.1),
        "temperature",
        "must be between 0 and 2 (got -0.1)",
        False,
    ),
    ("temperature-string", body(temperature="1"), "temperature", "must be a number (got '1')", False),
    ("temperature-nan", body(temperature=float("nan")), "temperature", "must be a number (got nan)", False),
    ("top-p-1.5", body(top_p=1.5), "top_p", "must be between 0 and 1 (got 1.5)", False),
    ("top-logprobs-21", body(top_logprobs=21), "top_logprobs", "must be between 0 and 20 (got 21)", False),
    (
        "max-output-tokens-0",
        body(max_output_tokens=0),
        "max_output_tokens",
        "must be at least 1 (got 0)",
        False,
    ),
    (
        "max-output-tokens-5.5",
        body(max_output_tokens=5.5),
        "max_output_tokens",
        "must be an integer (got 5.5)",
        False,
    ),
    (
        "max-output-tokens-true",
        body(max_output_tokens=True),
        "max_output_tokens",
        "must be an integer (got true)",
        False,
    ),
    (
        "max-tool-calls-negative",
        body(max_tool_calls=-1),
        "max_tool_calls",
        "must be at least 0 (got -1)",
        False,
    ),
    (
        "metadata-17-pairs",
        body(metadata={f"k{i}": "v" for i in range(17)}),
        "metadata",
        "must have at most 16 key-value pairs (got 17)",
        False,
    ),
    ("metadata-non-string-value", body(metadata={"n": 1}), "metadata.n", "must be a string (got 1)", False),
    (
        "metadata-value-too-long",
        body(metadata={"n": "v" * 513}),
        "metadata.n",
        "must be at most 512 characters (got 513)",
        False,
    ),
    (
        "metadata-key-too-long",
        body(metadata={"k" * 65: "v"}),
        "metadata." + "k" * 64 + "...",
        "key must be at most 64 characters (got 65)",
        False,
    ),
    ("metadata-not-object", body(metadata=[]), "metadata", "must be an object (got an array)", False),
    (
        "truncation-bad",
        body(truncation="sometimes"),
        "truncation",
        "must be one of 'auto', 'disabled' (got 'sometimes')",
        True,
    ),
    (
        "effort-turbo",
        body(reasoning={"effort": "turbo"}),
        "reasoning.effort",
        "must be one of 'none', 'minimal', 'low', 'medium', 'high', 'xhigh', 'max' (got 'turbo')",
        True,
    ),
    ("effort-number", body(reasoning={"effort": 5}), "reasoning.effort", "must be a string (got 5)", False),
    (
        "summary-bad",
        body(reasoning={"summary": "long"}),
        "reasoning.summary",
        "must be one of 'auto', 'concise', 'detailed' (got 'long')",
        True,
    ),
    ("reasoning-not-object", body(reasoning="high"), "reasoning", "must be an object (got 'high')", False),
    (
        "format-type-bad",
        body(text={"format": {"type": "yaml"}}),
        "text.format.type",
        "must be one of 'text', 'json_object', 'json_schema' (got 'yaml')",
        True,
    ),
    ("format-type-missing", body(text={"format": {}}), "text.format.type", "is required", False),
    (
        "json-schema-without-name",
        body(text={"format": {"type": "json_schema", "schema": {}}}),
        "text.format.name",
        "is required when type is 'json_schema'",
        False,
    ),
    (
        "json-schema-schema-not-object",
        body(text={"format": {"type": "json_schema", "name": "n", "schema": "x"}}),
        "text.format.schema",
        "must be an object (got 'x')",
        False,
    ),
    (
        "format-strict-not-bool",
        body(text={"format": {"type": "json_object", "strict": "yes"}}),
        "text.format.strict",
        "must be a boolean (got 'yes')",
        False,
    ),
    (
        "verbosity-bad",
        body(text={"verbosity": "loud"}),
        "text.verbosity",
        "must be one of 'low', 'medium', 'high' (got 'loud')",
        True,
    ),
    (
        "message-role-bad",
        body(input=[{"role": "bot", "content": "hi"}]),
        "input[0].role",
        "must be one of 'user', 'assistant', 'system', 'developer' (got 'bot')",
        True,
    ),
    (
        "message-role-missing",
        body(input=[{"type": "message", "content": "hi"}]),
        "input[0].role",
        "is required",
        False,
    ),
    ("message-content-missing", body(input=[{"role": "user"}]), "input[0].content", "is required", False),
    (
        "message-content-wrong-type",
        body(input=[{"role": "user", "content": 7}]),
        "input[0].content",
        "must be a string or an array of content parts (got 7)",
        False,
    ),
    (
        "content-part-not-object",
        body(input=[{"role": "user", "content": ["hi"]}]),
        "input[0].content[0]",
        "must be an object (got 'hi')",
        False,
    ),
    (
        "content-part-text-not-string",
        body(input=[{"role": "user", "content": [{"type": "input_text", "text": 1}]}]),
        "input[0].content[0].text",
        "must be a string (got 1)",
        False,
    ),
    (
        "content-part-type-not-string",
        body(input=[{"role": "user", "content": [{"type": 1, "text": "x"}]}]),
        "input[0].content[0].type",
        "must be a string (got 1)",
        False,
    ),
    (
        "message-phase-bad",
        body(input=[{"role": "assistant", "content": "x", "phase": "draft"}]),
        "input[0].phase",
        "must be one of 'commentary', 'final_answer' (got 'draft')",
        True,
    ),
    (
        "message-status-bad",
        body(input=[{"role": "assistant", "content": "x", "status": "done"}]),
        "input[0].status",
        "must be one of 'in_progress', 'completed', 'incomplete' (got 'done')",
        True,
    ),
    ("conversation-empty-object", body(conversation={}), "conversation.id", "is required", False),
    (
        "conversation-number",
        body(conversation=5),
        "conversation",
        "must be a conversation id or an object with an id (got 5)",
        False,
    ),
    (
        "conversation-and-previous-response",
        body(conversation="conv_1", previous_response_id="resp_1"),
        "conversation",
        "cannot be used together with previous_response_id",
        False,
    ),
    (
        "include-bad-value",
        body(include=["file_search_call.results", "everything"]),
        "include[1]",
        "must be one of 'file_search_call.results', 'web_search_call.results', "
        "'web_search_call.action.sources', 'message.input_image.image_url', "
        "'computer_call_output.output.image_url', 'code_interpreter_call.outputs', "
        "'reasoning.encrypted_content', 'message.output_text.logprobs' (got 'everything')",
        True,
    ),
    ("include-not-array", body(include="x"), "include", "must be an array (got 'x')", False),
    (
        "service-tier-bad",
        body(service_tier="gold"),
        "service_tier",
        "must be one of 'auto', 'default', 'flex', 'scale', 'priority', 'fast' (got 'gold')",
        True,
    ),
    (
        "tool-choice-bad-string",
        body(tool_choice="always"),
        "tool_choice",
        "must be one of 'auto', 'required', 'none' (got 'always')",
        True,
    ),
    (
        "tool-choice-wrong-type",
        body(tool_choice=1),
        "tool_choice",
        "must be one of 'auto', 'required', 'none' or an object (got 1)",
        False,
    ),
    ("tool-without-type", body(tools=[{"name": "f"}]), "tools[0].type", "is required", False),
    ("tool-not-object", body(tools=["f"]), "tools[0]", "must be an object (got 'f')", False),
    ("instructions-not-string", body(instructions=1), "instructions", "must be a string (got 1)", False),
    ("store-not-bool", body(store="yes"), "store", "must be a boolean (got 'yes')", False),
    ("user-not-string", body(user=None), "user", "must be a string (got null)", False),
    (
        "context-management-without-type",
        body(context_management=[{"compact_threshold": 1000}]),
        "context_management[0].type",
        "is required",
        False,
    ),
    (
        "compact-threshold-not-number",
        body(context_management=[{"type": "compaction", "compact_threshold": "1k"}]),
        "context_management[0].compact_threshold",
        "must be a number (got '1k')",
        False,
    ),
    ("stream-true", body(stream=True), "stream", STREAM_REASON, False),
    ("background-without-store", body(background=True, store=False), "store", BACKGROUND_STORE_REASON, False),
]

RULES = [pytest.param(*case[1:], id=case[0]) for case in CASES]


@pytest.mark.parametrize(("obj", "field", "reason", "is_enum"), RULES)
def test_rule_on_bare_body(obj: dict[str, Any], field: str, reason: str, is_enum: bool) -> None:
    assert one_issue(obj) == FieldIssue(field, reason, is_enum)


@pytest.mark.parametrize(("obj", "field", "reason", "is_enum"), RULES)
def test_rule_on_batch_line_is_prefixed_with_body(obj: dict[str, Any], field: str, reason: str, is_enum: bool) -> None:
    assert one_issue(batch(obj)) == FieldIssue(f"body.{field}", reason, is_enum)


# --- envelope ---------------------------------------------------------------------------------------------


def _without(key: str) -> dict[str, Any]:
    line = batch()
    del line[key]
    return line


@pytest.mark.parametrize(
    ("line", "field", "reason"),
    [
        pytest.param(_without("custom_id"), "custom_id", "is required", id="missing-custom-id"),
        pytest.param(batch(custom_id=""), "custom_id", "must not be empty", id="empty-custom-id"),
        pytest.param(batch(custom_id=7), "custom_id", "must be a string (got 7)", id="custom-id-number"),
        pytest.param(_without("method"), "method", "is required", id="missing-method"),
        pytest.param(batch(method="GET"), "method", "must be 'POST' (got 'GET')", id="method-get"),
        pytest.param(_without("url"), "url", "is required", id="missing-url"),
        pytest.param(
            batch(url="/v1/chat/completions"),
            "url",
            "must be '/v1/responses' (got '/v1/chat/completions')",
            id="chat-completions-url",
        ),
        pytest.param(_without("body"), "body", "is required", id="missing-body"),
        pytest.param(batch("hi"), "body", "must be a JSON object (got 'hi')", id="body-string"),
        pytest.param(batch([]), "body", "must be a JSON object (got an array)", id="body-array"),
        pytest.param(batch(priority=1), "priority", "unknown field", id="unknown-envelope-key"),
    ],
)
def test_envelope_rule(line: dict[str, Any], field: str, reason: str) -> None:
    assert one_issue(line) == FieldIssue(field, reason, False)


def test_any_envelope_key_makes_a_batch_line() -> None:
    # A bare body with a stray "url" is read as a batch line, so the user hears about the envelope.
    assert issues(body(url="/v1/responses")) == [
        ("custom_id", "is required"),
        ("method", "is required"),
        ("body", "is required"),
        ("model", "unknown field"),
        ("input", "unknown field"),
    ]


def test_bad_custom_id_falls_back_to_line_number() -> None:
    assert validate_line(batch(custom_id=""), 9).custom_id == "line-9"


def test_bare_body_is_named_by_line_number() -> None:
    result = validate_line(body(), 42)
    assert result.custom_id == "line-42"
    assert result.body == body()
    assert result.errors == []


@pytest.mark.parametrize("obj", [[1, 2], "text", 5, None, True], ids=repr)
def test_non_object_line(obj: Any) -> None:
    result = validate_line(obj, 4)
    assert result.errors == [FieldIssue("", "must be a JSON object", False)]
    assert result.custom_id == "line-4"
    assert result.body == {}


# --- fills ------------------------------------------------------------------------------------------------


def test_model_option_fills_missing_model() -> None:
    line = batch({"input": "hi"})
    result = validate_line(line, 1, model="gpt-4.1")
    assert result.errors == []
    assert result.body == {"input": "hi", "model": "gpt-4.1"}
    assert line["body"] == {"input": "hi"}  # the caller's line is left alone


def test_model_option_does_not_override_model() -> None:
    assert validate_line(body(model="o3"), 1, model="gpt-4.1").body["model"] == "o3"


def test_background_option_sets_background_and_store() -> None:
    line = body(store=False)
    result = validate_line(line, 1, background=True)
    assert result.errors == []
    assert result.body["background"] is True
    assert result.body["store"] is True
    assert line == body(store=False)


def test_unknown_fields_pass_through_unchanged() -> None:
    extra = {
        "prompt": {"id": "pmpt_1", "variables": {"x": [1, {"y": None}]}},
        "stream_options": {"include_obfuscation": False},
        "brand_new_option": 3.5,
    }
    line = batch(body(**extra, text={"format": {"type": "text"}, "new_knob": [1]}), future_envelope=None)
    original = copy.deepcopy(line)
    result = validate_line(line, 1)
    assert result.errors == [FieldIssue("future_envelope", "unknown field", False)]
    assert result.body == original["body"]
    for key in extra:
        assert result.body[key] is line["body"][key]
    assert line == original


# --- lenient, ordering ------------------------------------------------------------------------------------


def test_lenient_moves_enum_issues_to_warnings_but_keeps_type_errors() -> None:
    line = body(reasoning={"effort": "turbo"}, temperature="hot", service_tier="gold")
    result = validate_line(line, 1, lenient=True)
    assert [(i.field, i.soft) for i in result.warnings] == [
        ("reasoning.effort", True),
        ("service_tier", True),
    ]
    assert result.errors == [FieldIssue("temperature", "must be a number (got 'hot')", False)]


def test_lenient_with_only_enum_issues_is_valid() -> None:
    result = validate_line(batch(body(truncation="smart")), 1, lenient=True)
    assert result.errors == []
    assert result.warnings == [FieldIssue("body.truncation", "must be one of 'auto', 'disabled' (got 'smart')", True)]


def test_lenient_keeps_numeric_enum_value_an_error() -> None:
    result = validate_line(body(reasoning={"effort": 5}), 1, lenient=True)
    assert result.errors == [FieldIssue("reasoning.effort", "must be a string (got 5)", False)]
    assert result.warnings == []


def test_without_lenient_enum_issues_are_errors() -> None:
    result = validate_line(body(truncation="smart"), 1)
    assert [i.field for i in result.errors] == ["truncation"]
    assert result.warnings == []


def test_all_issues_of_a_line_are_reported_in_order() -> None:
    line = batch(
        {
            "temperature": 9,
            "input": [{"role": "robot", "content": 1}, "loose"],
            "metadata": {"a": 1},
            "stream": True,
            "background": True,
            "store": False,
        },
        custom_id="",
        method="GET",
        extra=True,
    )
    assert issues(line) == [
        ("custom_id", "must not be empty"),
        ("method", "must be 'POST' (got 'GET')"),
        ("extra", "unknown field"),
        ("body.model", "is required"),
        ("body.temperature", "must be between 0 and 2 (got 9)"),
        ("body.input[0].role", "must be one of 'user', 'assistant', 'system', 'developer' (got 'robot')"),
        ("body.input[0].content", "must be a string or an array of content parts (got 1)"),
        ("body.input[1]", "must be an object (got 'loose')"),
        ("body.metadata.a", "must be a string (got 1)"),
        ("body.stream", STREAM_REASON),
        ("body.store", BACKGROUND_STORE_REASON),
    ]
    assert issues(line) == issues(copy.deepcopy(line))


def test_long_string_values_are_clipped_in_reasons() -> None:
    issue = one_issue(body(truncation="x" * 500))
    assert issue.reason.endswith("(got '" + "x" * 37 + "...')")


# --- misspelled and Chat Completions keys -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("temprature", "temperature"),
        ("max_output_token", "max_output_tokens"),
        ("instruction", "instructions"),
        ("modle", "model"),
        ("tmeperature", "temperature"),
        ("Temperature", "temperature"),
        ("maxOutputTokens", "max_output_tokens"),
        ("stream_option", "stream_options"),
    ],
)
def test_a_key_one_typo_away_is_named_with_the_known_one(key: str, suggestion: str) -> None:
    assert one_issue(body(**{key: 1})) == FieldIssue(key, f"unknown field; did you mean {suggestion!r}?", True)
    assert one_issue(batch(body(**{key: 1}))).field == f"body.{key}"


@pytest.mark.parametrize(
    ("key", "instead"),
    [
        ("max_tokens", "max_output_tokens"),
        ("max_completion_tokens", "max_output_tokens"),
        ("response_format", "text.format"),
        ("functions", "tools"),
        ("function_call", "tool_choice"),
        ("reasoning_effort", "reasoning.effort"),
    ],
)
def test_a_chat_completions_key_names_what_to_write_instead(key: str, instead: str) -> None:
    result = validate_line(batch(body(**{key: 1})), 1)
    assert result.errors == [FieldIssue(f"body.{key}", f"Chat Completions field; write {instead!r} instead", True)]
    assert result.chat_keys == (key,)


@pytest.mark.parametrize("key", ["n", "stop", "frequency_penalty", "presence_penalty", "logit_bias", "seed"])
def test_a_chat_completions_key_without_counterpart_says_remove_it(key: str) -> None:
    reason = "Chat Completions field that the Responses API does not accept; remove it"
    assert one_issue(body(**{key: 2})) == FieldIssue(key, reason, True)


def test_messages_without_input_names_both() -> None:
    line = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    result = validate_line(line, 1)
    assert [(i.field, i.reason) for i in result.errors] == [
        ("input", "is required"),
        ("messages", "Chat Completions field; write 'input' instead"),
    ]
    assert result.chat_keys == ("messages",)


@pytest.mark.parametrize("key", ["brand_new_option", "top_k", "prompt", "stream_options", "x", "foo"])
def test_keys_far_from_known_ones_pass_through(key: str) -> None:
    result = validate_line(body(**{key: 1}), 1)
    assert (result.errors, result.warnings, result.body[key]) == ([], [], 1)


def test_nested_unknown_keys_are_not_checked_for_typos() -> None:
    result = validate_line(body(reasoning={"efort": "low"}, text={"fromat": {}}), 1)
    assert result.errors == []


def test_lenient_makes_typo_and_chat_keys_warnings_and_queues_the_body_as_written() -> None:
    line = body(temprature=0.5, max_tokens=10)
    result = validate_line(batch(line), 1, lenient=True)
    assert result.errors == []
    assert [i.field for i in result.warnings] == ["body.temprature", "body.max_tokens"]
    assert result.body == line


def test_partial_body_checks_values_and_keys_but_not_required_fields() -> None:
    issues_ = check_partial_body(
        {"max_output_tokens": 0, "reasoning": {"effort": "hgih"}, "text": {"format": {"name": "x"}}, "seed": 1}
    )
    assert [(i.field, i.reason, i.soft) for i in issues_] == [
        ("max_output_tokens", "must be at least 1 (got 0)", False),
        ("reasoning.effort", f"must be one of {', '.join(map(repr, REASONING_EFFORTS))} (got 'hgih')", True),
        ("seed", "Chat Completions field that the Responses API does not accept; remove it", True),
    ]
    assert check_partial_body({"temperature": 0.5, "metadata": {"run": "nightly"}}) == []
