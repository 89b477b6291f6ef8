"""The store tells a busy database and a missing JSON1 by SQLite's codes and a probe, not by message text."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from runner.errors import StoreUnavailable
from runner.store.sqlite.engine import is_busy as _is_busy
from runner.store.sqlite.hot import has_json1


def test_a_held_write_lock_is_busy_and_other_operational_errors_are_not(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        with pytest.raises(sqlite3.OperationalError) as busy:
            other.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as missing:
            other.execute("SELECT * FROM no_such_table")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        other.close()
    assert _is_busy(busy.value)
    assert _is_busy(OperationalError("BEGIN IMMEDIATE", {}, busy.value))  # as SQLAlchemy wraps it
    assert not _is_busy(missing.value)
    # A message that merely mentions a lock is not a busy database.
    assert not _is_busy(sqlite3.OperationalError("the row is locked by the user's own rule"))


def test_json1_probe_answers_for_this_sqlite() -> None:
    conn = sqlite3.connect(":memory:")
    try:
        expected = True
        try:
            conn.execute("SELECT json_array(1)")
        except sqlite3.OperationalError:
            expected = False
        assert has_json1(conn) is expected
    finally:
        conn.close()


@pytest.mark.anyio
async def test_a_write_lock_kept_past_every_try_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An sqlite3 shell or a database browser with a transaction open, a runner stopped with Ctrl-Z in a commit:
    # after every try (over a minute and a half; here shortened) the write was SQLAlchemy's traceback.
    import runner.store.sqlite as sqlite_backend
    from runner.store import Store, backend
    from runner.store.sqlite import engine

    monkeypatch.setattr(engine, "BUSY_TIMEOUT_MS", 20)
    monkeypatch.setattr(sqlite_backend, "BUSY_TIMEOUT_MS", 20)
    monkeypatch.setattr(backend, "_RETRY_WAIT", lambda _state: 0.0)
    path = tmp_path / "runner.db"
    store = await Store.open(str(path))
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable) as refused:
            await store.drop_job("job_x")
        assert str(refused.value) == (
            f"cannot use the store {path}: another process keeps the store's write lock (an sqlite3 shell or a"
            " database browser with a transaction open, a runner stopped with Ctrl-Z): end it, then try again"
        )
        assert await store.list_jobs() == []  # reading goes on beside it (WAL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        await store.aclose()
