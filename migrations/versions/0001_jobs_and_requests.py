"""jobs and requests

Revision ID: 0001
Revises:
Create Date: 2026-11-22 22:12:17.156693
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Token counts go up to 2**40 (runner/reply.py): SQLite's INTEGER holds 64 bits, PostgreSQL's only 32.
COUNT = sa.Integer().with_variant(sa.BigInteger(), "postgresql")

# PostgreSQL only: JSON is kept as TEXT (cheap inserts, text round trips), and these read it the way
# SQLite's json_extract / json_each behind json_valid do: a document that is not JSON gives NULL (no rows),
# never an error that would stop an export or a report (runner/store/dialect.py).
_PG_FUNCTIONS = (
    """
CREATE OR REPLACE FUNCTION runner_json_path(doc text, VARIADIC path text[]) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN doc::json #>> path;
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$
""",
    """
CREATE OR REPLACE FUNCTION runner_json_keys(doc text, key text) RETURNS SETOF text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v json;
BEGIN
    BEGIN
        v := doc::json -> key;
    EXCEPTION WHEN others THEN
        RETURN;
    END;
    IF v IS NULL OR json_typeof(v) <> 'object' THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT json_object_keys(v);
END $$
""",
)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(), nullable=False),
        sa.Column("background", sa.Boolean(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(), nullable=False),
        sa.Column("staged_by", sa.String(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("cancelled_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jobs_fingerprint"), ["fingerprint"], unique=False)

    op.create_table(
        "requests",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("conversation", sa.Text(), nullable=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("lease_owner", sa.String(), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.Column("response_id", sa.String(), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("request_id", sa.String(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("error_code", sa.String(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("input_tokens", COUNT, nullable=False),
        sa.Column("cached_tokens", COUNT, nullable=False),
        sa.Column("output_tokens", COUNT, nullable=False),
        sa.Column("reasoning_tokens", COUNT, nullable=False),
        sa.Column("total_tokens", COUNT, nullable=False),
        sa.Column("rate_limited", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("submitted_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_requests_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_requests")),
        sa.UniqueConstraint("job_id", "custom_id", name=op.f("uq_requests_job_id_custom_id")),
        sa.UniqueConstraint("job_id", "line_no", name=op.f("uq_requests_job_id_line_no")),
    )
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_requests_conversation"),
            ["conversation"],
            unique=False,
            sqlite_where=sa.text("conversation IS NOT NULL"),
            postgresql_where=sa.text("conversation IS NOT NULL"),
        )
        batch_op.create_index(batch_op.f("ix_requests_job_id_state"), ["job_id", "state"], unique=False)
        batch_op.create_index(batch_op.f("ix_requests_lease_owner"), ["lease_owner"], unique=False)
        batch_op.create_index(batch_op.f("ix_requests_state"), ["state"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        for sql in _PG_FUNCTIONS:
            op.execute(sql)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS runner_json_path(text, text[])")
        op.execute("DROP FUNCTION IF EXISTS runner_json_keys(text, text)")
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_requests_state"))
        batch_op.drop_index(batch_op.f("ix_requests_lease_owner"))
        batch_op.drop_index(batch_op.f("ix_requests_job_id_state"))
        batch_op.drop_index(batch_op.f("ix_requests_conversation"), sqlite_where=sa.text("conversation IS NOT NULL"))

    op.drop_table("requests")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_fingerprint"))

    op.drop_table("jobs")
