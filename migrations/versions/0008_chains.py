"""chains: the request a line continues (`"previous_response_id": "@<custom_id>"`)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

`parent_id` is set at submit for a line that continues another line's response (runner/chains.py); the
claim sends it only once that parent is `completed`. NULL for every other line, so the index (partial)
holds only the lines that take part in chains, and jobs without chains pay nothing for it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        chained = sa.text("parent_id IS NOT NULL")
        batch_op.create_index(
            batch_op.f("ix_requests_parent_id"),
            ["parent_id"],
            unique=False,
            sqlite_where=chained,
            postgresql_where=chained,
        )


def downgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_requests_parent_id"))
        batch_op.drop_column("parent_id")
