"""A store that cannot be opened (here a directory) fails with its one-line error and leaves no SQLite thread
running behind it: the CLI ends its event loop right after, and a thread still finishing then printed
"Exception in thread ... RuntimeError: Event loop is closed" and a traceback under the error."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from runner.errors import StoreUnavailable
from runner.store import Store


def _sqlite_threads() -> list[threading.Thread]:
    # aiosqlite runs each connection in a thread of its own, named after its function.
    return [t for t in threading.enumerate() if t.name.endswith("(_connection_worker_thread)")]


@pytest.mark.anyio
async def test_a_store_that_cannot_be_opened_leaves_no_thread_behind(tmp_path: Path) -> None:
    before = set(_sqlite_threads())
    for _ in range(5):
        with pytest.raises(StoreUnavailable, match="it is a directory"):
            await Store.open(str(tmp_path))
        assert set(_sqlite_threads()) - before == set()
