"""output_checks: the structured-output check of each answer that asked for JSON

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

One row per request whose line asked for `json_schema` or `json_object`: the verdict on its answer, the
parsed value, and the usage of answers rejected and asked again by `runner run --repair N`. A table of its
own, so plain-text jobs store nothing more. Stores made before it simply have no checks for past answers.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "output_checks",
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("parsed", sa.Text(), nullable=True),
        sa.Column("repairs", sa.Integer(), nullable=False),
        sa.Column("rejected_model", sa.String(), nullable=True),
        sa.Column("rejected_input_tokens", sa.Integer(), nullable=False),
        sa.Column("rejected_cached_tokens", sa.Integer(), nullable=False),
        sa.Column("rejected_output_tokens", sa.Integer(), nullable=False),
        sa.Column("rejected_reasoning_tokens", sa.Integer(), nullable=False),
        sa.Column("rejected_total_tokens", sa.Integer(), nullable=False),
        sa.Column("checked_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_output_checks_job_id_jobs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["request_id"], ["requests.id"], name=op.f("fk_output_checks_request_id_requests"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_output_checks")),
    )
    with op.batch_alter_table("output_checks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_output_checks_job_id_line_no"), ["job_id", "line_no"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("output_checks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_output_checks_job_id_line_no"))
    op.drop_table("output_checks")
