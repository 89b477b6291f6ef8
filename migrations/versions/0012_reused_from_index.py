"""reused rows reference their source's answer: an index on reused_from

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02

A line answered from the store no longer copies its source's response body (runner/store/answer.py): it
references the source by `reused_from`, and every reader follows that. Deleting a job first copies each of
its answers into the rows that reference it; this partial index finds those rows without reading the whole
table. Rows reused before this revision keep their copy and read as before, so no data moves here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_REUSED = sa.text("reused_from IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_requests_reused_from",
        "requests",
        ["reused_from"],
        unique=False,
        sqlite_where=_REUSED,
        postgresql_where=_REUSED,
    )


def downgrade() -> None:
    # The older code reads response_body only: give every reused row its own copy again before going back.
    op.execute(
        "UPDATE requests SET response_body ="
        " (SELECT s.response_body FROM requests AS s WHERE s.id = requests.reused_from)"
        " WHERE reused_from IS NOT NULL AND response_body IS NULL"
    )
    op.drop_index("ix_requests_reused_from", table_name="requests")
