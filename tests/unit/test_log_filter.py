"""The CLI's logging drops asyncio's leftover-task line for SQLAlchemy's graceful close of an SQLite connection
(an ERROR line at the end of a command, nothing lost), and keeps every other asyncio error."""

from __future__ import annotations

import logging

from runner.cli.output import setup_logging


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None, None)


def test_only_the_graceful_close_leftover_is_dropped() -> None:
    setup_logging("warning", "text", verbose=False, secret=None)
    asyncio_logger = logging.getLogger("asyncio")
    leftover = _record(
        "Task was destroyed but it is pending!\ntask: <Task pending name='Task-56' coro=<AsyncAdapt_aiosqlite_"
        "connection._terminate_graceful_close() done, defined at .../aiosqlite.py:239>>"
    )
    assert not asyncio_logger.filter(leftover)
    assert asyncio_logger.filter(_record("Task was destroyed but it is pending!\ntask: <Task pending coro=<send()>>"))
    assert asyncio_logger.filter(_record("Unclosed client session"))
