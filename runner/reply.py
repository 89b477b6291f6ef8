"""The one edge where replies become data: every value the runner reads from a reply body or header, bounded.

Token counts (`UsageCounts`, defined in runner/usage.py), the answer's text
(`output_text`), response ids, request ids, rate-limit headers and Retry-After are read here and nowhere
else, and each comes out either in bounds or as "unknown" (None) / a stated problem; never as a value that
can overflow SQLite's 64-bit integers, a float conversion or a sum. What the runner does with a value out of
bounds is decided by its caller (worker/outcomes.py, limits.py, client.py) and documented in the README section
"What the runner trusts".

Hand-written rather than a pydantic model: it runs for every reply on the hot path (`make bench` scenario 2
measures CPU per request) and reads a handful of fields of a body that orjson has already parsed; a
model validating the whole Response object would cost more than the rest of the reply's handling.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from runner.usage import UsageCounts

MAX_COUNT: Final = 2**40  # a token count above this (a trillion) is a broken server, not a real reply
MAX_ID_CHARS: Final = 256  # response ids and request ids; OpenAI's are under 100
MAX_CODE_CHARS: Final = 128  # an error code from a server
MAX_MESSAGE_CHARS: Final = 4096  # an error message from a server (the whole body is stored beside it)
MAX_HEADER_LINE: Final = 8190  # bytes per reply header line: aiohttp's limit, kept
MAX_BODY_BYTES: Final = 64 * 1024 * 1024  # a reply body larger than this fails its request
MAX_ERROR_TEXT: Final = 1024  # characters of a non-OpenAI error body kept in the stored message
MAX_HEADER_SECONDS: Final = 86_400.0 * 365  # a duration header beyond a year is garbage

USAGE_OUT_OF_BOUNDS: Final = "usage_out_of_bounds"
RESPONSE_ID_MISMATCH: Final = "response_id_mismatch"

_COUNT_NAMES: Final = ("input_tokens", "output_tokens", "total_tokens")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True, slots=True)
class UsageReading:
    """A reply's usage in bounds, and what was wrong with it (None when nothing was)."""

    usage: UsageCounts
    problem: str | None = None


class _Counts:
    """Reads counts one by one, collecting what was out of bounds."""

    __slots__ = ("problems",)

    def __init__(self) -> None:
        self.problems: list[str] = []

    def read(self, where: Mapping[str, Any], key: str, path: str) -> int | None:
        value = where.get(key)
        if value is None:
            return None
        if type(value) is int and 0 <= value <= MAX_COUNT:
            return value
        self.problems.append(f"{path} {_show(value)}")
        return 0


def read_usage(body: Mapping[str, Any]) -> UsageReading:
    """The usage of a Response body with every count a non-negative int up to MAX_COUNT.

    Missing or null counts are 0 (total: input + output), as before. A count of the wrong type or out of
    bounds is stored as 0 and named in `problem`: the answer itself stays usable.
    """
    usage = body.get("usage")
    if usage is None:
        return UsageReading(UsageCounts())
    if type(usage) is dict:
        fast = _plain_usage(usage)
        if fast is not None:
            return UsageReading(fast)
    if not isinstance(usage, Mapping):
        return UsageReading(UsageCounts(), f"usage is {_show(usage)}, not an object; token counts stored as 0")
    counts = _Counts()
    # A server behind a Chat Completions engine may count in its words (prompt_tokens, completion_tokens): read
    # as 0, every such request was free to `--max-cost`, which then never stopped the run.
    chat = "input_tokens" not in usage and "output_tokens" not in usage and _CHAT_USAGE.intersection(usage)
    i_key, o_key = ("prompt_tokens", "completion_tokens") if chat else ("input_tokens", "output_tokens")
    input_tokens = counts.read(usage, i_key, f"usage.{i_key}") or 0
    output_tokens = counts.read(usage, o_key, f"usage.{o_key}") or 0
    total = counts.read(usage, "total_tokens", "usage.total_tokens")
    cached = reasoning = 0
    details = usage.get(f"{i_key}_details")
    if isinstance(details, Mapping):
        cached = counts.read(details, "cached_tokens", f"usage.{i_key}_details.cached_tokens") or 0
    details = usage.get(f"{o_key}_details")
    if isinstance(details, Mapping):
        reasoning = counts.read(details, "reasoning_tokens", f"usage.{o_key}_details.reasoning_tokens") or 0
    # Cached and reasoning tokens are parts of input and output: more than the whole is clamped here, per reply.
    # Clamped only when priced, over a model's sums, one reply's excess cut the cost of others' input.
    beyond = [
        f"usage.{where} {part} is more than {whole_name} {whole}; stored as {whole}"
        for part, whole, where, whole_name in (
            (cached, input_tokens, "input_tokens_details.cached_tokens", "input_tokens"),
            (reasoning, output_tokens, "output_tokens_details.reasoning_tokens", "output_tokens"),
        )
        if part > whole
    ]
    result = UsageCounts(
        input_tokens=input_tokens,
        cached_tokens=min(cached, input_tokens),
        output_tokens=output_tokens,
        reasoning_tokens=min(reasoning, output_tokens),
        total_tokens=total if total is not None else input_tokens + output_tokens,
    )
    if not counts.problems and not beyond:
        return UsageReading(result)
    problems = (
        [
            f"token counts out of bounds (a count must be an integer from 0 to 2^40): {', '.join(counts.problems)};"
            " stored as 0"
        ]
        if counts.problems
        else []
    )
    return UsageReading(result, "; ".join([*problems, *beyond]) + ", the answer is kept")


def plain_usage(body: Mapping[str, Any]) -> UsageCounts | None:
    """`read_usage(body).usage` for a body whose usage is absent or well formed; None when `read_usage` must
    take its careful path (a count of the wrong type or out of bounds, details that are not objects)."""
    usage = body.get("usage")
    if usage is None:
        return _NO_USAGE
    return _plain_usage(usage) if type(usage) is dict else None


_NO_USAGE: Final = UsageCounts()


_CHAT_USAGE = frozenset({"prompt_tokens", "completion_tokens"})


def _plain_usage(usage: dict[str, Any]) -> UsageCounts | None:
    """The usage of a well-formed reply, read in one pass (`read_usage` without its bookkeeping); None if any
    count needs `read_usage`'s care (a wrong type, out of bounds, details that are not objects, Chat Completions
    words)."""
    get = usage.get
    i, o, t = get("input_tokens"), get("output_tokens"), get("total_tokens")
    if i is None and o is None and _CHAT_USAGE.intersection(usage):
        return None
    d_in, d_out = get("input_tokens_details"), get("output_tokens_details")
    if d_in is None:
        cached = None
    elif type(d_in) is dict:
        cached = d_in.get("cached_tokens")
    else:
        return None
    if d_out is None:
        reasoning = None
    elif type(d_out) is dict:
        reasoning = d_out.get("reasoning_tokens")
    else:
        return None
    # One loop rather than a call per count: this runs for every reply (make bench scenario 2).
    for v in (i, o, t, cached, reasoning):
        if v is not None and not (type(v) is int and 0 <= v <= MAX_COUNT):
            return None
    i, o, cached, reasoning = i or 0, o or 0, cached or 0, reasoning or 0
    if cached > i or reasoning > o:  # a part larger than its whole: read_usage clamps it and says so
        return None
    return UsageCounts(i, cached, o, reasoning, i + o if t is None else t)


def read_id(value: Any) -> str | None:
    """A response id: a non-empty string of at most MAX_ID_CHARS characters, and not `.` or `..`, else None.

    An id goes into URL paths (`responses/{id}/cancel`), where `.` and `..` are steps however quoted: `runner cancel`
    POSTed to /v1/responses/cancel and /v1/cancel. A `/` is quoted (%2F) and stays inside the id, so ids that hold
    one are kept: LiteLLM's are base64 of the upstream id, and base64 has `/`.
    """
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS and value not in (".", ".."):
        return value
    return None


def read_request_id(raw: str | None) -> str | None:
    """An `x-request-id` header, cut to MAX_ID_CHARS characters (it is only ever shown and stored)."""
    if raw is None or not raw:
        return None
    return raw if len(raw) <= MAX_ID_CHARS else raw[:MAX_ID_CHARS]


def read_error_text(value: Any, limit: int) -> str | None:
    """An error code or message from a server as text of at most `limit` characters (None if absent)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value) if isinstance(value, int | float | bool) else _show(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def header_count(raw: str | None) -> int | None:
    """A count header (`x-ratelimit-limit-*`, `-remaining-*`): an integer from 0 to MAX_COUNT, else None.

    `12`, `12.0` are 12; `inf`, `nan`, `1e999`, negative, huge or garbage mean "unknown".
    """
    if raw is None:
        return None
    text = raw.strip()
    if not text or len(text) > 32:  # no count we accept is longer; longer text is not worth parsing
        return None
    try:
        v = float(text)
    except ValueError:
        return None
    if not (0.0 <= v <= MAX_COUNT):  # also false for nan
        return None
    return int(v)


def finite_seconds(v: float) -> float | None:
    """`v` if it is a usable number of seconds (finite, 0..MAX_HEADER_SECONDS), else None."""
    if math.isfinite(v) and 0.0 <= v <= MAX_HEADER_SECONDS:
        return v
    return None


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """A server's Retry-After: the wait obeyed (capped) and what was asked (for saying so)."""

    seconds: float
    asked: float  # may be inf: what the header said, before the cap

    @property
    def capped(self) -> bool:
        return self.asked > self.seconds


def _number(raw: str) -> float | None:
    text = raw.strip()
    if len(text) > 64:
        return math.inf if text.isdigit() else None  # "999...9": a huge number of seconds
    try:
        return float(text)
    except ValueError:
        return None


def read_retry_after(headers: Mapping[str, str], cap: float, now: float | None = None) -> RetryAfter | None:
    """`retry-after-ms`, else `retry-after` (seconds or an HTTP date), capped at `cap`; None if absent or garbage.

    Negative values and past dates mean "now" (0); nan and unparsable values mean "not said".
    """
    ms = headers.get("retry-after-ms")
    if ms is not None:
        v = _number(ms)
        if v is not None and v >= 0:  # nan fails the comparison
            asked = v / 1000.0
            return RetryAfter(min(asked, cap), asked)
    ra = headers.get("retry-after")
    if ra is None:
        return None
    v = _number(ra)
    if v is None:
        if len(ra) > 64:
            return None
        try:
            when = email.utils.parsedate_to_datetime(ra)
            v = when.timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if math.isnan(v):
        return None
    asked = max(v, 0.0)
    return RetryAfter(min(asked, cap), asked)


def output_text(body: Mapping[str, Any]) -> str:
    """The SDK's `output_text`: every output_text part of every message output item, joined with ""."""
    existing = body.get("output_text")
    if isinstance(existing, str):
        return existing
    output = body.get("output")
    if not isinstance(output, list):
        return ""
    texts: list[str] = []
    # `type(x) is dict` first: what orjson gives, and far cheaper than the abstract Mapping check.
    for item in output:
        if not (type(item) is dict or isinstance(item, Mapping)) or item.get("type") != "message":
            continue
        content = item.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if (type(part) is dict or isinstance(part, Mapping)) and part.get("type") == "output_text":
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
