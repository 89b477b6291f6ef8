"""The one schema of the job store. migrations/env.py imports this metadata."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
)

from runner.states import RequestState

# The usage counts a reused answer carries over (columns `reused_<name>`).
REUSED_USAGE = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens", "total_tokens")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Token counts go up to 2**40 (runner/reply.py): SQLite's INTEGER holds 64 bits, PostgreSQL's only 32.
COUNT = Integer().with_variant(BigInteger(), "postgresql")

jobs = Table(
    "jobs",
    metadata,
    Column("id", String, primary_key=True),
    Column("name", String, nullable=False),
    Column("source", Text, nullable=False),  # the submitted path, as given
    # sha256 of the file's bytes and the submit options: the same submission twice is one job
    Column("fingerprint", String, nullable=False),
    Column("background", Boolean, nullable=False, default=False),
    Column("total", Integer, nullable=False, default=0),
    # "staging" while submit inserts rows (invisible to every other command), then "ready"
    Column("phase", String, nullable=False, default="staging"),
    Column("staged_by", String, nullable=True),  # host:pid of the submitting process
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("cancelled_at", Float, nullable=True),
    Index(None, "fingerprint"),
)

# The PostgreSQL options of indexes (`postgresql_where`...), set by postgres_options() when a PostgreSQL store is
# used: naming them in Index() makes SQLAlchemy load its postgresql dialect (~50 ms), which every SQLite store
# command then paid at start-up. Only DDL reads them: Alembic's comparison (include_object) and the backend.
_POSTGRES_OPTIONS: list[tuple[Index, dict[str, Any]]] = []


def _postgres(index: Index, **options: Any) -> Index:
    _POSTGRES_OPTIONS.append((index, options))
    return index


def postgres_options() -> None:
    """Give the indexes their PostgreSQL options (once; later calls do nothing)."""
    while _POSTGRES_OPTIONS:
        index, options = _POSTGRES_OPTIONS.pop()
        for name, value in options.items():
            index.dialect_kwargs[f"postgresql_{name}"] = value


_ORIGINAL_ANSWER = and_(Column("state") == RequestState.COMPLETED.value, Column("reused_from").is_(None))

requests = Table(
    "requests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String, nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("custom_id", Text, nullable=False),
    Column("body", Text, nullable=False),  # the Create Response body as sent, JSON
    Column("conversation", Text, nullable=True),  # requests sharing one run one at a time
    Column("state", String, nullable=False, default=RequestState.QUEUED.value),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False, default=0.0),
    Column("lease_owner", String, nullable=True),
    Column("lease_expires_at", Float, nullable=True),
    Column("response_id", String, nullable=True),
    Column("http_status", Integer, nullable=True),
    Column("request_id", String, nullable=True),  # x-request-id of the last reply
    Column("response_body", Text, nullable=True),  # the final Response object, or the error body
    Column("error_code", String, nullable=True),
    Column("error_message", Text, nullable=True),
    Column("input_tokens", COUNT, nullable=False, default=0),
    Column("cached_tokens", COUNT, nullable=False, default=0),
    Column("output_tokens", COUNT, nullable=False, default=0),
    Column("reasoning_tokens", COUNT, nullable=False, default=0),
    Column("total_tokens", COUNT, nullable=False, default=0),
    Column("rate_limited", Integer, nullable=False, default=0),  # 429s this request met
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),  # first claim
    Column("submitted_at", Float, nullable=True),  # last POST sent
    Column("updated_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("lane", String, nullable=True),  # "batch" when the Batch API finished it (priced at Batch rates)
    # `--reuse` (runner/reuse.py): the normalised body's hash, and for an answer taken from another request,
    # that request's id and the usage it was paid for there (this row's own usage stays 0: nothing was spent).
    # Such a row keeps no copy of the answer (response_body NULL): readers follow reused_from (store/answer.py).
    Column("body_hash", String, nullable=True),
    Column("reused_from", Integer, nullable=True),
    *(Column(f"reused_{c}", Integer, nullable=True) for c in REUSED_USAGE),
    # The request whose response this one continues (`"previous_response_id": "@<custom_id>"`, runner/chains.py):
    # claimed only once that one is completed. Set at submit; NULL for lines outside chains.
    Column("parent_id", Integer, nullable=True),
    # Claim order (runner/cachekeys.py): the line_no of the first line of the prompt-cache group this line
    # belongs to, so a group's lines are sent together; a line without a group has its own line_no.
    Column("sched", Integer, nullable=False),
    # SQLite only: on PostgreSQL two statement triggers keep this key's promises (the job exists and is
    # locked against a delete; deleting it deletes its requests) once per COPY, not once per row
    # (migration 0011). Declared on both so that joins know the key.
    ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE", info={"only_on": "sqlite"}).ddl_if(
        dialect="sqlite"
    ),
    UniqueConstraint("job_id", "line_no"),
    UniqueConstraint("job_id", "custom_id"),
    # Counts by state; in SQLite it lists the queued rows in id (= file) order (claims use ix_requests_queued_sched).
    # PostgreSQL keeps only the in-progress rows in it (migration 0011): they are what is looked up by state
    # across jobs (leases, `doctor`, `status`); per job, (job_id, state) serves; a submit's rows stay out.
    _postgres(Index(None, "state"), where=Column("state") == RequestState.IN_PROGRESS.value),
    Index(None, "job_id", "state"),
    # Only leased rows are ever looked up by owner; leaving the rest out keeps big inserts cheap.
    _postgres(
        Index(
            None,
            "lease_owner",
            sqlite_where=Column("lease_owner").isnot(None),
        ),
        where=Column("lease_owner").isnot(None),
    ),
    # Claims take a job's queued rows by (sched, id), one job at a time, and so does the batch lane's walk of the
    # queue (store/batches.py queued_page). Partial, like the queue itself: a finished row leaves it, so a claim
    # on a million-line job reads the next rows and nothing else.
    _postgres(
        Index(
            "ix_requests_queued_sched",
            "job_id",
            "sched",
            "id",
            sqlite_where=Column("state") == RequestState.QUEUED.value,
        ),
        where=Column("state") == RequestState.QUEUED.value,
    ),
    # Only original answers are reused, so only they are indexed by hash: a submit's inserts (queued rows)
    # and its reused rows never touch this index; a row enters it once, when its answer is written. `state`
    # is in it so that SQLite, without statistics, prefers it to ix_requests_state (migration 0010).
    Index(None, "body_hash", "state", sqlite_where=_ORIGINAL_ANSWER, info={"only_on": "sqlite"}).ddl_if(
        dialect="sqlite"
    ),
    # PostgreSQL: the same rows that have a body, by (body_hash, id), carrying what a `--reuse` lookup reads and
    # copies, so the newest answer to a question is one index entry, never a read of the table (migration 0013).
    _postgres(
        Index("ix_requests_body_hash_id", "body_hash", "id", info={"only_on": "postgresql"}),
        include=[
            "job_id",
            "finished_at",
            "http_status",
            "request_id",
            *REUSED_USAGE,
            # what a promoted answer was paid for (store/answer.py): a lookup copies coalesce(reused_x, x)
            *(f"reused_{c}" for c in REUSED_USAGE),
        ],
        where=and_(_ORIGINAL_ANSWER, Column("response_body").isnot(None)),
    ).ddl_if(dialect="postgresql"),
    # Rows answered from another's answer (store/answer.py), found by their source when its job is deleted, so
    # the answer is copied into them first. Partial: only reused rows are in it.
    _postgres(
        Index(
            None,
            "reused_from",
            sqlite_where=Column("reused_from").isnot(None),
        ),
        where=Column("reused_from").isnot(None),
    ),
    _postgres(
        Index(
            None,
            "conversation",
            sqlite_where=Column("conversation").isnot(None),
        ),
        where=Column("conversation").isnot(None),
    ),
    # Only lines of chains have a parent: jobs without chains keep this index empty.
    _postgres(
        Index(
            None,
            "parent_id",
            sqlite_where=Column("parent_id").isnot(None),
        ),
        where=Column("parent_id").isnot(None),
    ),
    # A response id is written only if no other request holds it (a proxy's cached reply): one probe here, in
    # the write's own statement (migration 0016). Only background lines have one.
    _postgres(
        Index(
            None,
            "response_id",
            sqlite_where=Column("response_id").isnot(None),
        ),
        where=Column("response_id").isnot(None),
    ),
)

# One row per attempt that reached an outcome (a reply, an error, a finished poll), written in the same
# group commit as the outcome itself. `runner show` lists them; the request row keeps only the last one.
attempts = Table(
    "attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", Integer, ForeignKey("requests.id", ondelete="CASCADE"), nullable=False),
    Column("attempt", Integer, nullable=False),  # the request's attempt count when this one was made
    Column("outcome", String, nullable=False),  # the state the request went to: queued means "retried"
    Column("sent_at", Float, nullable=True),  # when the POST went out
    Column("recorded_at", Float, nullable=False),  # when the outcome was committed
    Column("http_status", Integer, nullable=True),
    Column("api_request_id", String, nullable=True),  # x-request-id of the reply
    Column("response_id", String, nullable=True),  # the background response polled, if any
    Column("error_code", String, nullable=True),
    Column("error_message", Text, nullable=True),
    Index(None, "request_id"),
)

# The structured-output check of a request's answer (runner/outputcheck.py), one row per request that asked
# for JSON: beside `requests`, not in it, so plain-text jobs carry nothing and the hot writes stay as they
# are. `rejected_*` sums the usage of answers that failed their check and were asked again (`--repair`).
output_checks = Table(
    "output_checks",
    metadata,
    Column("request_id", Integer, ForeignKey("requests.id", ondelete="CASCADE"), primary_key=True),
    Column("job_id", String, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("status", String, nullable=False),  # valid | invalid_json | schema_mismatch (the latest answer's)
    Column("detail", Text, nullable=True),  # the first error's path and message
    Column("parsed", Text, nullable=True),  # the answer's JSON value, as JSON text
    Column("repairs", Integer, nullable=False, default=0),  # answers rejected and asked again
    Column("rejected_model", String, nullable=True),  # the model that billed the rejected answers
    Column("rejected_input_tokens", Integer, nullable=False, default=0),
    Column("rejected_cached_tokens", Integer, nullable=False, default=0),
    Column("rejected_output_tokens", Integer, nullable=False, default=0),
    Column("rejected_reasoning_tokens", Integer, nullable=False, default=0),
    Column("rejected_total_tokens", Integer, nullable=False, default=0),
    Column("checked_at", Float, nullable=False),
    Index(None, "job_id", "line_no"),
)

# The batch lane: one row per Batch API input file and its batch. `step` moves packed -> uploaded -> created
# -> merged, each id committed before the next step; the requests of a chunk are leased by "batch:<id>".
batches = Table(
    "batches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("model", Text, nullable=False),
    Column("lines", Integer, nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("step", String, nullable=False),
    Column("owner", String, nullable=True),  # the run uploading and creating it (host:pid:suffix)
    Column("input_file_id", String, nullable=True),
    Column("batch_id", String, nullable=True),
    Column("status", String, nullable=True),  # the batch's status as last seen
    Column("done_count", Integer, nullable=False, default=0),
    Column("failed_count", Integer, nullable=False, default=0),
    Column("output_file_id", String, nullable=True),
    Column("error_file_id", String, nullable=True),
    Column("errors", Text, nullable=True),  # a failed batch's errors, one line each
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Index(None, "job_id", "step"),
)

# One row per live `runner run` process (runner/store/fleet.py): registered when it starts, its heartbeat
# pushed out every few seconds, deleted at a clean exit. A row whose `expires_at` has passed is a runner
# that died; `runner status` lists the others.
runners = Table(
    "runners",
    metadata,
    Column("id", String, primary_key=True),  # its lease owner name, host:pid:suffix
    Column("host", String, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),  # live while this is ahead of now
    Column("in_flight", Integer, nullable=False, default=0),
    # The rate budget it books its sends from while it shares one (NULL: it paces alone, or not at all); a
    # runner joining others waits until they do, so no two runners ever pace the same budget apart.
    Column("sharing", String, nullable=True),
)

# The fleet's shared rate budgets: one GCRA per (API base URL, salted hash of the key, kind), so runners on
# one store send at most one budget together. Never the key itself.
rate_budget = Table(
    "rate_budget",
    metadata,
    Column("id", String, primary_key=True),  # "requests:" + 32 hex digits of the salted hash
    Column("tat", Float, nullable=False),  # theoretical arrival time: the next free send slot (epoch s)
    Column("paused_until", Float, nullable=False, default=0.0),  # a 429's Retry-After, for every runner
    Column("rate", Float, nullable=False),  # units per second of the last reservation (for people)
    Column("updated_at", Float, nullable=False),
)

# The limits a server's `x-ratelimit-limit-*` headers said, per rate budget (as above: endpoint and salted key
# hash) and model (OpenAI's limits are per model): the next run of that budget and model paces at them from its
# first request instead of a slow start (runner/limits.py `RateLimiter.seed`). Limits, never keys or counts used.
learnt_limits = Table(
    "learnt_limits",
    metadata,
    Column("budget", String, primary_key=True),
    Column("model", String, primary_key=True),
    Column("rpm", COUNT, nullable=True),  # x-ratelimit-limit-requests (NULL: the server did not say)
    Column("tpm", COUNT, nullable=True),  # x-ratelimit-limit-tokens
    Column("learnt_at", Float, nullable=False),  # when a reply last said them (epoch s, the store's clock)
)
