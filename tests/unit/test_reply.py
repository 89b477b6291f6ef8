"""The reply edge: every value read from a reply body or header comes out bounded, or as a stated problem."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from runner.reply import (
    MAX_COUNT,
    MAX_ID_CHARS,
    UsageCounts,
    UsageReading,
    header_count,
    output_text,
    plain_usage,
    read_error_text,
    read_id,
    read_request_id,
    read_retry_after,
    read_usage,
    with_output_text,
)

FULL_USAGE = {
    "input_tokens": 328,
    "input_tokens_details": {"cached_tokens": 300, "cache_write_tokens": 0},
    "output_tokens": 52,
    "output_tokens_details": {"reasoning_tokens": 40},
    "total_tokens": 380,
}
NOW = 1_700_000_000.0
CAP = 300.0


def test_usage_full() -> None:
    assert read_usage({"usage": FULL_USAGE}) == UsageReading(UsageCounts(328, 300, 52, 40, 380))


def test_usage_missing_details_count_as_zero_without_a_problem() -> None:
    usage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15, "output_tokens_details": None}
    assert read_usage({"usage": usage}) == UsageReading(UsageCounts(10, 0, 5, 0, 15))


def test_usage_missing_total_is_input_plus_output() -> None:
    assert read_usage({"usage": {"input_tokens": 10, "output_tokens": 5}}).usage == UsageCounts(10, 0, 5, 0, 15)


def test_usage_parts_above_their_whole_are_clamped_per_reply_and_said() -> None:
    body = {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 9}, "output_tokens": 3}
    body["output_tokens_details"] = {"reasoning_tokens": 4}
    got = read_usage({"usage": body})
    assert got.usage == UsageCounts(5, 5, 3, 3, 8)
    assert got.problem is not None
    assert "cached_tokens 9 is more than input_tokens 5; stored as 5" in got.problem
    assert "reasoning_tokens 4 is more than output_tokens 3; stored as 3" in got.problem


@pytest.mark.parametrize("body", [{}, {"usage": None}], ids=repr)
def test_usage_absent(body: dict[str, Any]) -> None:
    assert read_usage(body) == UsageReading(UsageCounts())


def test_usage_not_an_object_is_a_problem() -> None:
    got = read_usage({"usage": []})
    assert got.usage == UsageCounts() and got.problem is not None and "not an object" in got.problem


@pytest.mark.parametrize("bad", [2**63, 2**64 - 1, MAX_COUNT + 1, -1, 1.5, 12.0, "12", True, [], {}], ids=repr)
def test_a_count_out_of_bounds_is_stored_as_zero_and_named(bad: Any) -> None:
    got = read_usage({"usage": {"input_tokens": bad, "output_tokens": 5, "total_tokens": 15}})
    assert got.usage == UsageCounts(0, 0, 5, 0, 15)
    assert got.problem is not None and "usage.input_tokens" in got.problem and "stored as 0" in got.problem


def test_bad_details_are_named_too() -> None:
    usage = {
        **FULL_USAGE,
        "input_tokens_details": {"cached_tokens": -3},
        "output_tokens_details": {"reasoning_tokens": 2**70},
    }
    got = read_usage({"usage": usage})
    assert got.usage == UsageCounts(328, 0, 52, 0, 380)
    assert got.problem is not None
    assert "usage.input_tokens_details.cached_tokens -3" in got.problem
    assert "usage.output_tokens_details.reasoning_tokens" in got.problem


def test_the_cap_itself_is_in_bounds() -> None:
    got = read_usage({"usage": {"input_tokens": MAX_COUNT, "output_tokens": 0}})
    assert got == UsageReading(UsageCounts(MAX_COUNT, 0, 0, 0, MAX_COUNT))


@pytest.mark.parametrize(
    ("raw", "count"),
    [("12", 12), (" 7 ", 7), ("12.0", 12), ("0", 0), (str(MAX_COUNT), MAX_COUNT)]
    + [(x, None) for x in ("inf", "-inf", "nan", "1e999", "-1", "9" * 400, str(MAX_COUNT + 1), "lots", "", "0x10")]
    + [(None, None)],
)
def test_header_count(raw: str | None, count: int | None) -> None:
    assert header_count(raw) == count


@pytest.mark.parametrize(
    ("headers", "seconds", "asked"),
    [
        ({"retry-after": "20"}, 20.0, 20.0),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5, 1.5),
        ({"retry-after": "inf"}, CAP, float("inf")),
        ({"retry-after": "1e999"}, CAP, float("inf")),
        ({"retry-after-ms": "1e999"}, CAP, float("inf")),
        ({"retry-after": "9" * 400}, CAP, float("inf")),
        ({"retry-after": "1e9"}, CAP, 1e9),
        ({"retry-after": "-30"}, 0.0, 0.0),
        ({"retry-after-ms": "-5", "retry-after": "2"}, 2.0, 2.0),
        ({"retry-after": "Thu, 01 Jan 1970 00:00:00 GMT"}, 0.0, 0.0),
        ({"retry-after": "Tue, 14 Nov 2023 22:13:30 GMT"}, 10.0, 10.0),
    ],
)
def test_retry_after(headers: dict[str, str], seconds: float, asked: float) -> None:
    got = read_retry_after(headers, CAP, now=NOW)
    assert got is not None
    assert (got.seconds, got.asked) == (seconds, asked)
    assert got.capped == (asked > seconds)


def test_retry_after_far_future_date_is_capped() -> None:
    got = read_retry_after({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}, CAP, now=NOW)
    assert got is not None and got.seconds == CAP and got.asked > 1e11


@pytest.mark.parametrize(
    "value",
    ["nan", "soon", "Fri, 31 Dec 99999999999999999999 23:59:59 GMT", "Fri, 31 Dec 10000 23:59:59 GMT", ""],
)
def test_retry_after_garbage_is_not_said(value: str) -> None:
    assert read_retry_after({"retry-after": value, "retry-after-ms": "nan"}, CAP, now=NOW) is None


def test_ids() -> None:
    assert read_id("resp_1") == "resp_1"
    assert read_id("r" * MAX_ID_CHARS) == "r" * MAX_ID_CHARS
    for bad in ("", "r" * (MAX_ID_CHARS + 1), 12, None, ["resp_1"], ".", ".."):
        assert read_id(bad) is None
    assert read_id("resp_bGl0ZWxsbTpjdXN0b20/b2s=") == "resp_bGl0ZWxsbTpjdXN0b20/b2s="  # LiteLLM's base64: quoted
    assert read_request_id("req_1") == "req_1"
    assert read_request_id("q" * 10_000) == "q" * MAX_ID_CHARS
    assert read_request_id("") is None


def test_error_text_is_bounded_and_kept_otherwise() -> None:
    assert read_error_text("evil \x1b[2J text", 100) == "evil \x1b[2J text"
    assert read_error_text("x" * 500, 100) == "x" * 97 + "..."
    assert read_error_text(429, 10) == "429"
    assert read_error_text(None, 10) is None
    assert read_error_text({"nested": "object"}, 100) == "{'nested': 'object'}"


def test_usage_add() -> None:
    total = UsageCounts(1, 2, 3, 4, 5) + UsageCounts(10, 20, 30, 40, 50)
    assert total == UsageCounts(11, 22, 33, 44, 55)
    assert UsageCounts() + UsageCounts() == UsageCounts()


RESPONSE: dict[str, Any] = {
    "id": "resp_1",
    "output": [
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "thinking"}]},
        {
            "type": "message",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "Hello, "},
                {"type": "refusal", "refusal": "no"},
                {"type": "output_text", "text": "world"},
            ],
        },
        {"type": "function_call", "name": "f", "arguments": "{}", "call_id": "c", "text": "not this"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "!"}]},
    ],
}


def test_output_text_rebuilt_from_message_items() -> None:
    assert output_text(RESPONSE) == "Hello, world!"


def test_output_text_kept_when_present() -> None:
    assert output_text({**RESPONSE, "output_text": "as sent"}) == "as sent"


@pytest.mark.parametrize(
    "resp",
    [{}, {"output": None}, {"output": []}, {"output": [{"type": "message", "content": None}]}],
    ids=repr,
)
def test_output_text_none_is_empty(resp: dict[str, Any]) -> None:
    assert output_text(resp) == ""


def test_with_output_text_adds_when_missing() -> None:
    resp = copy.deepcopy(RESPONSE)
    assert with_output_text(resp)["output_text"] == "Hello, world!"


def test_with_output_text_leaves_existing() -> None:
    resp = {**RESPONSE, "output_text": "as sent"}
    assert with_output_text(resp) == {**RESPONSE, "output_text": "as sent"}


def test_the_short_path_for_well_formed_usage_reads_what_the_careful_one_reads() -> None:
    """read_usage takes a short path for a plain dict; a read-only mapping takes the careful one. Both
    must agree on every shape: good counts, missing ones, nulls, out of bounds, wrong types, odd details."""
    import itertools
    from types import MappingProxyType

    values: list[Any] = [None, 0, 7, 2**40, 2**40 + 1, -1, 3.0, True, "5", [1]]
    details: list[Any] = [None, {}, {"cached_tokens": 2}, {"cached_tokens": -2}, [], "x"]
    out_details: list[Any] = [None, {"reasoning_tokens": 4}, {"reasoning_tokens": 2**41}, 5]
    seen_short = seen_careful = seen_plain = 0
    for i, o, t, d_in, d_out in itertools.product(values, values[:6], values[:4], details, out_details):
        usage: dict[str, Any] = {"input_tokens": i, "output_tokens": o, "total_tokens": t}
        usage = {k: v for k, v in usage.items() if v is not None or k == "output_tokens"}
        if d_in is not None:
            usage["input_tokens_details"] = d_in
        if d_out is not None:
            usage["output_tokens_details"] = d_out
        fast = read_usage({"usage": usage})
        careful = read_usage({"usage": MappingProxyType(usage)})
        assert fast == careful, usage
        # The outcome's own short path: the same counts, or None to leave it to read_usage (always when
        # there is a problem to say).
        plain = plain_usage({"usage": usage})
        assert plain is None or (plain == careful.usage and careful.problem is None), usage
        assert careful.problem is None or plain is None, usage
        seen_plain += plain is not None
        if careful.problem is None:
            seen_short += 1
        else:
            seen_careful += 1
    assert seen_short > 100 and seen_careful > 100 and seen_plain > 100
    assert plain_usage({}) == UsageCounts() and plain_usage({"usage": None}) == UsageCounts()
    assert plain_usage({"usage": MappingProxyType({"input_tokens": 1})}) is None  # read_usage decides


def test_usage_in_chat_completions_words_is_read_not_zero() -> None:
    from runner.reply import read_usage

    # A server behind a Chat Completions engine: read as 0, every such request was free to --max-cost.
    chat = {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    got = read_usage({"usage": chat})
    assert (got.usage.input_tokens, got.usage.cached_tokens, got.usage.output_tokens) == (10, 4, 5)
    assert got.problem is None
    # The Responses words win where both are there.
    both = read_usage({"usage": {"input_tokens": 7, "output_tokens": 2, "prompt_tokens": 99}})
    assert (both.usage.input_tokens, both.usage.output_tokens) == (7, 2)
