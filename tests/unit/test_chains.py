"""runner/chains.py: references, the submit checks (missing, unstored, cycles) and what a parent's answer allows."""

from __future__ import annotations

import json

import pytest

from runner.chains import ChainLines, ParentInfo, continuable_id, may_be_chained, problems, substitute


def chained(*links: tuple[str, str]) -> ChainLines:
    lines = ChainLines()
    for n, (cid, ref) in enumerate(links, start=1):
        lines.add(n, cid, {"model": "m", "input": "x", "previous_response_id": f"@{ref}"}, bare=False)
    return lines


def test_only_lines_with_an_at_reference_are_kept() -> None:
    lines = ChainLines()
    lines.add(1, "a", {"previous_response_id": "resp_123"}, bare=False)  # a real id: sent as it is
    lines.add(2, "b", {"previous_response_id": None}, bare=False)
    lines.add(3, "c", {"input": "x"}, bare=False)
    lines.add(4, "line-4", {"previous_response_id": "@a"}, bare=True)
    assert [(c.line_no, c.custom_id, c.ref, c.field) for c in lines.lines] == [
        (4, "line-4", "a", "previous_response_id")
    ]


def test_a_missing_parent_and_an_unstored_one_are_named_at_their_line() -> None:
    lines = chained(("b", "a"), ("c", "nope"))
    found = problems(lines, {"a": ParentInfo(1, 7, store_false=True)})
    assert found == [
        (
            1,
            "body.previous_response_id",
            "'@a' continues line 7, whose body sets store: false; a response that is not stored cannot be continued",
        ),
        (2, "body.previous_response_id", "'@nope' names no line of this file (custom_id 'nope')"),
    ]


def test_cycles_are_named_once_at_their_first_line_and_self_reference_is_one() -> None:
    # x -> y -> z -> x is a cycle; w hangs off it (not in it); s names itself; t -> u is a plain chain.
    lines = chained(("y", "z"), ("w", "x"), ("x", "y"), ("s", "s"), ("z", "x"), ("u", "t"))
    parents = {cid: ParentInfo(i, i, store_false=False) for i, cid in enumerate("xyzst", start=1)}
    assert problems(lines, parents) == [
        (1, "body.previous_response_id", "lines continue each other in a cycle: 'y' -> 'z' -> 'x' -> 'y'"),
        (4, "body.previous_response_id", "'@s' names the line itself"),
    ]


def test_a_long_chain_is_not_a_cycle() -> None:
    lines = chained(*[(f"n{i}", f"n{i - 1}") for i in range(1, 5000)])
    parents = {f"n{i}": ParentInfo(i + 1, i + 1, store_false=False) for i in range(5000)}
    assert problems(lines, parents) == []


def test_substitution_replaces_only_the_reference() -> None:
    body = json.dumps({"model": "m", "input": "@x in the text", "previous_response_id": "@x"}, separators=(",", ":"))
    assert may_be_chained(body)
    assert json.loads(substitute(body, "resp_9")) == {
        "model": "m",
        "input": "@x in the text",
        "previous_response_id": "resp_9",
    }
    assert not may_be_chained(json.dumps({"input": '"previous_response_id":"@x"'}, separators=(",", ":")))


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ('{"id": "resp_1", "status": "completed", "store": true}', ("resp_1", "")),
        ('{"id": "resp_1", "status": "completed"}', ("resp_1", "")),
        ('{"id": "resp_1", "store": false}', (None, "completed but its response was not stored (store: false)")),
        ('{"status": "completed"}', (None, "completed without a response id")),
        ('{"id": 7}', (None, "completed without a response id")),
        ("not json", (None, "completed without a stored answer")),
        (None, (None, "completed without a stored answer")),
    ],
)
def test_what_a_completed_parent_can_be_continued_from(stored: str | None, expected: tuple[str | None, str]) -> None:
    assert continuable_id(stored) == expected
