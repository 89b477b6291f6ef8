"""Fixtures of the store tests: a real SQLite file per test, opened (and migrated) the way the runner does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runner.store import Store


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # SQLAlchemy's async engine runs on asyncio only


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "s.db"


@pytest.fixture
async def store(db: Path) -> AsyncIterator[Store]:
    s = await Store.open(str(db))
    try:
        yield s
    finally:
        await s.aclose()
