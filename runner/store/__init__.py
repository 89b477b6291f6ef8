"""The job store: one typed `Store` API (runner/store/store.py) over a backend (runner/store/backend.py).

store.py      Store: what to ask (portable SQLAlchemy Core) and when (transactions, shielding, retries)
backend.py    the Backend Protocol, and backend_for(url): the one place a database is chosen
sqlite/       the SQLite backend: engine set-up, busy test, migration lock, file checks, the hot SQL
migrate.py    HEAD_REVISION and the Alembic upgrade a backend runs under its lock
models.py     the values passed in and out; tables.py the schema; reports.py read-only report queries
"""

from __future__ import annotations

from runner.store.backend import OpenMode
from runner.store.models import (
    AttemptRow,
    Claimed,
    DuplicateCustomId,
    ExportRow,
    JobRow,
    JobStats,
    NewRequest,
    Outcome,
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
    "RequestDetail",
    "ResponseIdRecord",
    "Store",
    "UsageCounts",
    "bounded_total",
    "place_log",
]
