"""reuse: a hash of each request's normalised body, and where a reused answer came from

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

`runner submit --reuse` completes a line from an answer already in the store when the two bodies ask the
same question (runner/reuse.py). Rows made before this revision have no hash: they are never reused from.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_USAGE = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens", "total_tokens")


def upgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("body_hash", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("reused_from", sa.Integer(), nullable=True))
        for c in _USAGE:
            batch_op.add_column(sa.Column(f"reused_{c}", sa.Integer(), nullable=True))
        # Partial: only original answers are looked up by hash; queued inserts and reused rows skip it.
        completed = sa.text("state = 'completed' AND reused_from IS NULL")
        batch_op.create_index(
            batch_op.f("ix_requests_body_hash"),
            ["body_hash"],
            unique=False,
            sqlite_where=completed,
            postgresql_where=completed,
        )


def downgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_requests_body_hash"))
        for c in reversed(_USAGE):
            batch_op.drop_column(f"reused_{c}")
        batch_op.drop_column("reused_from")
        batch_op.drop_column("body_hash")
