"""`runner show`: one request in full, as text for a terminal or as JSON for machines.

Everything here came from a file or a server (bodies, custom ids, error messages, response text), so
every line of text goes through `printable` before it is returned: an escape sequence is shown, never obeyed.
Newlines in long texts (an output, an error's response text) are kept as line breaks, indented.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from runner.states import RESULTS, RequestState
from runner.store.models import AttemptRow, RequestDetail
from runner.term import printable

__all__ = ["render_text", "to_json"]

_INDENT = "    "
# What became of each attempt, by the state its outcome moved the request to.
_THEN = {RequestState.QUEUED.value: "retried"}


def _time(t: float | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(sep=" ", timespec="milliseconds").replace("+00:00", "Z")


def _json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text  # kept as it was stored


def _block(text: str, indent: str = _INDENT) -> list[str]:
    """`text` as indented lines, each made printable (line breaks kept, other controls escaped)."""
    return [indent + printable(line) for line in (text.splitlines() or [""])]


def _pretty(value: Any) -> list[str]:
    if isinstance(value, str):
        return _block(value)
    return _block(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def _attempt_line(a: AttemptRow) -> list[str]:
    """`attempt 2 · <sent> · HTTP 429 rate_limit_exceeded · request id req_1 · retried`, then the message."""
    # A background request's outcome comes from a later poll: its time is when the POST went out.
    parts = [f"attempt {a.attempt}", _time(a.sent_at if a.sent_at is not None else a.recorded_at)]
    status = f"HTTP {a.http_status}" if a.http_status is not None else "no HTTP reply"
    parts.append(f"{status} {printable(a.error_code)}" if a.error_code else status)
    if a.api_request_id:
        parts.append(f"request id {printable(a.api_request_id)}")
    if a.response_id:
        parts.append(f"response {printable(a.response_id)}")
    parts.append(_THEN.get(a.outcome, a.outcome))
    out = ["  " + " · ".join(parts)]
    if a.error_message:
        out += _block(a.error_message)
    return out


def _unrecorded(d: RequestDetail) -> int:
    """Attempts counted on the request that left no attempt row (a crash, a stop, or an older store)."""
    current = 1 if d.state == RequestState.IN_PROGRESS.value else 0
    return max(d.attempts - current - len(d.attempt_rows), 0)


def _reused_phrase(d: RequestDetail) -> str:
    """Where a reused line's answer came from (`submit --reuse`)."""
    if d.reused_source is None:
        return "answered from the store (submit --reuse), from a job since deleted"
    job, custom_id = d.reused_source
    return f"answered from the store (submit --reuse), from request {printable(custom_id)} of job {job}"


def render_text(d: RequestDetail) -> str:
    """The request as sent, every attempt, then the final answer or error in full."""
    out = [
        f"request {printable(d.custom_id)} · line {d.line_no} · job {d.job_id} · {d.state} · {d.attempts} attempt(s)",
        "sent (POST /responses):",
        *_pretty(_json(d.body)),
        f"attempts ({len(d.attempt_rows)} recorded):",
    ]
    for a in d.attempt_rows:
        out += _attempt_line(a)
    if d.reused:
        out.append("  none: " + _reused_phrase(d))
    elif not d.attempt_rows:
        out.append("  none recorded yet")
    if missing := _unrecorded(d):
        out.append(
            f"  ({missing} attempt(s) left no record: cut short by a crash or a stop, or made before this"
            " store kept attempts)"
        )
    if d.state == RequestState.IN_PROGRESS.value:
        out.append(f"  attempt {d.attempts} is in flight" + (f" (response {d.response_id})" if d.response_id else ""))
    final = [f"final: {d.state}", f"finished {_time(d.finished_at)}"]
    if d.http_status is not None:
        final.append(f"HTTP {d.http_status}")
    if d.request_id:
        final.append(f"request id {printable(d.request_id)}")
    if d.response_id:
        final.append(f"response {printable(d.response_id)}")
    out.append(" · ".join(final))
    u = d.usage
    if u.total_tokens:
        out.append(
            f"usage: input {u.input_tokens:,} · cached {u.cached_tokens:,} · output {u.output_tokens:,}"
            f" · reasoning {u.reasoning_tokens:,} · total {u.total_tokens:,}"
        )
    if d.error_code or d.error_message:
        out.append(f"error: {printable(d.error_code or '')}")
        if d.error_message:
            out += _block(d.error_message)
    response = _json(d.response_body)
    if isinstance(response, dict) and isinstance(response.get("output_text"), str):
        out.append("output_text:")
        out += _block(response["output_text"])
    if response is not None:
        out.append("response body:" if d.state in RESULTS else "reply body:")
        out += _pretty(response)
    return "\n".join(out)


def to_json(d: RequestDetail) -> dict[str, Any]:
    """The same as plain JSON types (bodies parsed, times as Unix seconds)."""
    return {
        "job_id": d.job_id,
        "custom_id": d.custom_id,
        "line": d.line_no,
        "state": d.state,
        "attempt_count": d.attempts,
        "request": _json(d.body),
        "attempts": [
            {
                "attempt": a.attempt,
                "outcome": a.outcome,
                "sent_at": a.sent_at,
                "recorded_at": a.recorded_at,
                "http_status": a.http_status,
                "request_id": a.api_request_id,
                "response_id": a.response_id,
                "error_code": a.error_code,
                "error_message": a.error_message,
            }
            for a in d.attempt_rows
        ],
        "unrecorded_attempts": _unrecorded(d),
        "reused": d.reused,
        "reused_from": None
        if d.reused_source is None
        else {"job_id": d.reused_source[0], "custom_id": d.reused_source[1]},
        "http_status": d.http_status,
        "request_id": d.request_id,
        "response_id": d.response_id,
        "error_code": d.error_code,
        "error_message": d.error_message,
        "usage": d.usage.as_dict(),
        "created_at": d.created_at,
        "submitted_at": d.submitted_at,
        "finished_at": d.finished_at,
        "response": _json(d.response_body),
    }
