"""PostgreSQL `--reuse`: the original answers found by question without reading the table

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02

`submit --reuse` looks up, for every line, the newest original answer to the same question (hot.sql
`insert_answered`). Through the index on (body_hash, state) each lookup read the candidates' rows from the
table (is there a body, which job, when finished) and sorted them by id: at 1,000,000 lines the table of
answers is over a gigabyte and those reads were a quarter of the server's work. On PostgreSQL the index is
now on (body_hash, id), for original answers that have a body, and carries what a lookup reads and copies
(INCLUDE), so a lookup is a backward walk to one index entry, with no sort and, where the page is all-visible,
no read of the table: `submit --reuse` of 300,000 lines cost the server 5.4-6.4 CPU-s instead of 6.1-7.6 (three
interleaved runs each, on one store cloned twice). SQLite keeps (body_hash, state): its own lookup
(sqlite/hot.sql) is planned for it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_OLD = "ix_requests_body_hash_state"
_NEW = "ix_requests_body_hash_id"
_INCLUDE = [
    "job_id",
    "finished_at",
    "http_status",
    "request_id",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
    # what a promoted answer was paid for (runner/store/answer.py): a lookup copies coalesce(reused_x, x)
    "reused_input_tokens",
    "reused_cached_tokens",
    "reused_output_tokens",
    "reused_reasoning_tokens",
    "reused_total_tokens",
]
_ORIGINAL = "state = 'completed' AND reused_from IS NULL"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_index(
        _NEW,
        "requests",
        ["body_hash", "id"],
        postgresql_include=_INCLUDE,
        postgresql_where=sa.text(f"{_ORIGINAL} AND response_body IS NOT NULL"),
    )
    op.drop_index(_OLD, table_name="requests")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_index(_OLD, "requests", ["body_hash", "state"], postgresql_where=sa.text(_ORIGINAL))
    op.drop_index(_NEW, table_name="requests")
