"""PostgreSQL submit: the requests -> jobs key checked once per statement, not once per row; a narrower state index

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02

A foreign key is checked row by row: every row a submit's COPY inserts runs one more query on `jobs` (and
locks the job's row again). That was a third of the server's work in a submit (0.65 of 2.1 CPU-seconds for
200,000 rows). On PostgreSQL the key becomes two statement triggers that keep its promises at a fraction
of the cost, reading the rows a statement added (a transition table) once:
- rows added to `requests` must name a job that exists; that job's row is locked FOR KEY SHARE until the
  transaction ends, as the key's own check does, so no delete of the job slips in before the commit
  (refused with SQLSTATE 23503, foreign_key_violation, like the key);
- deleting a job deletes its requests (the key's ON DELETE CASCADE).
`requests.job_id` is never updated (no statement of the runner writes it), so no trigger watches updates.
SQLite keeps the key: its check costs little next to its own insert.

And `ix_requests_state` keeps only in-progress rows on PostgreSQL: across jobs only those are looked up by
state (leases, `doctor`, `status`); within a job (job_id, state) serves. A submitted row no longer enters
it (0.1 of 1.6 CPU-seconds per 200,000 rows). SQLite keeps the whole index (migration 0010 says why).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_FK = "fk_requests_job_id_jobs"

_CHECK = """
CREATE FUNCTION runner_requests_job_exists() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing text;
BEGIN
    -- Lock first (the rows a concurrent delete removed are not returned), then look for one not locked.
    PERFORM 1 FROM jobs WHERE id IN (SELECT DISTINCT job_id FROM added) FOR KEY SHARE;
    SELECT a.job_id INTO missing FROM (SELECT DISTINCT job_id FROM added) AS a
    WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = a.job_id) LIMIT 1;
    IF FOUND THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('requests name job %s, which does not exist', missing),
            CONSTRAINT = 'fk_requests_job_id_jobs', TABLE = 'requests';
    END IF;
    RETURN NULL;
END $$
"""

_CASCADE = """
CREATE FUNCTION runner_jobs_delete_requests() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM requests WHERE job_id IN (SELECT id FROM gone);
    RETURN NULL;
END $$
"""


def _state_index(where: str | None) -> None:
    op.drop_index("ix_requests_state", table_name="requests")
    op.create_index("ix_requests_state", "requests", ["state"], postgresql_where=sa.text(where) if where else None)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _state_index("state = 'in_progress'")
    op.drop_constraint(_FK, "requests", type_="foreignkey")
    op.execute(_CHECK)
    op.execute(
        "CREATE TRIGGER requests_job_exists AFTER INSERT ON requests REFERENCING NEW TABLE AS added"
        " FOR EACH STATEMENT EXECUTE FUNCTION runner_requests_job_exists()"
    )
    op.execute(_CASCADE)
    op.execute(
        "CREATE TRIGGER jobs_delete_requests AFTER DELETE ON jobs REFERENCING OLD TABLE AS gone"
        " FOR EACH STATEMENT EXECUTE FUNCTION runner_jobs_delete_requests()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER jobs_delete_requests ON jobs")
    op.execute("DROP FUNCTION runner_jobs_delete_requests()")
    op.execute("DROP TRIGGER requests_job_exists ON requests")
    op.execute("DROP FUNCTION runner_requests_job_exists()")
    op.create_foreign_key(_FK, "requests", "jobs", ["job_id"], ["id"], ondelete="CASCADE")
    _state_index(None)
