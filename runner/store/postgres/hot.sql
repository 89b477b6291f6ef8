-- The PostgreSQL backend's hot statements (runner/store/postgres/__init__.py runs them on asyncpg).
-- Every time written or compared is the database's own clock, as epoch seconds, so runners on machines
-- whose clocks disagree can never expire each other's live leases: extract(epoch FROM now())::float8.
-- States are written out; tests/unit/test_sql_states.py checks each one exists in runner/states.py.

-- name: claim
-- $1 owner, $2 lease seconds, $3 one job id (claims go job by job), $4 how many. SKIP LOCKED: a row another runner is claiming
-- right now is passed over, never handed out twice. KEY SHARE on the job's row: `runner delete` locks it
-- FOR UPDATE, so no claim slips in between its check for live leases and its delete. The pick is a MATERIALIZED CTE, run once: as an
-- `IN (subquery)` the planner may re-run it per row and lock more than $4 rows. A request whose
-- conversation has an earlier unfinished one is skipped (one at a time, file order); the earlier one is
-- queued or in progress in every snapshot until it is final, so this holds across processes too.
-- Order: `sched` (runner/cachekeys.py: a prompt-cache group's lines together), then file order: one job's
-- rows in that order are a walk of ix_requests_queued_sched (with `= ANY(array)` the planner sorts them all).
-- A request that continues another's response (parent_id, runner/chains.py) waits until that one is completed.
WITH picked AS MATERIALIZED (
    SELECT r.id FROM requests AS r JOIN jobs ON jobs.id = r.job_id
    WHERE r.state = 'queued' AND r.next_attempt_at <= extract(epoch FROM now())::float8
      AND r.job_id = $3::text AND jobs.cancelled_at IS NULL
      AND (r.conversation IS NULL OR NOT EXISTS (
          SELECT 1 FROM requests AS earlier
          WHERE earlier.conversation = r.conversation AND earlier.id < r.id
            AND earlier.state IN ('queued', 'in_progress')))
      AND (r.parent_id IS NULL OR EXISTS (
          SELECT 1 FROM requests AS parent WHERE parent.id = r.parent_id AND parent.state = 'completed'))
    ORDER BY r.sched, r.id LIMIT $4
    FOR UPDATE OF r SKIP LOCKED FOR KEY SHARE OF jobs)
UPDATE requests SET state = 'in_progress', attempts = attempts + 1, lease_owner = $1,
    lease_expires_at = extract(epoch FROM now())::float8 + $2,
    started_at = coalesce(started_at, extract(epoch FROM now())::float8),
    submitted_at = extract(epoch FROM now())::float8, updated_at = extract(epoch FROM now())::float8
FROM picked
WHERE requests.id = picked.id AND state = 'queued'
RETURNING requests.id, job_id, line_no, custom_id, body, attempts, sched

-- name: set_response_ids
-- $1 ids, $2 response ids, $3 x-request-ids, $4 send times, $5 owner. Only to a request this owner
-- leases, never over another id, never an id another request holds; the ids written come back. That check
-- filters the arrays first (`v`, materialized), a subquery with LIMIT per row: one probe of
-- ix_requests_response_id each, and then one of the primary key. As a NOT EXISTS beside the guard it became an
-- anti join that could read the whole index at every commit, and as a subquery in the guard a hash join over a
-- scan of the table. The statement sees the rows as they were before it, so the caller passes each response id
-- once.
-- The write-back statements (this one, record_attempts, finish, requeue) test their guard wrapped in
-- `coalesce(..., false)`, which means the same in a WHERE but matches no index and has no statistics (the
-- planner takes it to keep half the rows): the way in is the primary key, one probe per row of the arrays. Written plainly, the guard matched ix_requests_state (the partial index of
-- in-progress rows) and ix_requests_lease_owner; with statistics taken before the run (no row in progress)
-- asyncpg's generic plan expected one row there and rescanned the unnested arrays once per in-progress row: at
-- concurrency 1,000 a commit of 824 results compared 1.4 million pairs and took 4.8 s, the server spent
-- 1.6 CPU-ms a request, and the heartbeat's lease renewal waited behind it (scenario 1b: 165 requests/s).
WITH v AS MATERIALIZED (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::float8[]) AS v(id, response_id, api_request_id, sent_at)
    WHERE (SELECT o.id FROM requests AS o WHERE o.response_id = v.response_id AND o.id <> v.id LIMIT 1) IS NULL)
UPDATE requests AS r SET response_id = v.response_id, request_id = v.api_request_id,
    submitted_at = coalesce(v.sent_at, r.submitted_at), updated_at = extract(epoch FROM now())::float8
FROM v
WHERE r.id = v.id AND coalesce(r.state = 'in_progress' AND r.lease_owner = $5 AND r.response_id IS NULL, false)
RETURNING r.id

-- name: response_ids_of
SELECT id, response_id, lease_owner FROM requests WHERE id = ANY($1::bigint[])

-- name: record_attempts
-- One attempts row per outcome, under the outcome's own guard (inserted before the outcome is written).
INSERT INTO attempts (request_id, attempt, outcome, sent_at, recorded_at, http_status, api_request_id,
    response_id, error_code, error_message)
SELECT r.id, r.attempts, v.outcome, coalesce(v.sent_at, r.submitted_at), extract(epoch FROM now())::float8,
    v.http_status, v.api_request_id, r.response_id, v.error_code, v.error_message
FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::int[], $5::text[], $6::text[], $7::text[])
    AS v(id, outcome, sent_at, http_status, api_request_id, error_code, error_message)
JOIN requests AS r ON r.id = v.id
WHERE coalesce(r.state = 'in_progress' AND r.lease_owner = $8, false)

-- name: finish
-- Final outcomes. $1 ids, $2 states, $3 bodies, $4-$8 usage, $9 http status, $10 x-request-ids,
-- $11 error codes, $12 messages, $13 429 counts, $14 send times, $15 owner.
UPDATE requests AS r SET state = v.state, response_body = v.response_body,
    input_tokens = v.input_tokens, cached_tokens = v.cached_tokens, output_tokens = v.output_tokens,
    reasoning_tokens = v.reasoning_tokens, total_tokens = v.total_tokens,
    finished_at = extract(epoch FROM now())::float8,
    http_status = coalesce(v.http_status, r.http_status), request_id = coalesce(v.api_request_id, r.request_id),
    error_code = v.error_code, error_message = v.error_message, rate_limited = r.rate_limited + v.rate_limited,
    submitted_at = coalesce(v.sent_at, r.submitted_at), lease_owner = NULL, lease_expires_at = NULL,
    updated_at = extract(epoch FROM now())::float8
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[],
        $8::bigint[], $9::int[], $10::text[], $11::text[], $12::text[], $13::int[], $14::float8[])
    AS v(id, state, response_body, input_tokens, cached_tokens, output_tokens, reasoning_tokens, total_tokens,
         http_status, api_request_id, error_code, error_message, rate_limited, sent_at)
WHERE r.id = v.id AND coalesce(r.state = 'in_progress' AND r.lease_owner = $15, false)
RETURNING r.id

-- name: requeue
-- Back to queued (a retry, or work handed back). $1 ids, $2 due times, $3 refunds (0/1), $4 clear the
-- response id, $5 http status, $6 x-request-ids, $7 error codes, $8 messages, $9 429 counts,
-- $10 send times, $11 owner.
UPDATE requests AS r SET state = 'queued', next_attempt_at = v.next_attempt_at, attempts = r.attempts - v.refund,
    response_id = CASE WHEN v.clear THEN NULL ELSE r.response_id END,
    http_status = coalesce(v.http_status, r.http_status), request_id = coalesce(v.api_request_id, r.request_id),
    error_code = v.error_code, error_message = v.error_message, rate_limited = r.rate_limited + v.rate_limited,
    submitted_at = coalesce(v.sent_at, r.submitted_at), lease_owner = NULL, lease_expires_at = NULL,
    updated_at = extract(epoch FROM now())::float8
FROM unnest($1::bigint[], $2::float8[], $3::int[], $4::bool[], $5::int[], $6::text[], $7::text[], $8::text[],
        $9::int[], $10::float8[])
    AS v(id, next_attempt_at, refund, clear, http_status, api_request_id, error_code, error_message,
         rate_limited, sent_at)
WHERE r.id = v.id AND coalesce(r.state = 'in_progress' AND r.lease_owner = $11, false)
RETURNING r.id

-- name: apply
-- A whole group commit in one statement, run on its own (its own transaction, one round trip): the response
-- ids, every outcome, its attempts row, and a requeue in a job cancelled meanwhile cancelled. What the
-- statements above do one by one in a transaction with savepoints (nine round trips), with the same guards.
-- It is the fast path: a value PostgreSQL refuses fails it whole, nothing is written, and the careful path
-- (those statements) isolates the row. The caller gives it only distinct request ids: a row updated by two
-- parts of one statement keeps one of the two. $1 ids, $2 states (final, or queued), $3 bodies,
-- $4-$8 usage, $9 http status, $10 x-request-ids, $11 error codes, $12 messages, $13 429 counts,
-- $14 send times, $15 due times (requeue), $16 refunds (0/1), $17 clear the response id, $18 owner,
-- $19 ids given a response id, $20 the response ids, $21 their x-request-ids, $22 their send times (each
-- response id once, none another request holds: see `set_response_ids`).
-- It returns each request written.
-- An attempts row is made from what the outcome's UPDATE returns, with no join (the attempt count and response id
-- as they were: a final outcome changes neither, but a requeue may refund or clear them, so it reads the row as
-- it was).
WITH v AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[],
        $7::bigint[], $8::bigint[], $9::int[], $10::text[], $11::text[], $12::text[], $13::int[], $14::float8[],
        $15::float8[], $16::int[], $17::bool[])
    AS v(id, state, response_body, input_tokens, cached_tokens, output_tokens, reasoning_tokens, total_tokens,
         http_status, api_request_id, error_code, error_message, rate_limited, sent_at, next_attempt_at, refund,
         clear)),
w AS MATERIALIZED (
    SELECT * FROM unnest($19::bigint[], $20::text[], $21::text[], $22::float8[]) AS w(id, response_id, api_request_id,
        sent_at)
    WHERE (SELECT o.id FROM requests AS o WHERE o.response_id = w.response_id AND o.id <> w.id LIMIT 1) IS NULL),
ids AS (
    UPDATE requests AS r SET response_id = w.response_id, request_id = w.api_request_id,
        submitted_at = coalesce(w.sent_at, r.submitted_at), updated_at = extract(epoch FROM now())::float8
    FROM w
    WHERE r.id = w.id AND coalesce(r.state = 'in_progress' AND r.lease_owner = $18 AND r.response_id IS NULL, false)
    RETURNING r.id),
fin AS (
    UPDATE requests AS r SET state = v.state, response_body = v.response_body,
        input_tokens = v.input_tokens, cached_tokens = v.cached_tokens, output_tokens = v.output_tokens,
        reasoning_tokens = v.reasoning_tokens, total_tokens = v.total_tokens,
        finished_at = extract(epoch FROM now())::float8,
        http_status = coalesce(v.http_status, r.http_status), request_id = coalesce(v.api_request_id, r.request_id),
        error_code = v.error_code, error_message = v.error_message, rate_limited = r.rate_limited + v.rate_limited,
        submitted_at = coalesce(v.sent_at, r.submitted_at), lease_owner = NULL, lease_expires_at = NULL,
        updated_at = extract(epoch FROM now())::float8
    FROM v
    WHERE r.id = v.id AND v.state <> 'queued' AND coalesce(r.state = 'in_progress' AND r.lease_owner = $18, false)
    RETURNING r.id, r.attempts, r.submitted_at, r.response_id, v.state, v.http_status, v.api_request_id,
        v.error_code, v.error_message, v.refund),
back AS (
    UPDATE requests AS r SET state = CASE WHEN j.cancelled_at IS NULL THEN 'queued' ELSE 'cancelled' END,
        next_attempt_at = v.next_attempt_at, attempts = r.attempts - v.refund,
        response_id = CASE WHEN v.clear THEN NULL ELSE r.response_id END,
        http_status = coalesce(v.http_status, r.http_status), request_id = coalesce(v.api_request_id, r.request_id),
        error_code = CASE WHEN j.cancelled_at IS NULL THEN v.error_code ELSE 'cancelled' END,
        error_message = CASE WHEN j.cancelled_at IS NULL THEN v.error_message ELSE 'the job was cancelled' END,
        finished_at = CASE WHEN j.cancelled_at IS NULL THEN r.finished_at ELSE extract(epoch FROM now())::float8 END,
        rate_limited = r.rate_limited + v.rate_limited,
        submitted_at = coalesce(v.sent_at, r.submitted_at), lease_owner = NULL, lease_expires_at = NULL,
        updated_at = extract(epoch FROM now())::float8
    FROM v, requests AS was, jobs AS j
    WHERE r.id = v.id AND v.state = 'queued' AND was.id = v.id AND j.id = was.job_id
      AND coalesce(r.state = 'in_progress' AND r.lease_owner = $18, false)
    RETURNING r.id, was.attempts, r.submitted_at, was.response_id, v.state, v.http_status, v.api_request_id,
        v.error_code, v.error_message, v.refund),
hist AS (
    INSERT INTO attempts (request_id, attempt, outcome, sent_at, recorded_at, http_status, api_request_id,
        response_id, error_code, error_message)
    SELECT d.id, d.attempts, d.state, d.submitted_at, extract(epoch FROM now())::float8, d.http_status,
        d.api_request_id, d.response_id, d.error_code, d.error_message
    FROM (SELECT * FROM fin UNION ALL SELECT * FROM back) AS d
    WHERE d.refund = 0)
SELECT id FROM fin UNION ALL SELECT id FROM back UNION ALL SELECT id FROM ids

-- name: refuse_row
-- A row the store refused to take (a value PostgreSQL cannot hold, such as a NUL character): failed, with
-- the reason and nothing else, so it is final and never sent (and paid for) again. $1 reason, $2 id, $3 owner.
UPDATE requests SET state = 'failed', response_body = NULL, input_tokens = 0, cached_tokens = 0,
    output_tokens = 0, reasoning_tokens = 0, total_tokens = 0, error_code = 'store_refused',
    error_message = $1, finished_at = extract(epoch FROM now())::float8, lease_owner = NULL,
    lease_expires_at = NULL, updated_at = extract(epoch FROM now())::float8
WHERE id = $2 AND state = 'in_progress' AND lease_owner = $3

-- name: response_id_holder
-- The line that holds a response id, for the message of the one refused it. $1 response id, $2 the refused one.
SELECT custom_id, job_id FROM requests WHERE response_id = $1 AND id <> $2 LIMIT 1

-- name: fail_taken
-- A line whose response id another request holds: failed, final, its id left NULL (it names another's
-- response). $1 x-request-id, $2 code, $3 message, $4 send time, $5 id, $6 owner.
UPDATE requests SET state = 'failed', request_id = coalesce($1, request_id), error_code = $2, error_message = $3,
    submitted_at = coalesce($4, submitted_at), finished_at = extract(epoch FROM now())::float8,
    lease_owner = NULL, lease_expires_at = NULL, updated_at = extract(epoch FROM now())::float8
WHERE id = $5 AND state = 'in_progress' AND lease_owner = $6 AND response_id IS NULL

-- name: cancel_requeued
-- Work that came back to queued in a job cancelled meanwhile is cancelled ($1: those ids; NULL: all).
UPDATE requests SET state = 'cancelled', finished_at = extract(epoch FROM now())::float8,
    updated_at = extract(epoch FROM now())::float8, error_code = 'cancelled',
    error_message = 'the job was cancelled'
WHERE state = 'queued' AND job_id IN (SELECT id FROM jobs WHERE cancelled_at IS NOT NULL)
  AND ($1::bigint[] IS NULL OR id = ANY($1::bigint[]))

-- name: migration_lock
-- One key for every runner: two processes opening a new database at once migrate one after the other.
SELECT pg_advisory_xact_lock(7372011123456789)

-- name: reuse_wait_for_deletes
-- `submit --reuse`, first in each chunk's transaction: a key-share lock on every other published job's row, in id
-- order, before referencing its answers ($1 the submitting job; store/reuse.py `_wait_for_deletes` says why).
SELECT id FROM jobs WHERE phase = 'ready' AND id <> $1::text ORDER BY id FOR KEY SHARE

-- name: reuse_chunk_table
-- `submit --reuse`: the chunk's lines go into this session's temporary table by COPY, and `insert_answered` reads
-- them from there. As six arrays bound to the statement (unnest) asyncpg checked every element against
-- collections.abc (is it a nested array?) in Python, 12,000 calls per chunk of 2,000 lines. The columns are a
-- plain submit's COPY_COLUMNS (postgres/copy.py), so that the COPY data a parsing child encoded for a chunk goes
-- in as it is; the statement reads the first six. ON COMMIT DELETE ROWS: each chunk's transaction finds it
-- empty. (Created here, in the chunk's transaction, so a pooled connection that lost it makes it again; the
-- notice that it exists is not wanted. synchronous_commit: postgres/__init__.py `insert`.)
SET LOCAL synchronous_commit = off;
SET LOCAL client_min_messages = warning;
CREATE TEMPORARY TABLE IF NOT EXISTS runner_reuse_rows (line_no integer, custom_id text, body text,
    conversation text, body_hash text, sched integer, job_id text, created_at float8, state text, attempts integer,
    next_attempt_at float8, input_tokens bigint, cached_tokens bigint, output_tokens bigint, reasoning_tokens bigint,
    total_tokens bigint, rate_limited integer) ON COMMIT DELETE ROWS

-- name: insert_answered
-- `submit --reuse` (runner/store/postgres/__init__.py insert_answered): a chunk of a staging job's lines (in
-- runner_reuse_rows, above) with each line whose question has an original answer in another job (the newest,
-- finished at or after $3 if given) inserted already completed from it, as `reuse_answers` would complete it:
-- each row is written once, where COPY and then an UPDATE wrote a second version of every row and of its index
-- entries. $1 the job, $2 now. Rows go in in line order, so their ids are in file order as a COPY's are.
-- The reused row references the answer (reused_from) and holds no copy of it (runner/store/answer.py).
-- It returns how many lines it answered, counted from its own RETURNING. A count afterwards by (job_id, line_no)
-- range, prepared by asyncpg, ran from the sixth chunk on with the generic plan: `job_id = $1` unknown and one
-- job in the statistics, it walked ix_requests_reused_from, which holds every reused row in the store, this
-- submit's so far among them: quadratic, 1,000,000 reused lines cost the server 60.8 CPU-s against 7.7 for a
-- plain submit (tests/integration/test_reuse_pg_plan.py).
WITH ins AS (
INSERT INTO requests (job_id, line_no, custom_id, body, conversation, body_hash, sched, created_at, state, attempts,
    next_attempt_at, input_tokens, cached_tokens, output_tokens, reasoning_tokens, total_tokens, rate_limited,
    reused_from, http_status, request_id, finished_at, updated_at, reused_input_tokens, reused_cached_tokens,
    reused_output_tokens, reused_reasoning_tokens, reused_total_tokens)
SELECT $1::text, v.line_no, v.custom_id, v.body, v.conversation, v.body_hash, v.sched,
    $2::float8, CASE WHEN src.id IS NULL THEN 'queued' ELSE 'completed' END,
    0, 0.0, 0, 0, 0, 0, 0, 0, src.id, src.http_status, src.request_id,
    CASE WHEN src.id IS NOT NULL THEN $2::float8 END,
    CASE WHEN src.id IS NOT NULL THEN $2::float8 END,
    src.input_tokens, src.cached_tokens, src.output_tokens, src.reasoning_tokens, src.total_tokens
FROM (SELECT line_no, custom_id, body, conversation, body_hash, sched FROM runner_reuse_rows ORDER BY line_no) AS v
LEFT JOIN LATERAL (
    -- what the answer was paid for: a promoted source (runner/store/answer.py) has it in its reused_* columns
    SELECT s.id, s.http_status, s.request_id, coalesce(s.reused_input_tokens, s.input_tokens) AS input_tokens,
        coalesce(s.reused_cached_tokens, s.cached_tokens) AS cached_tokens,
        coalesce(s.reused_output_tokens, s.output_tokens) AS output_tokens,
        coalesce(s.reused_reasoning_tokens, s.reasoning_tokens) AS reasoning_tokens,
        coalesce(s.reused_total_tokens, s.total_tokens) AS total_tokens
    FROM requests AS s
    WHERE s.body_hash = v.body_hash AND s.state = 'completed' AND s.reused_from IS NULL
      AND s.response_body IS NOT NULL AND s.job_id <> $1::text
      AND ($3::float8 IS NULL OR s.finished_at >= $3::float8)
    ORDER BY s.id DESC LIMIT 1) AS src ON true
RETURNING reused_from)
SELECT count(reused_from) FROM ins

-- name: batch_lines
-- `export` in the batch format (runner/store/postgres/export.py): a job's rows in line order. A completed row with
-- an HTTP status and an answer comes as its whole line, byte for byte what export.py's `batch_line` and orjson
-- write (to_json escapes a string as orjson does; the answer is embedded as stored), as bytes; any other row
-- with NULL there and its ExportRow fields after it. $1 the JSON text of the id's start, $2 the job, $3 the
-- last line of the previous chunk, $4 the chunk's size: a walk of (job_id, line_no) from there. One statement for
-- the whole job was planned as a scan of the table and a sort of the job's rows (1,000,000 rows of 1.2 KB:
-- an external sort on disk before the first row came out).
-- A reused row's answer is its source's (`a`, runner/store/answer.py: the row's own body wins when it has one). `a`
-- is a lateral subquery kept apart (OFFSET 0): a primary-key probe for a reused row only. As a plain join the
-- planner hashed the whole table and sorted the job (a cursor's first row after seconds, memory to match).
SELECT r.line_no,
    CASE WHEN x.ready THEN convert_to('{"id":' || $1::text || r.line_no || '","custom_id":' || to_json(r.custom_id)
        || ',"response":{"status_code":' || r.http_status || ',"request_id":'
        || coalesce(to_json(r.request_id)::text, 'null') || ',"body":' || x.body || '},"error":null}' || chr(10), 'UTF8')
    END,
    CASE WHEN NOT x.ready THEN r.custom_id END, CASE WHEN NOT x.ready THEN r.state END,
    CASE WHEN NOT x.ready THEN r.http_status END, CASE WHEN NOT x.ready THEN r.request_id END,
    CASE WHEN NOT x.ready THEN x.body END, CASE WHEN NOT x.ready THEN r.error_code END,
    CASE WHEN NOT x.ready THEN r.error_message END, CASE WHEN NOT x.ready THEN r.input_tokens END,
    CASE WHEN NOT x.ready THEN r.cached_tokens END, CASE WHEN NOT x.ready THEN r.output_tokens END,
    CASE WHEN NOT x.ready THEN r.reasoning_tokens END, CASE WHEN NOT x.ready THEN r.total_tokens END
FROM requests AS r
LEFT JOIN LATERAL (SELECT a.* FROM requests AS a WHERE a.id = r.reused_from AND r.response_body IS NULL OFFSET 0) AS a
    ON true
CROSS JOIN LATERAL (SELECT COALESCE(r.response_body, a.response_body) AS body) AS b
CROSS JOIN LATERAL (SELECT b.body, r.state = 'completed' AND r.http_status IS NOT NULL AND b.body IS NOT NULL AS ready) AS x
WHERE r.job_id = $2::text AND r.line_no > $3::int
ORDER BY r.line_no LIMIT $4::int

-- name: cancelled_jobs
-- Which of a run's jobs `runner cancel` stopped (four times a second, by the primary key of a small table).
SELECT id FROM jobs WHERE cancelled_at IS NOT NULL AND id = ANY($1::text[]);
