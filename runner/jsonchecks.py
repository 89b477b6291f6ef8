"""Table-driven checks of parsed JSON values, each issue named by its path into the value as written.

A check is a plain function `(value, path, out)` that appends a `FieldIssue` per problem; the builders below
(`string`, `number`, `enum`, `record`, `array`, ...) make one from a few options, so a schema is a table of
them (runner/validate.py holds the one for a Responses request). Which fields exist is the caller's table.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast


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


# A check appends the issues of one value (at `path`) to `out`.
Check = Callable[[object, str, list[FieldIssue]], None]


def show(value: object) -> str:
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


def join(path: str, key: str) -> str:
    """The path of field `key` inside the value at `path` ("" is the whole line)."""
    return f"{path}.{key}" if path else key


def _is_int(value: object) -> bool:
    # JSON Schema counts 5.0 as an integer; bool is an int subclass in Python but not in JSON.
    t = type(value)
    return t is int or (t is float and cast(float, value).is_integer())


def _is_number(value: object) -> bool:
    # NaN and Infinity are not JSON; a lenient parser may still produce them.
    t = type(value)
    return t is int or (t is float and math.isfinite(cast(float, value)))


def type_issue(path: str, expected: str, value: object) -> FieldIssue:
    """ "must be <expected> (got <value>)": a value of the wrong JSON type."""
    return FieldIssue(path, f"must be {expected} (got {show(value)})", False)


def string(*, nullable: bool = False) -> Check:
    """A string (or null, if `nullable`)."""

    def check(value: object, path: str, out: list[FieldIssue]) -> None:
        if not isinstance(value, str) and not (nullable and value is None):
            out.append(type_issue(path, "a string", value))

    return check


def boolean(*, nullable: bool = False) -> Check:
    """true or false (or null, if `nullable`)."""

    def check(value: object, path: str, out: list[FieldIssue]) -> None:
        if value is not True and value is not False and not (nullable and value is None):
            out.append(type_issue(path, "a boolean", value))

    return check


def any_object(*, nullable: bool = False) -> Check:
    """Any JSON object, its fields unchecked (or null, if `nullable`)."""

    def check(value: object, path: str, out: list[FieldIssue]) -> None:
        if not isinstance(value, dict) and not (nullable and value is None):
            out.append(type_issue(path, "an object", value))

    return check


def number(lo: float | None = None, hi: float | None = None, *, integer: bool = False, nullable: bool = False) -> Check:
    """A finite number (an integer, if `integer`) within [lo, hi] where given (or null, if `nullable`)."""
    kind = "an integer" if integer else "a number"
    is_kind = _is_int if integer else _is_number
    if lo is not None and hi is not None:
        bounds = f"must be between {lo} and {hi}"
    elif lo is not None:
        bounds = f"must be at least {lo}"
    else:
        bounds = f"must be at most {hi}"

    def check(value: object, path: str, out: list[FieldIssue]) -> None:
        if value is None and nullable:
            return
        if not is_kind(value):
            out.append(type_issue(path, kind, value))
        elif (lo is not None and cast(float, value) < lo) or (hi is not None and cast(float, value) > hi):
            out.append(FieldIssue(path, f"{bounds} (got {show(value)})", False))

    return check


def quoted(values: tuple[str, ...]) -> str:
    """The values as a message lists them: 'a', 'b', 'c'."""
    return ", ".join(repr(v) for v in values)


def enum(values: tuple[str, ...], *, nullable: bool = False) -> Check:
    """One of `values` (or null, if `nullable`); another string is a soft issue, a warning under --lenient."""
    allowed = frozenset(values)
    expected = f"must be one of {quoted(values)}"

    def check(value: object, path: str, out: list[FieldIssue]) -> None:
        if isinstance(value, str):
            if value not in allowed:
                out.append(FieldIssue(path, f"{expected} (got {show(value)})", True))
        elif not (nullable and value is None):
            # A wrong type is a real error even under --lenient: no future enum value is a number.
            out.append(type_issue(path, "a string", value))

    return check


def fields(
    value: dict[str, Any],
    path: str,
    out: list[FieldIssue],
    checks: Mapping[str, Check],
    required: tuple[str, ...],
) -> None:
    """Check an object's known fields; unknown fields are the API's business, not ours."""
    for name in required:
        if name not in value:
            out.append(FieldIssue(join(path, name), "is required", required=True))
    for key, item in value.items():
        check = checks.get(key)
        if check is not None:
            check(item, join(path, key), out)


def record(checks: Mapping[str, Check], required: tuple[str, ...] = (), *, nullable: bool = False) -> Check:
    """An object with the given field checks (extra fields allowed)."""

    def check(value: object, path: str, out: list[FieldIssue]) -> None:
        if isinstance(value, dict):
            fields(value, path, out, checks, required)
        elif not (nullable and value is None):
            out.append(type_issue(path, "an object", value))

    return check


def array(item: Check, *, nullable: bool = False) -> Check:
    """An array whose elements each pass `item` (or null, if `nullable`)."""

    def check(value: object, path: str, out: list[FieldIssue]) -> None:
        if isinstance(value, list):
            for i, element in enumerate(value):
                item(element, f"{path}[{i}]", out)
        elif not (nullable and value is None):
            out.append(type_issue(path, "an array", value))

    return check
