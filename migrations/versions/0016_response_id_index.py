"""a response id names one response: an index on requests.response_id

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04

A proxy with a loosely keyed response cache answered three different background questions with one response
id, and all three lines were given that one response. Writing a line's response id now checks in the same
statement that no other request holds it (runner/store/sqlite/hot.sql `set_response_id`); this index makes
that check one probe. Partial: only background lines have a response id, so other jobs' rows stay out.
Not unique: a store written before this revision may already hold such duplicates.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_HAS_ID = sa.text("response_id IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_requests_response_id",
        "requests",
        ["response_id"],
        unique=False,
        sqlite_where=_HAS_ID,
        postgresql_where=_HAS_ID,
    )


def downgrade() -> None:
    op.drop_index("ix_requests_response_id", table_name="requests")
