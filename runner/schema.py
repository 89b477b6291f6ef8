"""What a valid input line is, and what the runner reads back out of a Response.

Request side: `validate_line` checks one parsed JSONL line (a batch line, or a bare Create Response body)
against the union of the two seed schemas, widened by the enum values the live API has added since.
The checks are plain functions driven by tables rather than pydantic models: every rule needs a path into
the line as the user wrote it and a plain sentence, and pydantic's error locations carry union tags
('str', 'list[...]', 'function-after') that would have to be translated back for every union in this
schema. Plain checks on the parsed dict are also cheaper than building model instances we would throw
away, since the body is sent exactly as written (unknown fields included).

Issue order is stable: within each object, missing required fields first, then the fields present in the
order the line lists them, then rules that span several fields.

Response side: `Usage`, `output_text`, `with_output_text` (runner/reply.py reads usage out of a reply, bounded).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

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
class FieldIssue:
    """One problem with one field of a line."""

    field: str  # dotted path into the line as written ("body.input[2].role"); "" for the whole line
    reason: str
    # A warning under --lenient: a value outside a known enum (the API may have added it since), or a
    # misspelled or Chat Completions key (the user may know better, e.g. a server that accepts it).
    soft: bool = False
    # A missing field: meaningless for a partial body such as a spec's [defaults]. Not part of equality.
    required: bool = dataclasses.field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class ValidatedLine:
    """A line checked and ready to queue (when `errors` is empty)."""

    custom_id: str
    body: dict[str, Any]
    errors: list[FieldIssue]
    warnings: list[FieldIssue]
    chat_keys: tuple[str, ...] = ()  # Chat Completions keys of the body, in the order written


# A check appends the issues of one value (at `path`) to `out`.
_Check = Callable[[Any, str, list[FieldIssue]], None]

_MISSING: Final = object()


def _show(value: Any) -> str:
    """The value as the user wrote it in JSON, short enough for a one-line message."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _is_int(value: Any) -> bool:
    # JSON Schema counts 5.0 as an integer; bool is an int subclass in Python but not in JSON.
    t = type(value)
    return t is int or (t is float and value.is_integer())


def _is_number(value: Any) -> bool:
    # NaN and Infinity are not JSON; a lenient parser may still produce them.
    t = type(value)
    return t is int or (t is float and math.isfinite(value))


def _type_issue(path: str, expected: str, value: Any) -> FieldIssue:
    return FieldIssue(path, f"must be {expected} (got {_show(value)})", False)


def _string(*, nullable: bool = False) -> _Check:
    def check(value: Any, path: str, out: list[FieldIssue]) -> None:
        if not isinstance(value, str) and not (nullable and value is None):
            out.append(_type_issue(path, "a string", value))

    return check


def _boolean(*, nullable: bool = False) -> _Check:
    def check(value: Any, path: str, out: list[FieldIssue]) -> None:
        if value is not True and value is not False and not (nullable and value is None):
            out.append(_type_issue(path, "a boolean", value))

    return check


def _object(*, nullable: bool = False) -> _Check:
    def check(value: Any, path: str, out: list[FieldIssue]) -> None:
        if not isinstance(value, dict) and not (nullable and value is None):
            out.append(_type_issue(path, "an object", value))

    return check


def _number(
    lo: float | None = None, hi: float | None = None, *, integer: bool = False, nullable: bool = False
) -> _Check:
    kind = "an integer" if integer else "a number"
    is_kind = _is_int if integer else _is_number
    if lo is not None and hi is not None:
        bounds = f"must be between {lo} and {hi}"
    elif lo is not None:
        bounds = f"must be at least {lo}"
    else:
        bounds = f"must be at most {hi}"

    def check(value: Any, path: str, out: list[FieldIssue]) -> None:
        if value is None and nullable:
            return
        if not is_kind(value):
            out.append(_type_issue(path, kind, value))
        elif (lo is not None and value < lo) or (hi is not None and value > hi):
            out.append(FieldIssue(path, f"{bounds} (got {_show(value)})", False))

    return check


def _quoted(values: tuple[str, ...]) -> str:
    return ", ".join(repr(v) for v in values)


def _enum(values: tuple[str, ...], *, nullable: bool = False) -> _Check:
    allowed = frozenset(values)
    expected = f"must be one of {_quoted(values)}"

    def check(value: Any, path: str, out: list[FieldIssue]) -> None:
        if isinstance(value, str):
            if value not in allowed:
                out.append(FieldIssue(path, f"{expected} (got {_show(value)})", True))
        elif not (nullable and value is None):
            # A wrong type is a real error even under --lenient: no future enum value is a number.
            out.append(_type_issue(path, "a string", value))

    return check


def _fields(
    value: dict[str, Any],
    path: str,
    out: list[FieldIssue],
    checks: Mapping[str, _Check],
    required: tuple[str, ...],
) -> None:
    """Check an object's known fields; unknown fields are the API's business, not ours."""
    for name in required:
        if name not in value:
            out.append(FieldIssue(_join(path, name), "is required", required=True))
    for key, item in value.items():
        check = checks.get(key)
        if check is not None:
            check(item, _join(path, key), out)


def _record(checks: Mapping[str, _Check], required: tuple[str, ...] = (), *, nullable: bool = False) -> _Check:
    """An object with the given field checks (extra fields allowed)."""

    def check(value: Any, path: str, out: list[FieldIssue]) -> None:
        if isinstance(value, dict):
            _fields(value, path, out, checks, required)
        elif not (nullable and value is None):
            out.append(_type_issue(path, "an object", value))

    return check


def _array(item: _Check, *, nullable: bool = False) -> _Check:
    def check(value: Any, path: str, out: list[FieldIssue]) -> None:
        if isinstance(value, list):
            for i, element in enumerate(value):
                item(element, f"{path}[{i}]", out)
        elif not (nullable and value is None):
            out.append(_type_issue(path, "an array", value))

    return check


# --- input -----------------------------------------------------------------------------------------------

_CONTENT_PART = _record(
    {
        "type": _string(),
        "text": _string(),
        # The API types these two as string-or-null (an image is given by URL or by file id).
        "image_url": _string(nullable=True),
        "file_id": _string(nullable=True),
    }
)
_CONTENT_PARTS = _array(_CONTENT_PART)


def _check_content(value: Any, path: str, out: list[FieldIssue]) -> None:
    if isinstance(value, list):
        _CONTENT_PARTS(value, path, out)
    elif not isinstance(value, str):
        out.append(_type_issue(path, "a string or an array of content parts", value))


_MESSAGE_FIELDS: Final[Mapping[str, _Check]] = {
    "role": _enum(ROLES),
    "content": _check_content,
    "type": _string(),
    "phase": _enum(PHASES, nullable=True),
    "status": _enum(ITEM_STATUSES, nullable=True),
}
_MESSAGE_REQUIRED: Final = ("role", "content")


def _check_input_item(value: Any, path: str, out: list[FieldIssue]) -> None:
    if not isinstance(value, dict):
        out.append(_type_issue(path, "an object", value))
    elif "role" in value or value.get("type") == "message":
        _fields(value, path, out, _MESSAGE_FIELDS, _MESSAGE_REQUIRED)
    # Other item types (function_call_output, item_reference, reasoning, ...) are the API's to judge.


def _check_input(value: Any, path: str, out: list[FieldIssue]) -> None:
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_input_item(item, f"{path}[{i}]", out)
    elif not isinstance(value, str):
        out.append(_type_issue(path, "a string or an array of input items", value))


# --- other structured fields -----------------------------------------------------------------------------

_CONVERSATION_OBJECT = _record({"id": _string()}, ("id",))


def _check_conversation(value: Any, path: str, out: list[FieldIssue]) -> None:
    if isinstance(value, dict):
        _CONVERSATION_OBJECT(value, path, out)
    elif not isinstance(value, str) and value is not None:
        out.append(_type_issue(path, "a conversation id or an object with an id", value))


_TOOL_CHOICE_ENUM = _enum(TOOL_CHOICES)


def _check_tool_choice(value: Any, path: str, out: list[FieldIssue]) -> None:
    if isinstance(value, str):
        _TOOL_CHOICE_ENUM(value, path, out)
    elif not isinstance(value, dict):
        out.append(_type_issue(path, f"one of {_quoted(TOOL_CHOICES)} or an object", value))


_FORMAT_FIELDS: Final[Mapping[str, _Check]] = {
    "type": _enum(FORMAT_TYPES),
    "name": _string(),
    "description": _string(),
    "schema": _object(),
    "strict": _boolean(nullable=True),
}


def _check_format(value: Any, path: str, out: list[FieldIssue]) -> None:
    if not isinstance(value, dict):
        out.append(_type_issue(path, "an object", value))
        return
    _fields(value, path, out, _FORMAT_FIELDS, ("type",))
    if value.get("type") == "json_schema":
        for name in ("name", "schema"):
            if name not in value:
                out.append(FieldIssue(_join(path, name), "is required when type is 'json_schema'", required=True))


def _check_metadata(value: Any, path: str, out: list[FieldIssue]) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        out.append(_type_issue(path, "an object", value))
        return
    if len(value) > METADATA_MAX_PAIRS:
        out.append(
            FieldIssue(path, f"must have at most {METADATA_MAX_PAIRS} key-value pairs (got {len(value)})", False)
        )
    for key, item in value.items():
        if len(key) > METADATA_KEY_MAX:
            out.append(
                FieldIssue(
                    _join(path, key[:METADATA_KEY_MAX] + "..."),
                    f"key must be at most {METADATA_KEY_MAX} characters (got {len(key)})",
                    False,
                )
            )
        if not isinstance(item, str):
            out.append(_type_issue(_join(path, key), "a string", item))
        elif len(item) > METADATA_VALUE_MAX:
            out.append(
                FieldIssue(
                    _join(path, key),
                    f"must be at most {METADATA_VALUE_MAX} characters (got {len(item)})",
                    False,
                )
            )


_STREAM_TYPE = _boolean(nullable=True)


def _check_stream(value: Any, path: str, out: list[FieldIssue]) -> None:
    if value is True:
        out.append(FieldIssue(path, STREAM_REASON, False))
    else:
        _STREAM_TYPE(value, path, out)


# Which fields may be null follows the API (openai-python types them Optional), not only the seeds:
# a null that the API accepts must not fail a whole file here.
_BODY_FIELDS: Final[Mapping[str, _Check]] = {
    "model": _string(),
    "input": _check_input,
    "instructions": _string(nullable=True),
    "previous_response_id": _string(nullable=True),
    "conversation": _check_conversation,
    "max_output_tokens": _number(1, integer=True, nullable=True),
    "max_tool_calls": _number(0, integer=True, nullable=True),
    "temperature": _number(0, 2, nullable=True),
    "top_p": _number(0, 1, nullable=True),
    "top_logprobs": _number(0, 20, integer=True, nullable=True),
    "tools": _array(_record({"type": _string()}, ("type",))),
    "tool_choice": _check_tool_choice,
    "parallel_tool_calls": _boolean(nullable=True),
    "truncation": _enum(TRUNCATIONS, nullable=True),
    "text": _record({"format": _check_format, "verbosity": _enum(VERBOSITIES, nullable=True)}),
    "reasoning": _record(
        {
            "effort": _enum(REASONING_EFFORTS, nullable=True),
            "summary": _enum(REASONING_SUMMARIES, nullable=True),
        },
        nullable=True,
    ),
    "include": _array(_enum(INCLUDABLES), nullable=True),
    "store": _boolean(nullable=True),
    "stream": _check_stream,
    "background": _boolean(nullable=True),
    "metadata": _check_metadata,
    "user": _string(),
    "prompt_cache_key": _string(),
    "safety_identifier": _string(),
    "service_tier": _enum(SERVICE_TIERS, nullable=True),
    "context_management": _array(
        _record({"type": _string(), "compact_threshold": _number(nullable=True)}, ("type",)), nullable=True
    ),
}
_BODY_REQUIRED: Final = ("model", "input")

# Fields the API accepts that are not checked here; a key one edit away from one of these is a typo too.
_UNCHECKED_BODY_KEYS: Final = ("prompt", "stream_options", "prompt_cache_retention")
KNOWN_BODY_KEYS: Final = frozenset(_BODY_FIELDS) | frozenset(_UNCHECKED_BODY_KEYS)
# Fields other OpenAI-compatible servers accept that happen to be one edit away from a known key.
_FOREIGN_KEYS: Final = frozenset({"top_k"})

_REMOVE: Final = ""  # a Chat Completions key with no Responses counterpart
# Chat Completions keys, and what the Responses API takes instead.
CHAT_KEYS: Final[Mapping[str, str]] = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "response_format": "text.format",
    "functions": "tools",
    "function_call": "tool_choice",
    "reasoning_effort": "reasoning.effort",
    "verbosity": "text.verbosity",
    "logprobs": "include: ['message.output_text.logprobs']",
    "web_search_options": "tools: [{'type': 'web_search'}]",
    "n": _REMOVE,
    "stop": _REMOVE,
    "frequency_penalty": _REMOVE,
    "presence_penalty": _REMOVE,
    "logit_bias": _REMOVE,
    "seed": _REMOVE,
    "modalities": _REMOVE,
    "audio": _REMOVE,
    "prediction": _REMOVE,
}
_CAMEL: Final = re.compile(r"(?<=[a-z0-9])([A-Z])")


def _one_edit_apart(a: str, b: str) -> bool:
    """Whether b is a with one character inserted, deleted or replaced, or two neighbours swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    if len(a) < len(b):
        return a[i:] == b[i + 1 :]
    if a[i + 1 :] == b[i + 1 :]:
        return True
    return i + 1 < len(a) and a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2 :] == b[i + 2 :]


@functools.lru_cache(maxsize=4096)
def unknown_key_issue(key: str) -> tuple[str, bool] | None:
    """(reason, is a Chat Completions key) for an unknown top-level body key that looks like a mistake.

    Called only for keys the body checks do not know, and cached: a file that repeats one unknown key on
    every line pays one dict lookup per line. Keys far from every known one are the API's business.
    """
    if key in KNOWN_BODY_KEYS or key in _FOREIGN_KEYS:
        return None
    instead = CHAT_KEYS.get(key)
    if instead is not None:
        if instead == _REMOVE:
            return "Chat Completions field that the Responses API does not accept; remove it", True
        return f"Chat Completions field; write {instead!r} instead", True
    plain = _CAMEL.sub(r"_\1", key).lower().replace("-", "_")
    if plain in KNOWN_BODY_KEYS:
        return f"unknown field; did you mean {plain!r}?", False
    if len(key) >= 3:
        for known in sorted(KNOWN_BODY_KEYS):
            if _one_edit_apart(plain, known):
                return f"unknown field; did you mean {known!r}?", False
    return None


def _check_body(body: dict[str, Any], path: str, out: list[FieldIssue], chat: list[str] | None = None) -> None:
    for name in _BODY_REQUIRED:
        if name not in body:
            out.append(FieldIssue(_join(path, name), "is required", required=True))
    for key, item in body.items():
        check = _BODY_FIELDS.get(key)
        if check is not None:
            check(item, _join(path, key), out)
            continue
        # Only here, on a key the checks do not know (rare), is any work spent on typos.
        found = unknown_key_issue(key)
        if found is not None:
            out.append(FieldIssue(_join(path, key), found[0], soft=True))
            if found[1] and chat is not None:
                chat.append(key)
    if body.get("conversation") is not None and body.get("previous_response_id") is not None:
        out.append(FieldIssue(_join(path, "conversation"), "cannot be used together with previous_response_id", False))
    if body.get("background") is True and body.get("store") is False:
        out.append(FieldIssue(_join(path, "store"), BACKGROUND_STORE_REASON, False))


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
        out.append(_type_issue("custom_id", "a string", custom_id))
    elif not custom_id:
        out.append(FieldIssue("custom_id", "must not be empty", False))

    for key, expected in (("method", "POST"), ("url", RESPONSES_URL)):
        value = obj.get(key, _MISSING)
        if value is _MISSING:
            out.append(FieldIssue(key, "is required", False))
        elif value != expected:
            out.append(FieldIssue(key, f"must be {expected!r} (got {_show(value)})", False))

    body = obj.get("body", _MISSING)
    if body is _MISSING:
        out.append(FieldIssue("body", "is required", False))
    elif not isinstance(body, dict):
        out.append(_type_issue("body", "a JSON object", body))

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
        if not isinstance(custom_id, str) or not custom_id:
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


# --- response side ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one response, or a sum of them. cached and reasoning are subsets, not addends."""

    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        """The five counts under their JSON names, as `status --json` and reports print them."""
        return {
            "input_tokens": self.input_tokens,
            "cached_tokens": self.cached_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "total_tokens": self.total_tokens,
        }

    def __add__(self, other: Usage) -> Usage:
        """Element-wise sum."""
        return Usage(
            self.input_tokens + other.input_tokens,
            self.cached_tokens + other.cached_tokens,
            self.output_tokens + other.output_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.total_tokens + other.total_tokens,
        )


def output_text(body: Mapping[str, Any]) -> str:
    """The SDK's `output_text`: every output_text part of every message output item, joined with ""."""
    existing = body.get("output_text")
    if isinstance(existing, str):
        return existing
    output = body.get("output")
    if not isinstance(output, list):
        return ""
    texts: list[str] = []
    for item in output:
        if not isinstance(item, Mapping) or item.get("type") != "message":
            continue
        content = item.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "output_text":
                text = part.get("text")
                if isinstance(text, str):
                    texts.append(text)
    return "".join(texts)


def with_output_text(body: dict[str, Any]) -> dict[str, Any]:
    """Set body["output_text"] (in place, and return body) unless it already holds a string.

    Raw HTTP and Batch bodies lack this SDK-only property, so results would otherwise differ by transport.
    """
    if not isinstance(body.get("output_text"), str):
        body["output_text"] = output_text(body)
    return body
