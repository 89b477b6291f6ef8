"""The store's file: open modes, its layout, deleting jobs, giving space back, noticing it was swapped."""

from __future__ import annotations

import os
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from runner import app
from runner.errors import ConfigError, JobBusy, JobNotFound, StoreMissing, StoreReplaced
from runner.owners import new_owner, owner_is_dead
from runner.store import Store
from runner.store.tables import requests
from tests.integration.test_store import LEASE, make_job

pytestmark = pytest.mark.anyio

BIG = "x" * 3000


async def grow_bodies(conn: AsyncConnection, job_id: str) -> None:
    """Make a job's prompts a realistic size (BIG more characters each)."""
    await conn.execute(update(requests).where(requests.c.job_id == job_id).values(body=BIG + requests.c.body))


def pragma(db: Path, name: str) -> int:
    # The file's layout is SQLite's own business: read straight from the file, as `sqlite3` shows it.
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute(f"PRAGMA {name}").fetchone()[0])


async def test_existing_mode_never_creates_a_file(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "none.db"
    with pytest.raises(
        StoreMissing, match=r"^no store at .*none\.db \(run `runner submit FILE` first, or pass --db\)$"
    ):
        await Store.open(str(db), "existing")
    assert not db.parent.exists()


async def test_a_new_store_has_big_pages_and_incremental_vacuum(store: Store, db: Path) -> None:
    assert pragma(db, "page_size") == 16384
    assert pragma(db, "auto_vacuum") == 2  # incremental
    assert store.path == db


async def test_delete_is_all_or_nothing_and_gives_space_back(store: Store, db: Path) -> None:
    a = await make_job(store, "job_a", 200)
    b = await make_job(store, "job_b", 5)
    await store.write(lambda conn: grow_bodies(conn, a))  # prompts of a realistic size
    with pytest.raises(JobNotFound):
        await store.delete_jobs([a, "job_nope"], owner_is_dead)
    assert len(await store.list_jobs()) == 2
    before = store.file_size()
    assert await store.delete_jobs([a], owner_is_dead) == 200
    await store.reclaim_space()
    after = store.file_size()
    assert before - after > 200 * len(BIG), (before, after)
    assert pragma(db, "freelist_count") == 0
    assert [j.id for j in await store.list_jobs()] == [b]
    assert await store.progress([b]) == ({"queued": 5}, 0.0)


async def test_delete_refuses_a_job_with_a_live_lease_but_not_a_dead_ones(store: Store) -> None:
    job = await make_job(store, "job_a", 3)
    await store.claim(new_owner(), [job], 1, LEASE)  # this process: alive
    with pytest.raises(JobBusy, match=r"job job_a is being run by .*; stop that runner"):
        await store.delete_jobs([job], owner_is_dead)
    assert (await store.get_job(job)).total == 3
    assert await store.delete_jobs([job], lambda owner: True) == 3  # its runner is gone


async def test_an_old_store_is_vacuumed_once_and_switched_to_incremental(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with closing(sqlite3.connect(db)) as conn:  # made before stores chose their layout
        conn.execute("PRAGMA journal_mode=WAL")
    store = await Store.open(str(db))
    try:
        assert pragma(db, "auto_vacuum") == 0
        job = await make_job(store, "job_a", 100)
        await store.write(lambda conn: grow_bodies(conn, job))
        before = store.file_size()
        await store.delete_jobs([job], owner_is_dead)
        await store.reclaim_space()
        assert store.file_size() < before - 100 * len(BIG)
        assert pragma(db, "auto_vacuum") == 2
    finally:
        await store.aclose()


async def test_check_file_notices_a_deleted_or_replaced_store(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = await Store.open(str(db))
    try:
        store.check_file()  # the same file: fine
        shutil.copy(db, tmp_path / "copy.db")
        os.replace(tmp_path / "copy.db", db)
        with pytest.raises(StoreReplaced, match="was replaced by another file while this run was using it"):
            store.check_file()
        db.unlink()
        with pytest.raises(StoreReplaced, match="was deleted while this run was using it"):
            store.check_file()
        # A write now fails with the same typed error instead of making a new, empty file there.
        with pytest.raises(StoreReplaced):
            await make_job(store, "job_late", 1)
        assert not db.exists()
    finally:
        await store.aclose()


async def test_app_delete_older_than_and_confirmation(store: Store, db: Path) -> None:
    await make_job(store, "job_a", 2)
    await make_job(store, "job_b", 3)
    none = await app.delete(older_than=3600, db=str(db))
    assert none.jobs == [] and not none.deleted
    shown: list[list[str]] = []
    declined = await app.delete(older_than=0, confirm=lambda js: bool(shown.append([j.id for j in js])), db=str(db))
    assert shown == [["job_a", "job_b"]] and not declined.deleted
    assert len(await store.list_jobs()) == 2
    done = await app.delete(older_than=0, confirm=lambda js: True, db=str(db))
    assert done.deleted and done.requests == 5 and done.size_after <= done.size_before
    assert await store.list_jobs() == []
    with pytest.raises(ConfigError):
        await app.delete(["job_a"], older_than=0, db=str(db))
