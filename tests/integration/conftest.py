"""Fixtures of the store tests: a real SQLite file per test, opened (and migrated) the way the runner does."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runner.store import Store


class FakeClock:
    """The store's clock in tests: real time plus however far a test has moved it on (never sleeps).

    On PostgreSQL the store stamps and compares leases with the database's clock, which no test can move:
    there `advance` waits for real (tests move it by fractions of a second).
    """

    def __init__(self, *, real: bool = False) -> None:
        self.offset = 0.0
        self.real = real

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        """Move time on by `seconds`: leases and due times pass without waiting for them."""
        if self.real:
            time.sleep(seconds)
        else:
            self.offset += seconds


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "s.db"


@pytest.fixture
def clock(request: pytest.FixtureRequest) -> FakeClock:
    callspec = getattr(request.node, "callspec", None)
    backend = callspec.params.get("store_db") if callspec is not None else None
    return FakeClock(real=backend == "postgresql")


@pytest.fixture
async def store(db: Path, clock: FakeClock) -> AsyncIterator[Store]:
    s = await Store.open(str(db), clock=clock)
    try:
        yield s
    finally:
        await s.aclose()
