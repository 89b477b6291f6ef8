from __future__ import annotations

import re

import pytest

import runner.ingest
from runner.ingest import new_job_id


def test_a_later_job_id_sorts_after_an_earlier_one(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_796_000_000.0]
    monkeypatch.setattr(runner.ingest.time, "time", lambda: now[0])
    first = [new_job_id() for _ in range(50)]
    now[0] += 1
    later = new_job_id()
    assert all(re.fullmatch(r"job_[0-9a-f]{16}", j) for j in [*first, later])
    assert len(set(first)) == 50  # the same second: told apart by their random part
    assert later > max(first)
