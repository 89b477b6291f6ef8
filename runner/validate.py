"""What a valid input line is: `validate_line` for a JSONL line, `check_partial_body` for a spec's tables.

`validate_line` checks one parsed JSONL line (a batch line, or a bare Create Response body) against the
union of the two seed schemas, widened by the enum values the live API has added since.
The checks are plain functions driven by tables (runner/jsonchecks.py) rather than pydantic models: every
rule needs a path into the line as the user wrote it and a plain sentence, and pydantic's error locations
carry union tags ('str', 'list[...]', 'function-after') that would have to be translated back for every
union in this schema. Plain checks on the parsed dict are also cheaper than building model instances we
would throw away, since the body is sent exactly as written (unknown fields included).

Issue order is stable: within each object, missing required fields first, then the fields present in the
order the line lists them, then rules that span several fields.

`quick_line` is the fast path of a submit: it accepts the common shapes of a line without building any
path or issue, and says "not sure" (None) for everything else, which `validate_line` then judges in full.
It accepts only what `validate_line` accepts without an issue (tests/unit/test_validate.py checks the two
against each other); it may send any line to the slow path.

What the runner reads back out of a Response (usage, output_text) is runner/reply.py's.

Over 400 lines on purpose: the fast path mirrors the table of checks and must stay beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from runner.jsonchecks import (
    Check,
    FieldIssue,
    any_object,
    array,
    boolean,
    enum,
    fields,
    join,
    number,
    quoted,
    record,
    show,
    string,
    type_issue,
)
from runner.keyadvice import key_advisor
from runner.outputcheck import schema_problem

__all__ = [
    "BACKGROUND_STORE_REASON",
    "ENVELOPE_KEYS",
    "KNOWN_BODY_KEYS",
    "REASONING_EFFORTS",
    "RESPONSES_URL",
    "STREAM_REASON",
    "FieldIssue",
    "ValidatedLine",
    "check_partial_body",
    "quick_line",
    "unknown_key_issue",
    "validate_line",
]


RESPONSES_URL: Final = "/v1/responses"
ENVELOPE_KEYS: Final = ("custom_id", "method", "url", "body")

# Enum values, in the order they are shown in messages. Widened beyond the seeds where the live API's
# OpenAPI description (2026-08) accepts more; see reference/responses-api.md.
ROLES: Final = ("user", "assistant", "system", "developer")
PHASES: Final = ("commentary", "final_answer")
ITEM_STATUSES: Final = ("in_progress", "completed", "incomplete")
TOOL_CHOICES: Final = ("auto", "required", "none")
TRUNCATIONS: Final = ("auto", "disabled")
FORMAT_TYPES: Final = ("text", "json_object", "json_schema")
VERBOSITIES: Final = ("low", "medium", "high")
REASONING_EFFORTS: Final = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
REASONING_SUMMARIES: Final = ("auto", "concise", "detailed")
SERVICE_TIERS: Final = ("auto", "default", "flex", "scale", "priority", "fast")
INCLUDABLES: Final = (
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
)

METADATA_MAX_PAIRS: Final = 16
METADATA_KEY_MAX: Final = 64
METADATA_VALUE_MAX: Final = 512

STREAM_REASON: Final = "streaming is not supported by runner; remove it or set it to false"
BACKGROUND_STORE_REASON: Final = "background responses must be stored (store: true) so they can be polled"


@dataclass(frozen=True, slots=True)
class ValidatedLine:
    """A line checked and ready to queue (when `errors` is empty)."""

    custom_id: str
    body: dict[str, Any]
    errors: list[FieldIssue]
    warnings: list[FieldIssue]
    chat_keys: tuple[str, ...] = ()  # Chat Completions keys of the body, in the order written


_MISSING: Final = object()


# --- input -----------------------------------------------------------------------------------------------

_CONTENT_PART = record(
    {
        "type": string(),
        "text": string(),
        # The API types these two as string-or-null (an image is given by URL or by file id).
        "image_url": string(nullable=True),
        "file_id": string(nullable=True),
    }
)
_CONTENT_PARTS = array(_CONTENT_PART)


def _check_content(value: Any, path: str, out: list[FieldIssue]) -> None:
    if isinstance(value, list):
        _CONTENT_PARTS(value, path, out)
    elif not isinstance(value, str):
        out.append(type_issue(path, "a string or an array of content parts", value))


_MESSAGE_FIELDS: Final[Mapping[str, Check]] = {
    "role": enum(ROLES),
    "content": _check_content,
    "type": string(),
    "phase": enum(PHASES, nullable=True),
    "status": enum(ITEM_STATUSES, nullable=True),
}
_MESSAGE_REQUIRED: Final = ("role", "content")


def _check_input_item(value: Any, path: str, out: list[FieldIssue]) -> None:
    if not isinstance(value, dict):
        out.append(type_issue(path, "an object", value))
    elif "role" in value or value.get("type") == "message":
        fields(value, path, out, _MESSAGE_FIELDS, _MESSAGE_REQUIRED)
    # Other item types (function_call_output, item_reference, reasoning, ...) are the API's to judge.


def _check_input(value: Any, path: str, out: list[FieldIssue]) -> None:
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_input_item(item, f"{path}[{i}]", out)
    elif not isinstance(value, str):
        out.append(type_issue(path, "a string or an array of input items", value))


# --- other structured fields -----------------------------------------------------------------------------

# A custom_id or conversation is kept as a text column of its own, and PostgreSQL's text cannot hold the NUL
# character (`\u0000` in the JSON): the submit's COPY failed whole, in a traceback. Refused on both backends,
# so that a file is valid or not whatever the store. (Inside a body it stays escaped in the JSON text: fine.)
NUL = "\x00"
NUL_REASON = "must not hold a NUL character (\\u0000): a store cannot keep it as an id"

_CONVERSATION_OBJECT = record({"id": string()}, ("id",))


def _check_conversation(value: Any, path: str, out: list[FieldIssue]) -> None:
    if isinstance(value, dict):
        _CONVERSATION_OBJECT(value, path, out)
        if isinstance(value.get("id"), str) and NUL in value["id"]:
            out.append(FieldIssue(join(path, "id"), NUL_REASON, False))
    elif not isinstance(value, str) and value is not None:
        out.append(type_issue(path, "a conversation id or an object with an id", value))
    elif isinstance(value, str) and NUL in value:
        out.append(FieldIssue(path, NUL_REASON, False))


_TOOL_CHOICE_ENUM = enum(TOOL_CHOICES)


def _check_tool_choice(value: Any, path: str, out: list[FieldIssue]) -> None:
    if isinstance(value, str):
        _TOOL_CHOICE_ENUM(value, path, out)
    elif not isinstance(value, dict):
        out.append(type_issue(path, f"one of {quoted(TOOL_CHOICES)} or an object", value))


_FORMAT_FIELDS: Final[Mapping[str, Check]] = {
    "type": enum(FORMAT_TYPES),
    "name": string(),
    "description": string(),
    "schema": any_object(),
    "strict": boolean(nullable=True),
}


def _check_format(value: Any, path: str, out: list[FieldIssue]) -> None:
    if not isinstance(value, dict):
        out.append(type_issue(path, "an object", value))
        return
    fields(value, path, out, _FORMAT_FIELDS, ("type",))
    if value.get("type") == "json_schema":
        for name in ("name", "schema"):
            if name not in value:
                out.append(FieldIssue(join(path, name), "is required when type is 'json_schema'", required=True))
        schema = value.get("schema")
        if isinstance(schema, dict) and (problem := schema_problem(schema)) is not None:
            # Answers are checked against it (runner/outputcheck.py): a broken schema fails here, not later.
            out.append(FieldIssue(join(path, "schema"), f"is not a valid JSON Schema: {problem}"))


def _check_metadata(value: Any, path: str, out: list[FieldIssue]) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        out.append(type_issue(path, "an object", value))
        return
    if len(value) > METADATA_MAX_PAIRS:
        out.append(
            FieldIssue(path, f"must have at most {METADATA_MAX_PAIRS} key-value pairs (got {len(value)})", False)
        )
    for key, item in value.items():
        if len(key) > METADATA_KEY_MAX:
            out.append(
                FieldIssue(
                    join(path, key[:METADATA_KEY_MAX] + "..."),
                    f"key must be at most {METADATA_KEY_MAX} characters (got {len(key)})",
                    False,
                )
            )
        if not isinstance(item, str):
            out.append(type_issue(join(path, key), "a string", item))
        elif len(item) > METADATA_VALUE_MAX:
            out.append(
                FieldIssue(
                    join(path, key),
                    f"must be at most {METADATA_VALUE_MAX} characters (got {len(item)})",
                    False,
                )
            )


_STREAM_TYPE = boolean(nullable=True)


def _check_stream(value: Any, path: str, out: list[FieldIssue]) -> None:
    if value is True:
        out.append(FieldIssue(path, STREAM_REASON, False))
    else:
        _STREAM_TYPE(value, path, out)


def _check_model(value: Any, path: str, out: list[FieldIssue]) -> None:
    if not isinstance(value, str):
        out.append(type_issue(path, "a string", value))
    elif not value or value.isspace():
        # `"model": ""` was queued, and each line then failed at the API with a 400 that names no line.
        out.append(FieldIssue(path, "must not be empty", False))


# Which fields may be null follows the API (openai-python types them Optional), not only the seeds:
# a null that the API accepts must not fail a whole file here.
_BODY_FIELDS: Final[Mapping[str, Check]] = {
    "model": _check_model,
    "input": _check_input,
    "instructions": string(nullable=True),
    "previous_response_id": string(nullable=True),
    "conversation": _check_conversation,
    "max_output_tokens": number(1, integer=True, nullable=True),
    "max_tool_calls": number(0, integer=True, nullable=True),
    "temperature": number(0, 2, nullable=True),
    "top_p": number(0, 1, nullable=True),
    "top_logprobs": number(0, 20, integer=True, nullable=True),
    "tools": array(record({"type": string()}, ("type",))),
    "tool_choice": _check_tool_choice,
    "parallel_tool_calls": boolean(nullable=True),
    "truncation": enum(TRUNCATIONS, nullable=True),
    "text": record({"format": _check_format, "verbosity": enum(VERBOSITIES, nullable=True)}),
    "reasoning": record(
        {
            "effort": enum(REASONING_EFFORTS, nullable=True),
            "summary": enum(REASONING_SUMMARIES, nullable=True),
        },
        nullable=True,
    ),
    "include": array(enum(INCLUDABLES), nullable=True),
    "store": boolean(nullable=True),
    "stream": _check_stream,
    "background": boolean(nullable=True),
    "metadata": _check_metadata,
    "user": string(),
    "prompt_cache_key": string(),
    "safety_identifier": string(),
    "service_tier": enum(SERVICE_TIERS, nullable=True),
    "context_management": array(
        record({"type": string(), "compact_threshold": number(nullable=True)}, ("type",)), nullable=True
    ),
}
_BODY_REQUIRED: Final = ("model", "input")

# Fields the API accepts that are not checked here; a key one edit away from one of these is a typo too.
_UNCHECKED_BODY_KEYS: Final = ("prompt", "stream_options", "prompt_cache_retention")
KNOWN_BODY_KEYS: Final = frozenset(_BODY_FIELDS) | frozenset(_UNCHECKED_BODY_KEYS)
# Cached: a file that repeats one unknown key on every line pays one dict lookup per line.
unknown_key_issue: Final = key_advisor(KNOWN_BODY_KEYS)


def _check_body(body: dict[str, Any], path: str, out: list[FieldIssue], chat: list[str] | None = None) -> None:
    for name in _BODY_REQUIRED:
        if name not in body:
            out.append(FieldIssue(join(path, name), "is required", required=True))
    for key, item in body.items():
        check = _BODY_FIELDS.get(key)
        if check is not None:
            check(item, join(path, key), out)
            continue
        # Only here, on a key the checks do not know (rare), is any work spent on typos.
        found = unknown_key_issue(key)
        if found is not None:
            out.append(FieldIssue(join(path, key), found[0], soft=True))
            if found[1] and chat is not None:
                chat.append(key)
    if body.get("conversation") is not None and body.get("previous_response_id") is not None:
        out.append(FieldIssue(join(path, "conversation"), "cannot be used together with previous_response_id", False))
    if body.get("background") is True and body.get("store") is False:
        out.append(FieldIssue(join(path, "store"), BACKGROUND_STORE_REASON, False))


def check_partial_body(table: Mapping[str, Any]) -> list[FieldIssue]:
    """The issues of a part of a body (a spec's [defaults] or [overrides]): values and keys, no required fields."""
    out: list[FieldIssue] = []
    _check_body({**dict.fromkeys(_BODY_REQUIRED, ""), **table}, "", out)
    return [i for i in out if not i.required and i.field.split(".", 1)[0].split("[", 1)[0] in table]


def _check_envelope(obj: dict[str, Any], out: list[FieldIssue]) -> None:
    custom_id = obj.get("custom_id", _MISSING)
    if custom_id is _MISSING:
        out.append(FieldIssue("custom_id", "is required", False))
    elif not isinstance(custom_id, str):
        out.append(type_issue("custom_id", "a string", custom_id))
    elif not custom_id:
        out.append(FieldIssue("custom_id", "must not be empty", False))
    elif NUL in custom_id:
        out.append(FieldIssue("custom_id", NUL_REASON, False))

    for key, expected in (("method", "POST"), ("url", RESPONSES_URL)):
        value = obj.get(key, _MISSING)
        if value is _MISSING:
            out.append(FieldIssue(key, "is required", False))
        elif value != expected:
            out.append(FieldIssue(key, f"must be {expected!r} (got {show(value)})", False))

    body = obj.get("body", _MISSING)
    if body is _MISSING:
        out.append(FieldIssue("body", "is required", False))
    elif not isinstance(body, dict):
        out.append(type_issue("body", "a JSON object", body))

    out.extend(FieldIssue(key, "unknown field", False) for key in obj if key not in ENVELOPE_KEYS)


def validate_line(
    obj: Any, line_no: int, *, model: str | None = None, background: bool = False, lenient: bool = False
) -> ValidatedLine:
    """Check one parsed JSONL line and return the body to send, with --model / --background applied.

    A line with any of custom_id/method/url/body is a batch line; anything else is a bare body, named
    f"line-{line_no}". With `lenient`, unknown enum values and misspelled or Chat Completions keys are
    warnings rather than errors.
    """
    errors: list[FieldIssue] = []
    if not isinstance(obj, dict):
        errors.append(FieldIssue("", "must be a JSON object", False))
        return ValidatedLine(f"line-{line_no}", {}, errors, [])

    if "custom_id" in obj or "method" in obj or "url" in obj or "body" in obj:
        _check_envelope(obj, errors)
        custom_id = obj.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id or NUL in custom_id:  # the last: a store refuses it
            custom_id = f"line-{line_no}"
        raw = obj.get("body")
        path = "body"
    else:
        custom_id = f"line-{line_no}"
        raw = obj
        path = ""

    if not isinstance(raw, dict):
        return ValidatedLine(custom_id, {}, errors, [])

    body = dict(raw)  # the fills below must not reach the caller's parsed line
    if model is not None and body.get("model") is None:
        body["model"] = model
    if background:
        body["background"] = True
        body["store"] = True

    chat: list[str] = []
    _check_body(body, path, errors, chat)

    if lenient and errors:
        return ValidatedLine(
            custom_id, body, [i for i in errors if not i.soft], [i for i in errors if i.soft], tuple(chat)
        )
    return ValidatedLine(custom_id, body, errors, [], tuple(chat))


# --- the fast path -----------------------------------------------------------------------------------------
# Predicates that are True only for values the checks above accept without an issue. A field missing here,
# or a False, sends the line to `validate_line` (slower, never wrong). Measured on the bench file's lines:
# ~0.8 µs a line here against ~2.7 µs for `validate_line`, which builds a path string for every field.

_ROLE_SET: Final = frozenset(ROLES)
_EFFORT_SET: Final = frozenset(REASONING_EFFORTS)
_SUMMARY_SET: Final = frozenset(REASONING_SUMMARIES)
_TIER_SET: Final = frozenset(SERVICE_TIERS)
_TRUNCATION_SET: Final = frozenset(TRUNCATIONS)
_VERBOSITY_SET: Final = frozenset(VERBOSITIES)
_PLAIN_MESSAGE_KEYS: Final = frozenset({"role", "content", "type"})


def _is_one_of(value: Any, allowed: frozenset[str]) -> bool:
    return type(value) is str and value in allowed  # a list or an object is not hashable


def _ok_str(value: Any) -> bool:
    return type(value) is str


def _ok_model(value: Any) -> bool:
    return type(value) is str and value != "" and not value.isspace()


def _ok_str_or_null(value: Any) -> bool:
    return value is None or type(value) is str


def _ok_bool_or_null(value: Any) -> bool:
    return value is None or value is True or value is False


def _ok_input(value: Any) -> bool:
    if type(value) is str:
        return True
    if type(value) is not list:
        return False
    for item in value:
        # Plain messages only: {"role", "content": text} (and type "message"); anything else is judged in full.
        if (
            type(item) is not dict
            or not _PLAIN_MESSAGE_KEYS.issuperset(item)
            or not _is_one_of(item.get("role"), _ROLE_SET)
            or type(item.get("content")) is not str
            or item.get("type", "message") != "message"
        ):
            return False
    return True


def _ok_max_output_tokens(value: Any) -> bool:
    return value is None or (type(value) is int and value >= 1)


def _ok_temperature(value: Any) -> bool:
    return value is None or (type(value) in (int, float) and 0 <= value <= 2)


def _ok_top_p(value: Any) -> bool:
    return value is None or (type(value) in (int, float) and 0 <= value <= 1)


def _ok_metadata(value: Any) -> bool:
    if value is None:
        return True
    if type(value) is not dict or len(value) > METADATA_MAX_PAIRS:
        return False
    for key, item in value.items():
        if len(key) > METADATA_KEY_MAX or type(item) is not str or len(item) > METADATA_VALUE_MAX:
            return False
    return True


def _ok_reasoning(value: Any) -> bool:
    if value is None:
        return True
    if type(value) is not dict:
        return False
    for key, item in value.items():
        allowed = _EFFORT_SET if key == "effort" else _SUMMARY_SET if key == "summary" else None
        if allowed is None or (item is not None and not _is_one_of(item, allowed)):
            return False
    return True


def _ok_text(value: Any) -> bool:
    # Only {"verbosity": ...} or {"format": {"type": "text"}}: a schema is checked in full (it is compiled).
    if type(value) is not dict:
        return False
    for key, item in value.items():
        if key == "verbosity":
            if item is not None and not _is_one_of(item, _VERBOSITY_SET):
                return False
        elif key != "format" or type(item) is not dict or item.get("type") != "text" or len(item) != 1:
            return False
    return True


def _ok_service_tier(value: Any) -> bool:
    return value is None or _is_one_of(value, _TIER_SET)


def _ok_truncation(value: Any) -> bool:
    return value is None or _is_one_of(value, _TRUNCATION_SET)


# The keys whose check above passes any string: a string value of one of these needs no call at all.
_ANY_STRING: Final = frozenset({"input", "instructions", "user", "prompt_cache_key", "safety_identifier"})

_QUICK_BODY: Final[Mapping[str, Any]] = {
    "model": _ok_model,
    "input": _ok_input,
    "instructions": _ok_str_or_null,
    "max_output_tokens": _ok_max_output_tokens,
    "temperature": _ok_temperature,
    "top_p": _ok_top_p,
    "parallel_tool_calls": _ok_bool_or_null,
    "truncation": _ok_truncation,
    "text": _ok_text,
    "reasoning": _ok_reasoning,
    "store": _ok_bool_or_null,
    "background": _ok_bool_or_null,
    "metadata": _ok_metadata,
    "user": _ok_str,
    "prompt_cache_key": _ok_str,
    "safety_identifier": _ok_str,
    "service_tier": _ok_service_tier,
}


def quick_line(
    obj: Any, line_no: int, *, model: str | None = None, background: bool = False
) -> tuple[str, dict[str, Any]] | None:
    """(custom_id, body to send) for a line of a common shape that `validate_line` would pass without any
    error or warning, with --model / --background applied; None when it cannot tell quickly."""
    if type(obj) is not dict:
        return None
    if "body" in obj:
        # Exactly the four envelope keys: the three looked up below, and "body".
        if len(obj) != 4:
            return None
        custom_id = obj.get("custom_id")
        if (
            type(custom_id) is not str
            or not custom_id
            or NUL in custom_id
            or obj.get("method") != "POST"
            or obj.get("url") != RESPONSES_URL
        ):
            return None
        raw = obj["body"]
        if type(raw) is not dict:
            return None
    elif "custom_id" in obj or "method" in obj or "url" in obj:
        return None
    else:
        custom_id = f"line-{line_no}"
        raw = obj
    if model is not None or background:
        body = dict(raw)  # the fills must not reach the caller's parsed line
        if model is not None and body.get("model") is None:
            body["model"] = model
        if background:
            body["background"] = True
            body["store"] = True
    else:
        body = raw
    if "model" not in body or "input" not in body:
        return None
    for key, value in body.items():
        if type(value) is str and key in _ANY_STRING:
            continue
        ok = _QUICK_BODY.get(key)
        if ok is None or not ok(value):
            return None
    if body.get("background") is True and body.get("store") is False:
        return None
    return custom_id, body
