"""Text from servers and files made safe to print on a terminal.

Error codes, messages, custom_ids and model names come from outside. Printed raw, an escape sequence in
one of them can clear the screen, move the cursor or set the terminal's title, so every such value goes
through `printable` before it reaches stdout or stderr. Amounts of money are shown one way, by `usd`.
"""

from __future__ import annotations

import math
import re

# C0 controls except tab, DEL, and the C1 range (which some terminals also obey, e.g. U+009B as CSI); and the
# bidirectional controls, which reorder what follows them on the line (a custom_id with U+202E showed the rest
# of the line reversed: the trick of "Trojan Source").
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\x1b": "\\x1b"}


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    return _NAMED.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")


def printable(text: object) -> str:
    """`text` as a string with control characters shown as escapes (`\\x1b`, `\\n`), never obeyed."""
    s = text if isinstance(text, str) else str(text)
    return _CONTROL.sub(_escape, s)


def usd(x: float) -> str:
    """Dollars as every command shows them: cents from $10 up, else 4 decimals, and more where a smaller amount
    needs them for two significant digits (`--max-cost 0.00005` read $0.0001, twice the budget given)."""
    if abs(x) >= 10:
        return f"${x:,.2f}"
    places = 4 if x == 0 or abs(x) >= 0.001 or not math.isfinite(x) else 1 - math.floor(math.log10(abs(x)))
    return f"${x:.{places}f}"
