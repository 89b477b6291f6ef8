"""reuse index: original answers indexed by (body_hash, state), not body_hash alone

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02

Without statistics SQLite weighs an equality on `ix_requests_state` the same as one on the body-hash index,
and picked the state index for `submit --reuse`'s lookup: every line walked every completed row (20,000
reused lines took 92 s). With `state` in the hash index as well, that index matches two equalities and
wins on every store, analysed or not. PostgreSQL gets the same index (one schema for both).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_ORIGINAL = sa.text("state = 'completed' AND reused_from IS NULL")


def _index(name: str, columns: list[str]) -> None:
    op.create_index(name, "requests", columns, unique=False, sqlite_where=_ORIGINAL, postgresql_where=_ORIGINAL)


def upgrade() -> None:
    op.drop_index("ix_requests_body_hash", table_name="requests")
    _index("ix_requests_body_hash_state", ["body_hash", "state"])


def downgrade() -> None:
    op.drop_index("ix_requests_body_hash_state", table_name="requests")
    _index("ix_requests_body_hash", ["body_hash"])
