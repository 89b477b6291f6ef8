"""cache scheduling: each request's place in the claim order (`sched`), and its index

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

Lines that share a prompt prefix are claimed together (runner/cachekeys.py): `sched` is the line_no of the
first line of the group, and claims take a job's queued rows by (sched, id). Rows made before this revision get
their own line_no, which is the file order they were claimed in before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_QUEUED = sa.text("state = 'queued'")


def upgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sched", sa.Integer(), nullable=True))
    op.execute("UPDATE requests SET sched = line_no")
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.alter_column("sched", existing_type=sa.Integer(), nullable=False)
        batch_op.create_index(
            "ix_requests_queued_sched",
            ["job_id", "sched", "id"],
            unique=False,
            sqlite_where=_QUEUED,
            postgresql_where=_QUEUED,
        )


def downgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_index("ix_requests_queued_sched")
        batch_op.drop_column("sched")
