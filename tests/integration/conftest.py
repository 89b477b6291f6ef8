"""Fixtures of the store tests: a real SQLite file per test, opened (and migrated) the way the runner does."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runner.store import Store


class FakeClock:
    """The store's clock in tests: real time plus however far a test has moved it on (never sleeps)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        """Move time on by `seconds`: leases and due times pass without waiting for them."""
        self.offset += seconds


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "s.db"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(db: Path, clock: FakeClock) -> AsyncIterator[Store]:
    s = await Store.open(str(db), clock=clock)
    try:
        yield s
    finally:
        await s.aclose()
