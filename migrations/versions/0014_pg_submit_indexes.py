"""PostgreSQL submit: one index fewer for every submitted row, and the insert check reads its rows once

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02

The statement trigger that stands in for the requests -> jobs key (migration 0011) read its transition table
twice per COPY: once for the jobs to lock, once more for a job not found. A submit's chunk of 2,000 rows names
one job, so it now takes the distinct job ids once, locks those jobs FOR KEY SHARE and counts what it locked:
a job it could not lock (deleted, or never there) is one the statement's rows must not name. Only then, on
the way to the error, does it look for which. Same promises (the job row locked until commit, SQLSTATE 23503
naming the job); what it costs the server per 200,000 rows COPYed in chunks of 2,000 (the backend's CPU,
four interleaved runs each, min-max): 2.22-2.44 s before, 1.98-2.33 after.

And `ix_requests_queued_id` (the queued rows by id, PostgreSQL only) is dropped: every submitted row entered
it, for the batch lane alone, which walked the queue in id order. That walk now goes job by job in claim
order (sched, id) through ix_requests_queued_sched, which claims read already (store/batches.py queued_page).
The same micro-benchmark with the index dropped: 1.81-2.66 s per 200,000 rows against 2.21-2.64 (three runs
each; the README measured this index at 0.4-0.8 s per 300,000).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_ONE_PASS = """
CREATE OR REPLACE FUNCTION runner_requests_job_exists() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    named text[];
    locked int;
    missing text;
BEGIN
    SELECT array_agg(DISTINCT job_id) INTO named FROM added;
    -- The rows a concurrent delete removed are not returned, so they are not counted.
    SELECT count(*) INTO locked FROM (SELECT 1 FROM jobs WHERE id = ANY(named) FOR KEY SHARE) AS j;
    IF locked < cardinality(named) THEN
        SELECT a INTO missing FROM unnest(named) AS a WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = a) LIMIT 1;
        RAISE foreign_key_violation USING
            MESSAGE = format('requests name job %s, which does not exist', missing),
            CONSTRAINT = 'fk_requests_job_id_jobs', TABLE = 'requests';
    END IF;
    RETURN NULL;
END $$
"""

# Migration 0011's, as it was.
_TWO_PASSES = """
CREATE OR REPLACE FUNCTION runner_requests_job_exists() RETURNS trigger LANGUAGE plpgsql AS $$
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


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_ONE_PASS)
    op.drop_index("ix_requests_queued_id", table_name="requests")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_index("ix_requests_queued_id", "requests", ["id"], postgresql_where=sa.text("state = 'queued'"))
    op.execute(_TWO_PASSES)
