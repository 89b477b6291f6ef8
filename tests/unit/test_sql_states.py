"""The store's SQL names only states that exist: a typo in a quoted state would match no row, silently."""

from __future__ import annotations

import re
from pathlib import Path

import runner.store
from runner.states import RequestState
from runner.store.sqlite import hot

STORE_DIR = Path(runner.store.__file__).parent
# `state = 'x'`, `state != 'x'`, `state IN ('x', 'y')`, with or without a table prefix.
_COMPARED = re.compile(r"\bstate\s*(?:=|!=|<>|\bIN\s*\()\s*('[^']*'(?:\s*,\s*'[^']*')*)", re.IGNORECASE)
_QUOTED = re.compile(r"'([^']*)'")
_FIELD = re.compile(r"\{\w+\}")  # an f-string field ('{Q}'): filled from the enum, checked as run above


def states_named(sql: str) -> set[str]:
    """Every quoted word a piece of SQL compares a `state` column with."""
    return {word for m in _COMPARED.finditer(sql) for word in _QUOTED.findall(m.group(1))}


def test_the_check_finds_states_and_a_typo() -> None:
    sql = "UPDATE requests SET state = 'queud' WHERE r.state IN ('queued', 'in_progress') AND state != 'failed'"
    assert states_named(sql) == {"queud", "queued", "in_progress", "failed"}
    assert states_named("SELECT 1 WHERE error_code = 'cancelled'") == set()


def test_hot_sql_names_only_known_states() -> None:
    sql = "\n".join(v for v in vars(hot).values() if isinstance(v, str))
    named = states_named(sql)
    # The blocks as run (formatted from the enum): claim, finish, requeue, refuse and cancel all compare.
    assert {"queued", "in_progress", "failed", "cancelled"} <= named
    assert named <= {s.value for s in RequestState}


def test_literal_sql_in_the_store_names_only_known_states() -> None:
    # SQL text written out in the sources (text(), raw strings); f-string blocks are built from the enum.
    for path in sorted(STORE_DIR.rglob("*.py")):
        named = {w for w in states_named(path.read_text()) if not _FIELD.fullmatch(w)}
        unknown = named - {s.value for s in RequestState}
        assert not unknown, f"{path.name} compares state with {sorted(unknown)}"
