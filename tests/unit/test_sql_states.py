"""The store's SQL names only states that exist: a typo in a quoted state would match no row, silently."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import runner.store
from runner.states import ALLOWED_FROM, TERMINAL, RequestState
from runner.store import sqlfile
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


def test_every_state_change_in_the_hot_sql_is_one_the_transition_table_allows() -> None:
    """states.ALLOWED_FROM is the table; the hot SQL's guards are where it is enforced, so they must agree."""
    changes = {
        name: sql
        for name, sql in vars(hot).items()
        if isinstance(sql, str) and sql.lstrip().startswith("UPDATE requests SET state")
    }
    assert len(changes) >= 5  # claim, finish, requeue, refuse, cancel: the test would pass vacuously otherwise
    for name, sql in changes.items():
        set_part, where_part = sql.split("WHERE", 1)
        target = re.search(r"SET state = '(\w+)'", set_part)
        # _FINISH takes its state as a parameter: one of the terminal states.
        targets = [RequestState(target[1])] if target else sorted(TERMINAL)
        # The row's own state (not `requests.state` or `earlier.state` of a subquery).
        guards = [RequestState(g) for g in re.findall(r"(?<![.\w])state = '(\w+)'", where_part)]
        assert guards, f"{name} changes a state without a guard on the current one"
        for to in targets:
            for g in guards:
                assert g in ALLOWED_FROM[to], f"{name}: {g.value} -> {to.value} is not in states.ALLOWED_FROM"


def sql_blocks() -> dict[str, str]:
    """Every named block of every .sql file of the store (runner/store/sqlfile.py), as `file:name`."""
    found = {
        f"{path.relative_to(STORE_DIR)}:{name}": sql
        for path in sorted(STORE_DIR.rglob("*.sql"))
        for name, sql in sqlfile.parse(path.read_text()).items()
    }
    assert found, "no .sql file under runner/store"
    return found


def test_every_sql_block_names_only_known_states() -> None:
    named: set[str] = set()
    for where, sql in sql_blocks().items():
        unknown = states_named(sql) - {s.value for s in RequestState}
        assert not unknown, f"{where} compares state with {sorted(unknown)}"
        named |= states_named(sql)
    assert {"queued", "in_progress", "failed", "cancelled"} <= named


def test_every_state_change_in_an_sql_block_is_one_the_transition_table_allows() -> None:
    changes = {w: sql for w, sql in sql_blocks().items() if re.search(r"\bSET state = ", sql)}
    assert len(changes) >= 5  # claim, finish, requeue, refuse, cancel
    for where, sql in changes.items():
        update = sql[sql.index("UPDATE requests") :]  # after a CTE that picks the rows
        set_part, where_part = re.split(r"\bWHERE\b", update, maxsplit=1)
        target = re.search(r"SET state = '(\w+)'", set_part)
        targets = [RequestState(target[1])] if target else sorted(TERMINAL)  # `finish` takes its state as data
        guards = [RequestState(g) for g in re.findall(r"(?<![.\w])(?:r\.)?state = '(\w+)'", where_part)]
        assert guards, f"{where} changes a state without a guard on the current one"
        for to in targets:
            for g in guards:
                assert g in ALLOWED_FROM[to], f"{where}: {g.value} -> {to.value} is not in states.ALLOWED_FROM"


def test_the_block_loader_keeps_each_block_whole_and_refuses_a_name_twice() -> None:
    text = "-- intro\n-- name: a\n-- why\nSELECT 1\n  FROM x\n\n-- name: b\nSELECT 2\n"
    assert sqlfile.parse(text) == {"a": "SELECT 1\n  FROM x", "b": "SELECT 2"}
    with pytest.raises(ValueError, match="'a' is defined twice"):
        sqlfile.parse("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n")
