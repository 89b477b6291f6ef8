"""Another process keeps an SQLite store's write lock (an sqlite3 shell or a database browser with a transaction
open, a runner stopped mid-commit): the commands that only read go on beside it, as WAL lets them; one that
writes waits for it and then goes on."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, run_args, write_jobfile

pytestmark = pytest.mark.e2e


def test_reading_commands_go_on_beside_a_held_write_lock(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 6))
    assert cli("run", job, *run_args(mock_factory(), "--quiet")).returncode == 0
    second = cli.submit(write_jobfile(tmp_path / "more.jsonl", 3), "--new")
    holder = sqlite3.connect(cli.db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("UPDATE jobs SET name = name")  # a write under way, not only the lock
    try:
        # Each opened the store with the write lock (to check its schema), so waited for the holder: 10 s
        # per try, then a traceback after ten.
        for args in (["status", job, "--json"], ["jobs"], ["export", job, "-o", "out.jsonl"], ["report", job]):
            started = time.monotonic()
            r = cli(*args, timeout=30)
            assert r.returncode == 0 and "Traceback" not in r.stderr, (args, r.stderr)
            assert time.monotonic() - started < 8, args  # not a busy wait's worth
        assert json.loads(cli("status", job, "--json").stdout)["counts"]["completed"] == 6
        assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 6

        # A command that writes waits for the lock, and goes on once it is free.
        threading.Timer(2.0, lambda: holder.execute("COMMIT")).start()
        r = cli("cancel", second, timeout=60)
        assert r.returncode == 0, r.stderr
        assert cli.status(second)["counts"]["cancelled"] == 3
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
