"""Structured outputs: the JSON answer of a line that asked for one, parsed and checked against its schema.

A line asks for JSON with `text.format.type` = `json_schema` (checked against the line's own schema) or
`json_object` (checked for a JSON object). Every completed answer of such a line gets one verdict:
`valid`, `invalid_json` or `schema_mismatch` (with the first error's path and message). Lines that ask for
plain text are never parsed: `wanted()` rejects them with a substring test before any JSON is read, so
the check costs nothing on the hot path of an ordinary job.

Schemas come from the user's file, so they are untrusted too: `jsonschema` never fetches a remote `$ref`
(the `referencing` registry it uses retrieves nothing unless told), and a schema that is not a valid JSON
Schema is refused at submit (`schema_problem`). Validators are cached by schema text, since a job
usually repeats one schema on every line.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import orjson

__all__ = ["CheckStatus", "OutputCheck", "Wanted", "check", "schema_problem", "wanted"]

MAX_DETAIL_CHARS: Final = 500  # the first error's path and message, cut: a schema can echo a huge value


class CheckStatus(StrEnum):
    """The verdict on one answer of a line that asked for JSON."""

    VALID = "valid"
    INVALID_JSON = "invalid_json"
    SCHEMA_MISMATCH = "schema_mismatch"


@dataclass(frozen=True, slots=True)
class Wanted:
    """What a line asked for: a JSON object (`schema` None) or a value matching `schema` (its JSON text)."""

    kind: str  # "json_schema" | "json_object"
    schema: str | None


@dataclass(frozen=True, slots=True)
class OutputCheck:
    """The check of one answer: its verdict, why (for a failure), and the parsed value as JSON text."""

    status: CheckStatus
    detail: str | None = None
    parsed: str | None = None  # the parsed value, re-encoded compactly; None when it is not JSON

    @property
    def ok(self) -> bool:
        return self.status is CheckStatus.VALID


def wanted(body_text: str) -> Wanted | None:
    """What the request body (JSON text, as stored) asks of its answer; None for plain text (the usual case)."""
    if '"json_schema"' not in body_text and '"json_object"' not in body_text:
        return None  # no JSON parse for lines that cannot ask for JSON
    try:
        body = orjson.loads(body_text)
    except orjson.JSONDecodeError:
        return None
    text = body.get("text") if isinstance(body, dict) else None
    fmt = text.get("format") if isinstance(text, dict) else None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_object":
        return Wanted("json_object", None)
    if kind == "json_schema" and isinstance(fmt, dict) and isinstance(fmt.get("schema"), dict):
        return Wanted("json_schema", orjson.dumps(fmt["schema"], option=orjson.OPT_SORT_KEYS).decode())
    return None


# jsonschema is imported where a schema is used, not with this module: its import takes a fifth of a
# second, and every CLI start (through validate) would pay it for jobs that never ask for JSON.


@functools.lru_cache(maxsize=64)
def _validator(schema_text: str) -> Any:
    schema = orjson.loads(schema_text)
    return _validator_class(schema)(schema)


def _validator_class(schema: Any) -> Any:
    """The draft the schema's `$schema` names; the newest one otherwise.

    jsonschema looks a `$schema` up as a URL and raises AttributeError or TypeError on one that is not a
    string (`"$schema": 5`): the newest draft is taken instead, and its check_schema names the field.
    """
    from jsonschema import validators

    if isinstance(schema, dict) and not isinstance(schema.get("$schema", ""), str):
        return validators.validator_for({})
    return validators.validator_for(schema)


def schema_problem(schema: Any) -> str | None:
    """Why `schema` is not a valid JSON Schema (one line), or None when it is.

    Cached by the schema's text: a file usually repeats one schema on every line, and checking a schema
    costs far more than validating a line.
    """
    try:
        text = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode()
    except (orjson.JSONEncodeError, TypeError) as e:
        return _cut(str(e))
    return _schema_problem(text)


@functools.lru_cache(maxsize=64)
def _schema_problem(text: str) -> str | None:
    from jsonschema import exceptions as js_exceptions

    schema = orjson.loads(text)
    try:
        _validator_class(schema).check_schema(schema)
        _validator(text)
    except js_exceptions.SchemaError as e:
        return _where(e.absolute_path, e.message, "schema")
    except (js_exceptions.UnknownType, TypeError, ValueError) as e:
        return _cut(str(e))
    return None


def _cut(text: str) -> str:
    one = " ".join(text.split())
    return one if len(one) <= MAX_DETAIL_CHARS else one[: MAX_DETAIL_CHARS - 1] + "…"


def _where(path: Any, message: str, root: str = "$") -> str:
    """`$.items[2].name: message`: the JSON path of the error as a user reads it, then the message."""
    out = root
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return _cut(f"{out}: {message}")


def check(output_text: str, want: Wanted) -> OutputCheck:
    """Parse `output_text` as JSON and check it against what the line asked for."""
    try:
        value = orjson.loads(output_text)
    except orjson.JSONDecodeError as e:
        return OutputCheck(CheckStatus.INVALID_JSON, _cut(f"not JSON: {e}"))
    try:
        parsed: str | None = orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError):
        parsed = None  # valid JSON nested past what orjson writes (254 levels): checked, but not kept
    if want.schema is None:
        if not isinstance(value, dict):
            return OutputCheck(CheckStatus.SCHEMA_MISMATCH, "$: is not a JSON object", parsed)
        return OutputCheck(CheckStatus.VALID, None, parsed)
    from jsonschema import exceptions as js_exceptions
    from referencing.exceptions import Unresolvable

    try:
        validator = _validator(want.schema)
        error = js_exceptions.best_match(validator.iter_errors(value))
    except (js_exceptions.SchemaError, js_exceptions.UnknownType, Unresolvable) as e:
        # Submit refuses invalid schemas; a store written before that check could still hold one.
        return OutputCheck(CheckStatus.SCHEMA_MISMATCH, _cut(f"the line's schema cannot be used: {e}"), parsed)
    except RecursionError:  # a value nested too deeply to walk, or a schema that refers to itself without end
        return OutputCheck(CheckStatus.SCHEMA_MISMATCH, "too deeply nested to check", parsed)
    if error is None:
        return OutputCheck(CheckStatus.VALID, None, parsed)
    return OutputCheck(CheckStatus.SCHEMA_MISMATCH, _where(error.absolute_path, error.message), parsed)
