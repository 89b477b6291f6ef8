"""Lines that build on each other: `"previous_response_id": "@<custom_id>"` continues another line's response.

At submit, only the lines that name a parent this way are remembered (`ChainLines`), so a file without chains
costs one dict lookup a line and no memory. Once every line is staged, the store is asked about the parents
they name (runner/store/chains.py), and `problems` says what is wrong: a parent that is not in the file, a
parent whose body sets `store: false` (its response would not be kept, so nothing could continue it), a
cycle. At send time `substitute` puts the parent's real response id in place of the reference, so a
literal `@` id never reaches the server.

Only what needs no store lives here (the ground layer): parsing references, cycle detection, the problems'
wording, judging a parent's stored answer, and the substitution.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

__all__ = [
    "PARENT_FAILED",
    "REF_PREFIX",
    "ChainLine",
    "ChainLines",
    "ParentInfo",
    "chain_ref",
    "continuable_id",
    "may_be_chained",
    "parent_failed_message",
    "problems",
    "substitute",
]

REF_PREFIX: Final = "@"
PARENT_FAILED: Final = "parent_failed"  # the error code of a line whose parent ended without a response to continue
_FIELD: Final = "previous_response_id"
# How the field looks in a stored body (orjson writes compact JSON): a cheap test before parsing a claimed body.
_MARK: Final = '"previous_response_id":"@'


def chain_ref(body: Mapping[str, Any]) -> str | None:
    """The custom_id a body continues (`"previous_response_id": "@<custom_id>"`), or None."""
    value = body.get(_FIELD)
    if isinstance(value, str) and value.startswith(REF_PREFIX):
        return value[len(REF_PREFIX) :]
    return None


def may_be_chained(body: str) -> bool:
    """Whether a stored body (JSON text) may continue another line; False for certain when it does not."""
    return _MARK in body


def substitute(body: str, response_id: str) -> str:
    """The stored body with its `@` reference replaced by the parent's real response id."""
    parsed = orjson.loads(body)
    parsed[_FIELD] = response_id
    return orjson.dumps(parsed).decode()


def continuable_id(response_body: str | None) -> tuple[str | None, str]:
    """The response id a completed parent's stored answer can be continued from, or None and why not."""
    try:
        reply = orjson.loads(response_body) if response_body else None
    except orjson.JSONDecodeError:
        reply = None
    if not isinstance(reply, dict):
        return None, "completed without a stored answer"
    rid = reply.get("id")
    if not isinstance(rid, str) or not rid:
        return None, "completed without a response id"
    if reply.get("store") is False:
        return None, "completed but its response was not stored (store: false)"
    return rid, ""


def parent_failed_message(parent_custom_id: str, why: str) -> str:
    """The error message of a line whose parent cannot be continued."""
    return f"the line it continues, {parent_custom_id!r}, {why}"


@dataclass(frozen=True, slots=True)
class ChainLine:
    """A line that continues another: where it is, what it is called, and the custom_id it names."""

    line_no: int
    custom_id: str
    ref: str
    field: str  # the field as the line spells it: `body.previous_response_id`, or `previous_response_id`


@dataclass(frozen=True, slots=True)
class ParentInfo:
    """What submit needs of a line that another continues."""

    id: int  # its request row
    line_no: int
    store_false: bool  # its body sets `store: false`


@dataclass
class ChainLines:
    """The lines of one file that continue another line (and only those: memory stays flat without chains)."""

    lines: list[ChainLine] = field(default_factory=list)

    def add(self, line_no: int, custom_id: str, body: Mapping[str, Any], *, bare: bool) -> None:
        """Remember a valid line if it continues another."""
        ref = chain_ref(body)
        if ref is not None:
            self.lines.append(ChainLine(line_no, custom_id, ref, _FIELD if bare else f"body.{_FIELD}"))

    def refs(self) -> list[str]:
        """Every custom_id named, once each, in file order."""
        return list(dict.fromkeys(c.ref for c in self.lines))


def problems(chained: ChainLines, parents: Mapping[str, ParentInfo]) -> list[tuple[int, str, str]]:
    """(line, field, reason) for each chained line that cannot be run: a missing or unstored parent, a cycle.

    `parents` maps the custom_ids named (those in the file) to their rows. A cycle is named once, at its
    first line in the file, with its members in order.
    """
    out: list[tuple[int, str, str]] = []
    by_id = {c.custom_id: c for c in chained.lines}
    for c in chained.lines:
        parent = parents.get(c.ref)
        shown = f"{REF_PREFIX}{c.ref}"
        if parent is None:
            out.append((c.line_no, c.field, f"{shown!r} names no line of this file (custom_id {c.ref!r})"))
        elif parent.store_false:
            out.append(
                (
                    c.line_no,
                    c.field,
                    f"{shown!r} continues line {parent.line_no}, whose body sets store: false;"
                    " a response that is not stored cannot be continued",
                )
            )
    for cycle in _cycles(by_id):
        first = min(cycle, key=lambda cid: by_id[cid].line_no)
        start = cycle.index(first)
        ordered = cycle[start:] + cycle[:start]
        c = by_id[first]
        if len(ordered) == 1:
            out.append((c.line_no, c.field, f"{REF_PREFIX + c.ref!r} names the line itself"))
        else:
            path = " -> ".join(repr(x) for x in [*ordered, first])
            out.append((c.line_no, c.field, f"lines continue each other in a cycle: {path}"))
    return sorted(out)


def _cycles(by_id: Mapping[str, ChainLine]) -> list[list[str]]:
    """Every cycle of the parent links among chained lines (each member continues the next).

    Only chained lines can be in a cycle (each member names a parent), so this walks them alone, each once.
    """
    done: set[str] = set()
    found: list[list[str]] = []
    for start in by_id:
        if start in done:
            continue
        path: list[str] = []
        on_path: dict[str, int] = {}
        node: str | None = start
        while node is not None and node not in done and node not in on_path:
            on_path[node] = len(path)
            path.append(node)
            nxt = by_id.get(node)
            node = nxt.ref if nxt is not None and nxt.ref in by_id else None
        if node is not None and node in on_path:
            found.append(path[on_path[node] :])
        done.update(path)
    return found
