"""Portable SQL for what SQLite and PostgreSQL spell differently: one construct, compiled per database.

`json_field(col, "usage", "input_tokens")` reads a value out of a JSON document kept as TEXT (so inserts and
text round trips stay cheap on both), giving NULL for a document that is not JSON rather than failing the
query: SQLite's `json_extract` behind `json_valid`, PostgreSQL's `runner_json_path()` (a function made by
migration 0001 that catches the parse error). `big_sum(col)` sums counts without ever failing on overflow:
SQLite's TOTAL(), PostgreSQL's SUM as double precision (its SUM of bigint is an exact numeric).
`xact_lock(key)` makes the writers that name one key take turns until their transactions end: PostgreSQL's
`pg_advisory_xact_lock`; on SQLite a constant, as its writers already take turns (BEGIN IMMEDIATE).
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import BigInteger, Float, String, literal
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

__all__ = ["big_sum", "json_field", "xact_lock"]


class _JsonField(FunctionElement[str]):
    inherit_cache = True
    type = String()
    name = "json_field"

    def __init__(self, column: ColumnElement[Any], *keys: str) -> None:
        self.keys = keys
        super().__init__(column)


class _BigSum(FunctionElement[float]):
    inherit_cache = True
    type = Float()
    name = "big_sum"


class _XactLock(FunctionElement[None]):
    inherit_cache = True
    name = "xact_lock"


def xact_lock(key: str) -> ColumnElement[None]:
    """Selected as a statement of its own, first: from there to the end of the transaction, every other writer
    that selects `xact_lock` of the same key waits (a later statement then sees what that writer committed)."""
    # 64 bits of a hash: PostgreSQL's lock key is a bigint, and two keys that meet only make their writers wait.
    number = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
    return _XactLock(literal(number, BigInteger))


def json_field(column: Any, *keys: str) -> ColumnElement[str]:
    """The value at `keys` in the JSON text of `column` (as text), or NULL when absent or not JSON."""
    return _JsonField(column, *keys)


def big_sum(column: Any) -> ColumnElement[float]:
    """A sum of integers that never raises on overflow (a float; see `bounded_total`)."""
    return _BigSum(column)


def _quoted_keys(keys: tuple[str, ...]) -> list[str]:
    # Keys are the runner's own constants, never input; they are still quoted as SQL strings.
    return ["'" + k.replace("'", "''") + "'" for k in keys]


@compiles(_JsonField, "sqlite")
def _json_field_sqlite(element: _JsonField, compiler: SQLCompiler, **kw: Any) -> str:
    col = compiler.process(element.clauses, **kw)
    path = "$." + ".".join(element.keys)
    quoted = _quoted_keys((path,))[0]
    # json_extract raises on malformed JSON; a stored body that is not JSON must not stop a query.
    return f"CASE WHEN json_valid({col}) = 1 THEN json_extract({col}, {quoted}) END"


@compiles(_JsonField, "postgresql")
def _json_field_pg(element: _JsonField, compiler: SQLCompiler, **kw: Any) -> str:
    col = compiler.process(element.clauses, **kw)
    return f"runner_json_path({col}, {', '.join(_quoted_keys(element.keys))})"


@compiles(_BigSum, "sqlite")
def _big_sum_sqlite(element: _BigSum, compiler: SQLCompiler, **kw: Any) -> str:
    return f"total({compiler.process(element.clauses, **kw)})"


@compiles(_BigSum, "postgresql")
def _big_sum_pg(element: _BigSum, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(sum({compiler.process(element.clauses, **kw)}) AS double precision)"


@compiles(_XactLock, "sqlite")
def _xact_lock_sqlite(element: _XactLock, compiler: SQLCompiler, **kw: Any) -> str:
    return "NULL"  # a writer here holds the database's only write lock (BEGIN IMMEDIATE) until it ends


@compiles(_XactLock, "postgresql")
def _xact_lock_pg(element: _XactLock, compiler: SQLCompiler, **kw: Any) -> str:
    return f"pg_advisory_xact_lock({compiler.process(element.clauses, **kw)})"
