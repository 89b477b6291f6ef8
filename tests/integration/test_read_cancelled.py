"""A task cancelled while it reads the store (a run's heartbeat, cancelled at the run's end) must not leave
SQLAlchemy's aiosqlite connection half-closed: a cancel that cut its checkout or check-in short made SQLAlchemy
terminate it, and the task that closes it waited for a thread already stopped. In a process that runs on, asyncio
then said "Task was destroyed but it is pending!" (twice in one `make bench`; 23 of 300 cancels here). Each read
is now shielded, and a cancelled task starts no new one, so a loop of reads still ends at a cancel."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner.store import Store, fleet

pytestmark = pytest.mark.anyio


async def test_reads_cancelled_at_any_point_leave_no_task_behind(tmp_path: Path) -> None:
    said: list[Any] = []
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: said.append(context.get("message")))
    try:
        async with await Store.open(str(tmp_path / "runner.db")) as store:
            with anyio.fail_after(60):  # a loop of reads that a cancel could not end would hang here
                for i in range(300):
                    async with anyio.create_task_group() as tg:

                        async def reads() -> None:
                            while True:
                                await fleet.live_runner_count(store)

                        tg.start_soon(reads)
                        for _ in range(i % 25):  # the cancel lands at every point of a read, over the tries
                            await asyncio.sleep(0)
                        tg.cancel_scope.cancel()
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0.05)
    finally:
        loop.set_exception_handler(before)
    assert said == []
