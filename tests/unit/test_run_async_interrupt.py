"""A stop signal raises KeyboardInterrupt wherever the command is (runner/interrupt.py); when that is inside a
task group, anyio hands it on grouped, and the CLI, which catches a KeyboardInterrupt to print one line and exit
128 + the signal, printed a traceback instead (a SIGTERM during a big PostgreSQL submit)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import pytest

from runner.cli.output import run_async
from runner.interrupt import stop_signals


@pytest.fixture(autouse=True)
def _restored() -> Iterator[None]:
    # run_async sets the stop signals' handlers and, once interrupted, quiets threads: as the CLI wants, not pytest.
    handlers = {sig: signal.getsignal(sig) for sig in stop_signals()}
    hook = threading.excepthook
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    threading.excepthook = hook


def test_a_keyboard_interrupt_raised_in_a_task_group_comes_out_as_one() -> None:
    async def body() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep, 10)
            await anyio.lowlevel.checkpoint()
            raise KeyboardInterrupt  # as the signal handler raises it where the task is

    with pytest.raises(KeyboardInterrupt):
        run_async(body)


def test_other_errors_of_a_group_are_left_as_they_are() -> None:
    async def body() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep, 10)
            raise ValueError("a bug")

    with pytest.raises(BaseExceptionGroup) as info:
        run_async(body)
    assert info.value.subgroup(ValueError) is not None
