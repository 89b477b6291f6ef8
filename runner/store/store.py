"""The job store: every query the runner makes, as typed async methods of one `Store`.

What to ask is portable SQLAlchemy Core, and when (transactions, shielding, retries) is core.py's; how on a
given database (engine set-up, the hot statements, transient errors, the migration lock, the file, the
clock) is its `Backend`'s (backend.py; sqlite/ and postgres/). The Store is made of parts, each owning one
kind of question, so no module holds them all:

core.py       lifetime, read()/write() transactions, "now"
jobs.py       jobs and submit: staging, inserting, publishing, listing, cancel, retry, delete
leases.py     claims and leases: claim, poll claims, renew, release, reclaim
writeback.py  outcomes and response ids (the group commit's hot write)
reading.py    progress, stats, export streams, request detail, health, the file

State changes are guarded in the UPDATE itself (`WHERE state IN (allowed) AND lease_owner = me`), so a
change from a state it may not come from touches no row and raises, instead of silently overwriting.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from runner.errors import StoreUnavailable
from runner.store.backend import OpenMode, backend_for
from runner.store.core import bounded_total, place_log
from runner.store.leases import LeasesPart
from runner.store.reading import ReadingPart
from runner.store.writeback import WriteBackPart

__all__ = ["Store", "bounded_total", "place_log"]


class Store(ReadingPart, LeasesPart, WriteBackPart):
    """Typed access to one job store (SQLite or PostgreSQL).

    Open with `await Store.open(db, mode)`, close with `aclose()`.
    """

    @classmethod
    async def open(cls, db: str, mode: OpenMode = "create", *, clock: Callable[[], float] = time.time) -> Store:
        """Open the store at `db` (a path or an SQLAlchemy URL), migrating it as needed.

        `mode` says whether a missing file is made ("create") or is an error ("existing": StoreMissing). A
        file that cannot be used (a read-only directory, not a database) raises StoreUnavailable.
        `clock` gives every time the store writes or compares.
        """
        backend = backend_for(db)
        try:
            created = backend.prepare(mode)
        except BaseException:
            await backend.aclose()
            raise
        store = cls(backend, clock)
        try:
            made = await store._retry(backend.migrate)
        except BaseException as e:
            await backend.aclose()
            reason = backend.why_unusable(e)
            if reason is not None:
                raise StoreUnavailable(backend.place, reason) from None
            raise
        backend.opened()
        store.created = (created and backend.path is not None) or made
        place_log.debug("using store %s", backend.place)
        return store
