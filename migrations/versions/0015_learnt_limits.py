"""remembered rate limits: what a server's limit headers said, per rate budget and model

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03

A run given no --rpm/--tpm started with a slow start (8 requests in flight for a round trip) every time, even
when the same store's run of the night before had read the same key's limits for the same model. The limits are
kept here, and the next run paces at them from its first request. The table starts empty.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_COUNT = sa.Integer().with_variant(sa.BigInteger(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "learnt_limits",
        sa.Column("budget", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("rpm", _COUNT, nullable=True),
        sa.Column("tpm", _COUNT, nullable=True),
        sa.Column("learnt_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("budget", "model", name=op.f("pk_learnt_limits")),
    )


def downgrade() -> None:
    op.drop_table("learnt_limits")
