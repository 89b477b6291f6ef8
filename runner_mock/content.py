"""What the fake API answers: request checks and Response objects as pure functions of the request body.

Output and usage depend only on the body (see `usage_for`), so a run repeats exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import orjson

from runner_mock.replies import error
from runner_mock.state import MockState

__all__ = ["REASONING_TOKENS", "final_fields", "prompt_text", "service_tier", "skeleton", "usage_for", "validate"]

REASONING_TOKENS: dict[str, int] = {
    "none": 0,
    "minimal": 4,
    "low": 8,
    "medium": 16,
    "high": 32,
    "xhigh": 64,
    "max": 128,
}


def _input_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        return ""
    parts: list[str] = []
    for item in value:
        if not isinstance(item, dict):
            continue
        # Only messages carry text the model reads; other item types (function outputs, references) don't.
        if "role" not in item and item.get("type", "message") != "message":
            continue
        content = item.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    text = part.get("text")
                    if isinstance(text, str):
                        parts.append(text)
    return "".join(parts)


def prompt_text(body: Mapping[str, Any]) -> str:
    """The prompt the mock bills: `instructions` plus every text in `input` (4 characters a token)."""
    instructions = body.get("instructions")
    return (instructions if isinstance(instructions, str) else "") + _input_text(body.get("input"))


SCRIPT_KEY = "mock_outputs"


def scripted_text(body: Mapping[str, Any], answered: int) -> str | None:
    """The scripted answer of a line whose `metadata.mock_outputs` is a JSON array of strings, else None.

    The line's first answered create gets the first text, its second the second, and so on; the last one
    repeats. So a test can script "invalid, then valid" for one line and plain echoes for the others.
    """
    metadata = body.get("metadata")
    raw = metadata.get(SCRIPT_KEY) if isinstance(metadata, dict) else None
    if not isinstance(raw, str):
        return None
    try:
        texts = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        return None
    return str(texts[min(answered, len(texts) - 1)])


def usage_for(body: Mapping[str, Any], answered: int = 0) -> tuple[str, dict[str, Any], bool]:
    """Return (output text, usage, truncated) for a create request, deterministically.

    The prompt text is `instructions` plus every text in `input`; the output echoes the first 200
    characters of the `input` text only, unless the line scripts its answers (`scripted_text`; `answered`
    is how many creates of that line were answered before). Truncation happens when `max_output_tokens`
    is too small. Cached tokens are 0 here: the server's prompt cache (runner_mock/cache.py) sets them.
    """
    instructions = body.get("instructions")
    input_text = _input_text(body.get("input"))
    prompt = (instructions if isinstance(instructions, str) else "") + input_text
    input_tokens = max(1, math.ceil(len(prompt) / 4))
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    reasoning_tokens = REASONING_TOKENS.get(effort, 0) if isinstance(effort, str) else 0
    script = scripted_text(body, answered)
    text = "echo: " + input_text[:200] if script is None else script
    output_tokens = max(1, math.ceil(len(text) / 4)) + reasoning_tokens
    limit = body.get("max_output_tokens")
    truncated = isinstance(limit, int) and output_tokens > limit
    if truncated:
        assert isinstance(limit, int)
        output_tokens = limit
        text = text[: max(0, limit - reasoning_tokens) * 4]
    usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }
    return text, usage, truncated


def validate(raw: bytes) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Return (body, None) for a well-formed create request, else (None, the 400 error body)."""
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None, error("We could not parse the JSON body of your request.", "invalid_request_error", "invalid_json")
    if not isinstance(body, dict):
        return None, error("The request body must be a JSON object.", "invalid_request_error", "invalid_body")
    for field in ("model", "input"):
        if field not in body:
            message = f"Missing required parameter: '{field}'."
            return None, error(message, "invalid_request_error", "missing_required_parameter", field)
    if not isinstance(body["model"], str):
        return None, error("Invalid type for 'model'.", "invalid_request_error", "invalid_type", "model")
    if not isinstance(body["input"], str | list):
        return None, error("Invalid type for 'input'.", "invalid_request_error", "invalid_type", "input")
    limit = body.get("max_output_tokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        message = "Invalid value for 'max_output_tokens'."
        return None, error(message, "invalid_request_error", "invalid_value", "max_output_tokens")
    return body, None


def service_tier(requested: Any) -> str:
    """The tier a response reports for the tier requested (`fast` shows as `priority`; unknown: `default`)."""
    if requested == "fast":
        return "priority"
    if requested in ("default", "flex", "scale", "priority"):
        return str(requested)
    return "default"


def skeleton(body: Mapping[str, Any], rid: str, created_at: int) -> dict[str, Any]:
    """The Response object for `body` as it is created: queued, no output yet."""
    reasoning = body.get("reasoning")
    conversation = body.get("conversation")
    if isinstance(conversation, str):
        conversation = {"id": conversation}
    text = body.get("text")
    return {
        "id": rid,
        "object": "response",
        "created_at": created_at,
        "completed_at": None,
        "status": "queued",
        "error": None,
        "incomplete_details": None,
        "model": body["model"],
        "instructions": body.get("instructions"),
        "output": [],
        "usage": None,
        "background": bool(body.get("background")),
        "store": body.get("store", True) is not False,
        "metadata": body.get("metadata") or {},
        "max_output_tokens": body.get("max_output_tokens"),
        "temperature": body.get("temperature", 1.0),
        "top_p": body.get("top_p", 1.0),
        "previous_response_id": body.get("previous_response_id"),
        "conversation": conversation if isinstance(conversation, dict) else None,
        "prompt_cache_key": body.get("prompt_cache_key"),
        "service_tier": service_tier(body.get("service_tier")),
        "truncation": "disabled",
        "text": text if isinstance(text, dict) else {"format": {"type": "text"}},
        "reasoning": {
            "effort": reasoning.get("effort") if isinstance(reasoning, dict) else None,
            "summary": reasoning.get("summary") if isinstance(reasoning, dict) else None,
        },
        "tools": body.get("tools") or [],
        "tool_choice": body.get("tool_choice", "auto"),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
    }


def final_fields(
    state: MockState, computed: tuple[str, dict[str, Any], bool], completed_at: int, fail: bool
) -> dict[str, Any]:
    """The fields a response takes on when it ends: completed, incomplete, or failed (`fail`)."""
    if fail:
        code = state.config.bg_fail_code
        return {
            "status": "failed",
            "error": {"code": code, "message": f"The model failed to generate a response ({code})."},
            "output": [],
            "usage": None,
        }
    text, usage, truncated = computed
    message = {
        "id": state.new_id("msg"),
        "type": "message",
        "status": "incomplete" if truncated else "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    return {
        "status": "incomplete" if truncated else "completed",
        "completed_at": None if truncated else completed_at,
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "output": [message],
        "usage": usage,
    }
