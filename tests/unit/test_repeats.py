"""Warnings said once per request: the first few in full, then counted (runner/worker/repeats.py)."""

from __future__ import annotations

import logging

import pytest

from runner.worker.repeats import SHOWN, Repeated

log = logging.getLogger("runner.test.repeats")


def test_the_first_are_said_in_full_the_rest_counted_and_the_end_says_how_many(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=log.name)
    kind = Repeated(log, "responses whose GETs kept failing")
    for line in range(1, 11):
        kind.warn("line %s: GET failed", line)
    kind.said_at_end()
    said = [r.getMessage() for r in caplog.records]
    assert said[:SHOWN] == [f"line {n}: GET failed" for n in range(1, SHOWN + 1)]
    assert said[SHOWN].startswith("more responses whose GETs kept failing: not said one by one")
    assert said[SHOWN + 1 :] == [f"10 responses whose GETs kept failing in all this run ({SHOWN} said above)"]


def test_a_few_are_all_said_and_nothing_more(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=log.name)
    kind = Repeated(log, "lines")
    for line in range(SHOWN):
        kind.warn("line %s", line)
    kind.said_at_end()
    assert [r.getMessage() for r in caplog.records] == [f"line {n}" for n in range(SHOWN)]
