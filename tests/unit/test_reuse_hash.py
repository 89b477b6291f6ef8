"""The reuse rule (runner/reuse.py): which fields make two requests the same question."""

from __future__ import annotations

from typing import Any

import pytest

from runner.reuse import IGNORED_FIELDS, body_hash

BASE: dict[str, Any] = {
    "model": "gpt-4.1-mini",
    "input": [{"role": "user", "content": "What is 2 + 2?"}],
    "instructions": "Be brief.",
    "temperature": 0.2,
    "text": {"format": {"type": "text"}, "verbosity": "low"},
}


def test_fields_that_do_not_shape_the_answer_are_left_out() -> None:
    labelled = {
        **BASE,
        "metadata": {"run": "tuesday"},
        "user": "u-1",
        "safety_identifier": "s-1",
        "store": False,
        "background": True,
        "service_tier": "flex",
        "prompt_cache_key": "k",
        "prompt_cache_retention": "24h",
    }
    assert set(labelled) - set(BASE) == IGNORED_FIELDS
    assert body_hash(labelled) == body_hash(BASE)


def test_key_order_does_not_matter_at_any_level() -> None:
    shuffled = {k: BASE[k] for k in reversed(list(BASE))}
    shuffled["text"] = {"verbosity": "low", "format": {"type": "text"}}
    assert body_hash(shuffled) == body_hash(BASE)


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4.1-nano"},
        {"temperature": 0.3},
        {"instructions": "Be verbose."},
        {"input": [{"role": "user", "content": "What is 2 + 3?"}]},
        {"max_output_tokens": 50},
        {"reasoning": {"effort": "low"}},
        {"include": ["reasoning.encrypted_content"]},
        {"tools": [{"type": "web_search"}]},
        {"some_future_field": 1},  # unknown to the runner: it may shape the answer, so it counts
    ],
)
def test_a_field_that_shapes_the_answer_makes_another_question(change: dict[str, Any]) -> None:
    assert body_hash({**BASE, **change}) != body_hash(BASE)


def test_an_integer_and_a_float_are_different_values() -> None:
    assert body_hash({**BASE, "temperature": 1}) != body_hash({**BASE, "temperature": 1.0})


@pytest.mark.parametrize(
    "state", [{"previous_response_id": "resp_1"}, {"previous_response_id": "@line-1"}, {"conversation": "conv_1"}]
)
def test_a_request_that_continues_server_state_is_never_reused(state: dict[str, Any]) -> None:
    assert body_hash({**BASE, **state}) is None


def test_the_hash_is_128_bits_of_hex() -> None:
    h = body_hash(BASE)
    assert h is not None and len(h) == 32 and int(h, 16) >= 0
