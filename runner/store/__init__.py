"""The job store: one typed `Store` API (runner/store/store.py) over a backend (runner/store/backend.py).

store.py      Store: open, and the parts it is made of, each owning one kind of question:
  core.py       lifetime, read()/write() transactions (shielding, retries), "now"
  jobs.py       jobs and submit; leases.py claims and leases; writeback.py outcomes; reading.py reads
backend.py    the Backend Protocol, and backend_for(url): the one place a database is chosen
dialect.py    portable SQL for what the databases spell differently (JSON fields, overflow-free sums)
sqlfile.py    the loader of a backend's hot SQL, kept as named blocks in a .sql file
sqlite/       the SQLite backend: engine set-up, busy test, migration lock, file checks, the hot SQL
postgres/     the PostgreSQL backend: asyncpg, SKIP LOCKED claims, the database clock, COPY (hot.sql)
migrate.py    HEAD_REVISION, the Alembic upgrade a backend runs under its lock, a new SQLite store made at once
models.py     the values passed in and out; tables.py the schema; reports.py read-only report queries
"""

from __future__ import annotations

from runner.store.backend import OpenMode, refuse_in_memory, store_file
from runner.store.models import (
    AttemptRow,
    Claimed,
    DuplicateCustomId,
    ExportRow,
    JobRow,
    JobStats,
    NewRequest,
    Outcome,
    ReadyLines,
    RequestDetail,
    ResponseIdRecord,
)
from runner.store.store import Store, bounded_total, place_log
from runner.usage import UsageCounts

__all__ = [
    "AttemptRow",
    "Claimed",
    "DuplicateCustomId",
    "ExportRow",
    "JobRow",
    "JobStats",
    "NewRequest",
    "OpenMode",
    "Outcome",
    "ReadyLines",
    "RequestDetail",
    "ResponseIdRecord",
    "Store",
    "UsageCounts",
    "bounded_total",
    "place_log",
    "refuse_in_memory",
    "store_file",
]
