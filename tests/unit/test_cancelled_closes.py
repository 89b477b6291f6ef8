"""A Ctrl-C that cuts a pooled connection's close short is not logged as an error with a traceback (the user
sees only `runner: interrupted`); any other failure to close still is."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest

from runner.store.sqlite.engine import create_engine


def _record(logger: logging.Logger, exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        info = sys.exc_info()
        return logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "Exception closing connection", (), info)


@pytest.mark.anyio
async def test_the_pool_of_a_store_drops_only_closes_cut_by_a_cancellation(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    db.touch()
    engine = create_engine(str(db))
    try:
        logger = engine.sync_engine.pool.logger
        assert isinstance(logger, logging.Logger)
        assert not logger.filter(_record(logger, asyncio.CancelledError()))
        assert logger.filter(_record(logger, OSError("disk I/O error")))
    finally:
        await engine.dispose()
