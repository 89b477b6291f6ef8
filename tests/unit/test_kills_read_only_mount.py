"""A store on a file system mounted read-only (a backup, a disk the kernel remounted after errors) is named as such:
"check its permissions" sent users to chmod a file whose permissions were fine."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from runner.store.sqlite.engine import why_unusable


def _readonly_error(db: Path) -> sqlite3.Error:
    """The error SQLite gives a write to a store it could open for reading only."""
    with closing(sqlite3.connect(db)) as c:
        c.execute("CREATE TABLE t (x)")
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        try:
            c.execute("INSERT INTO t VALUES (1)")
        except sqlite3.Error as e:
            return e
    raise AssertionError("a read-only connection wrote")


def _statvfs_flags(monkeypatch: pytest.MonkeyPatch, flags: int) -> None:
    real = os.statvfs

    class Result:
        def __init__(self, path: Any) -> None:
            self.f_flag = real(path).f_flag | flags

    monkeypatch.setattr(os, "statvfs", Result)


def test_a_read_only_mount_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "runner.db"
    e = _readonly_error(db)
    _statvfs_flags(monkeypatch, os.ST_RDONLY)
    assert why_unusable(db, e) == (
        "its file system is mounted read-only (a backup, or a disk the system remounted after errors)"
    )
    # A new store there: its directory is on that mount.
    assert why_unusable(tmp_path / "new.db", e) == why_unusable(db, e)


def test_on_a_writable_mount_the_reason_is_another(tmp_path: Path) -> None:
    db = tmp_path / "runner.db"
    reason = why_unusable(db, _readonly_error(db))
    assert reason is not None and "mounted read-only" not in reason
