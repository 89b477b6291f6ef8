"""No module grows past ~400 lines without a reason written at its top (issue 11's guard rail)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 400
MARK = "Over 400 lines"


def test_big_modules_say_why_at_their_top() -> None:
    modules = [*ROOT.joinpath("runner").rglob("*.py"), *ROOT.joinpath("runner_mock").rglob("*.py")]
    assert len(modules) > 30  # the walk found the packages
    unexplained = []
    for path in modules:
        text = path.read_text()
        if text.count("\n") <= LIMIT:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if MARK not in doc:
            unexplained.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert not unexplained, f"modules over {LIMIT} lines with no '{MARK} ...' reason in their docstring: {unexplained}"
