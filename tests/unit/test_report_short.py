"""`runner report` shows an error's cause on one line: cut at a word boundary, never mid-word."""

from __future__ import annotations

import pytest

from runner.report import _short


def test_short_text_is_kept_whole_on_one_line() -> None:
    assert _short("bad  value\n for\ttemperature", 60) == "bad value for temperature"


def test_long_text_is_cut_at_a_word_boundary_with_an_ellipsis() -> None:
    text = "The server is overloaded or not ready yet. Please retry your request later."
    cut = _short(text, 30)
    assert cut == "The server is overloaded or…"
    assert len(cut) <= 30
    assert text.startswith(cut.removesuffix("…"))


def test_a_cut_that_falls_exactly_before_a_space_keeps_the_whole_word() -> None:
    assert _short("aaaa bbbb cccc", 10) == "aaaa bbbb…"


def test_trailing_punctuation_before_the_ellipsis_is_dropped() -> None:
    assert _short("first part, second part goes on", 13) == "first part…"


def test_one_long_word_is_cut_inside_it() -> None:
    url = "https://example.com/" + "x" * 80
    cut = _short(url, 40)
    assert cut == url[:39] + "…" and len(cut) == 40


@pytest.mark.parametrize("evil", ["\x1b[2J", "\x9b31m", "\x07"])
def test_control_characters_from_the_server_are_shown_not_obeyed(evil: str) -> None:
    cut = _short(f"oops {evil} here", 60)
    assert evil not in cut
    assert cut.startswith("oops \\x")
