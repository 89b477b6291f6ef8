"""Server- and file-supplied text is printed with control characters escaped."""

from __future__ import annotations

from runner.term import printable


def test_escape_sequences_are_shown_not_obeyed() -> None:
    clear_screen = "\x1b[2J\x1b[H"
    set_title = "\x1b]0;pwned\x07"
    out = printable(f"bad{clear_screen}code{set_title}")
    assert "\x1b" not in out and "\x07" not in out
    assert out == "bad\\x1b[2J\\x1b[Hcode\\x1b]0;pwned\\x07"


def test_newlines_and_c1_controls_are_escaped_but_plain_text_and_tabs_pass() -> None:
    assert printable("line1\nline2\r") == "line1\\nline2\\r"
    assert printable("csi\x9b31m") == "csi\\x9b31m"
    assert printable("naïve\ttab 日本") == "naïve\ttab 日本"
    assert printable(42) == "42"


def test_bidirectional_controls_are_shown_not_obeyed() -> None:
    # U+202E (right-to-left override) printed raw reversed the rest of the line on the terminal.
    assert printable("order-\u202egnp.exe") == "order-\\u202egnp.exe"
    assert printable("a\u2066b\u2069c\u200fd\u061ce") == "a\\u2066b\\u2069c\\u200fd\\u061ce"
    assert printable("ünïcødé 中文 🙂\ttab") == "ünïcødé 中文 🙂\ttab"  # everything else as it is
