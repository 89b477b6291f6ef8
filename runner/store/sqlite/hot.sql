-- The SQLite backend's hot statements (runner/store/sqlite/hot.py runs them on a plain sqlite3 connection).
-- Times are parameters: on one host the Store's clock is the clock. States are written out;
-- tests/unit/test_sql_states.py checks each one exists in runner/states.py and each change is allowed.

-- name: claim
-- Lease up to n due, queued requests in `sched` order (runner/cachekeys.py: a prompt-cache group's lines
-- together, at the place of its first line; else file order), then file order. `/*job_ids*/ ?` becomes one
-- `?` per job id; hot.py claims one job at a time, so the walk is ix_requests_queued_sched, in order.
-- A request whose conversation has an earlier unfinished one is skipped: one at a time, in order.
-- A request that continues another's response (parent_id, runner/chains.py) waits until that one is completed.
UPDATE requests SET state = 'in_progress', attempts = attempts + 1, lease_owner = ?, lease_expires_at = ?,
    started_at = coalesce(started_at, ?), submitted_at = ?, updated_at = ?
WHERE id IN (
    SELECT requests.id FROM requests JOIN jobs ON jobs.id = requests.job_id
    WHERE requests.state = 'queued' AND requests.next_attempt_at <= ? AND requests.job_id IN (/*job_ids*/ ?)
      AND jobs.cancelled_at IS NULL
      AND (requests.conversation IS NULL OR NOT EXISTS (
          SELECT 1 FROM requests AS earlier
          WHERE earlier.conversation = requests.conversation AND earlier.id < requests.id
            AND earlier.state IN ('in_progress', 'queued')))
      AND (requests.parent_id IS NULL OR EXISTS (
          SELECT 1 FROM requests AS parent WHERE parent.id = requests.parent_id AND parent.state = 'completed'))
    ORDER BY requests.sched, requests.id LIMIT ?)
  AND state = 'queued'
RETURNING id, job_id, line_no, custom_id, body, attempts, sched

-- name: finish
-- A final outcome, under the lease: state, body, usage, finished_at, then the fields every outcome sets.
UPDATE requests SET state = ?, response_body = ?, input_tokens = ?, cached_tokens = ?, output_tokens = ?,
    reasoning_tokens = ?, total_tokens = ?, finished_at = ?,
    http_status = coalesce(?, http_status), request_id = coalesce(?, request_id), error_code = ?,
    error_message = ?, rate_limited = rate_limited + ?, submitted_at = coalesce(?, submitted_at),
    lease_owner = NULL, lease_expires_at = NULL, updated_at = ?
WHERE id = ? AND state = 'in_progress' AND lease_owner = ?

-- name: requeue
-- Back to queued (a retry, or work handed back), under the lease.
UPDATE requests SET state = 'queued', next_attempt_at = ?, attempts = attempts - ?,
    response_id = CASE WHEN ? THEN NULL ELSE response_id END,
    http_status = coalesce(?, http_status), request_id = coalesce(?, request_id), error_code = ?,
    error_message = ?, rate_limited = rate_limited + ?, submitted_at = coalesce(?, submitted_at),
    lease_owner = NULL, lease_expires_at = NULL, updated_at = ?
WHERE id = ? AND state = 'in_progress' AND lease_owner = ?

-- name: refuse_row
-- A row the store refused to take (a value SQLite cannot hold): failed, with the reason and nothing else,
-- so it is final (never claimed and sent again) and every value in it is the runner's own.
UPDATE requests SET state = 'failed', response_body = NULL, input_tokens = 0, cached_tokens = 0,
    output_tokens = 0, reasoning_tokens = 0, total_tokens = 0, error_code = 'store_refused',
    error_message = ?, finished_at = ?, lease_owner = NULL, lease_expires_at = NULL, updated_at = ?
WHERE id = ? AND state = 'in_progress' AND lease_owner = ?

-- name: set_response_id
-- Never an id another request holds (a caching proxy's reply): one probe of ix_requests_response_id.
UPDATE requests SET response_id = ?, request_id = ?, submitted_at = coalesce(?, submitted_at), updated_at = ?
WHERE id = ? AND state = 'in_progress' AND lease_owner = ? AND response_id IS NULL
  AND NOT EXISTS (SELECT 1 FROM requests AS other WHERE other.response_id = ? AND other.id <> requests.id)

-- name: response_id_holder
-- The line that holds a response id, for the message of the one refused it.
SELECT custom_id, job_id FROM requests WHERE response_id = ? AND id <> ? LIMIT 1

-- name: fail_taken
-- A line whose response id another request holds: failed, final, its id left NULL (it names another's response).
UPDATE requests SET state = 'failed', request_id = coalesce(?, request_id), error_code = ?, error_message = ?,
    submitted_at = coalesce(?, submitted_at), finished_at = ?, lease_owner = NULL, lease_expires_at = NULL,
    updated_at = ?
WHERE id = ? AND state = 'in_progress' AND lease_owner = ? AND response_id IS NULL

-- name: finish_many
-- `finish` for up to 64 requests in one statement (see hot.py `apply`): one row of VALUES per request,
-- (id, state, body, the five usage counts, http_status, request id, error code, error message, rate_limited,
-- sent_at); `/*rows*/` becomes one such row per request.
UPDATE requests SET state = v.column2, response_body = v.column3, input_tokens = v.column4,
    cached_tokens = v.column5, output_tokens = v.column6, reasoning_tokens = v.column7,
    total_tokens = v.column8, finished_at = ?,
    http_status = coalesce(v.column9, http_status), request_id = coalesce(v.column10, request_id),
    error_code = v.column11, error_message = v.column12, rate_limited = rate_limited + v.column13,
    submitted_at = coalesce(v.column14, submitted_at),
    lease_owner = NULL, lease_expires_at = NULL, updated_at = ?
FROM (VALUES /*rows*/ (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)) AS v
WHERE requests.id = v.column1 AND state = 'in_progress' AND lease_owner = ?

-- name: record_attempts_many
-- `record_attempt` for up to 64 requests: (id, outcome, sent_at, http_status, request id, error code,
-- error message) per row.
INSERT INTO attempts (request_id, attempt, outcome, sent_at, recorded_at, http_status, api_request_id,
    response_id, error_code, error_message)
SELECT requests.id, requests.attempts, v.column2, coalesce(v.column3, requests.submitted_at), ?, v.column4,
    v.column5, requests.response_id, v.column6, v.column7
FROM (VALUES /*rows*/ (?, ?, ?, ?, ?, ?, ?)) AS v JOIN requests ON requests.id = v.column1
WHERE requests.state = 'in_progress' AND requests.lease_owner = ?

-- name: response_id_of
SELECT response_id, lease_owner FROM requests WHERE id = ?

-- name: cancel_if_job_cancelled
-- Every queued request of a cancelled job becomes cancelled.
UPDATE requests SET state = 'cancelled', finished_at = ?, updated_at = ?, error_code = 'cancelled',
    error_message = 'the job was cancelled'
WHERE state = 'queued' AND job_id IN (SELECT id FROM jobs WHERE cancelled_at IS NOT NULL)

-- name: cancel_requeued_in_cancelled_job
-- The same, for one request that has just come back to queued.
UPDATE requests SET state = 'cancelled', finished_at = ?, updated_at = ?, error_code = 'cancelled',
    error_message = 'the job was cancelled'
WHERE state = 'queued' AND job_id IN (SELECT id FROM jobs WHERE cancelled_at IS NOT NULL) AND id = ?

-- name: record_attempt
-- Inserted before the outcome's own UPDATE, under the same guard: an outcome the store refuses (the lease
-- was lost) leaves no attempt row either, and the row still holds the attempt count and response id.
INSERT INTO attempts (request_id, attempt, outcome, sent_at, recorded_at, http_status, api_request_id,
    response_id, error_code, error_message)
SELECT id, attempts, ?, coalesce(?, submitted_at), ?, ?, ?, response_id, ?, ?
FROM requests WHERE id = ? AND state = 'in_progress' AND lease_owner = ?

-- name: insert_requests
-- One row of VALUES per line, `/*rows*/` repeated (hot.py `insert`): the parameters are bound at once and the
-- whole statement runs in C without the GIL. (A chunk as one JSON array unpacked by json_each cost a third
-- more: json_extract parses each row's array again for every column.)
INSERT INTO requests (job_id, line_no, custom_id, body, conversation, body_hash, sched, created_at, state,
    attempts, next_attempt_at, input_tokens, cached_tokens, output_tokens, reasoning_tokens, total_tokens,
    rate_limited)
VALUES /*rows*/ (?, ?, ?, ?, ?, ?, ?, ?, 'queued', 0, 0.0, 0, 0, 0, 0, 0, 0)

-- name: json1_probe
SELECT json('[]')

-- name: insert_answered
-- `submit --reuse` (runner/store/reuse.py add_reusing): `insert_requests` with each line whose question has an
-- original answer in another job (the newest, finished at or after the third `?` if not NULL) inserted already
-- completed from it, as `reuse_answers` would complete it: each row is written once, not twice. The reused row
-- references the answer (reused_from) and holds no copy of it (runner/store/answer.py). Parameters: the job,
-- now, newer_than, then one row of VALUES per line, `/*rows*/` repeated (hot.py `insert_answered`), as in
-- `insert_requests` (the JSON array this took before cost a third more: json_extract per row and column).
-- The usage carried over is what the answer was paid for: a promoted source (runner/store/answer.py) has it in
-- its reused_* columns.
WITH c(job, now, newer_than) AS (SELECT ?, ?, ?),
v(line_no, custom_id, body, conversation, body_hash, sched) AS (VALUES /*rows*/ (?, ?, ?, ?, ?, ?))
INSERT INTO requests (job_id, line_no, custom_id, body, conversation, body_hash, sched, created_at, state, attempts,
    next_attempt_at, input_tokens, cached_tokens, output_tokens, reasoning_tokens, total_tokens, rate_limited,
    reused_from, http_status, request_id, finished_at, updated_at, reused_input_tokens, reused_cached_tokens,
    reused_output_tokens, reused_reasoning_tokens, reused_total_tokens)
SELECT c.job, v.line_no, v.custom_id, v.body, v.conversation, v.body_hash, v.sched, c.now,
    CASE WHEN src.id IS NULL THEN 'queued' ELSE 'completed' END, 0, 0.0, 0, 0, 0, 0, 0, 0,
    src.id, src.http_status, src.request_id, CASE WHEN src.id IS NOT NULL THEN c.now END,
    CASE WHEN src.id IS NOT NULL THEN c.now END, coalesce(src.reused_input_tokens, src.input_tokens),
    coalesce(src.reused_cached_tokens, src.cached_tokens), coalesce(src.reused_output_tokens, src.output_tokens),
    coalesce(src.reused_reasoning_tokens, src.reasoning_tokens), coalesce(src.reused_total_tokens, src.total_tokens)
FROM v CROSS JOIN c LEFT JOIN requests AS src ON src.id = (
    SELECT max(s.id) FROM requests AS s
    WHERE s.body_hash = v.body_hash AND s.state = 'completed' AND s.reused_from IS NULL
      AND s.response_body IS NOT NULL AND s.job_id != c.job
      AND (c.newer_than IS NULL OR s.finished_at >= c.newer_than))

-- name: count_reused
-- How many lines of a span of a job were inserted answered (after `insert_answered`).
SELECT count(*) FROM requests WHERE job_id = ? AND line_no >= ? AND line_no <= ? AND reused_from IS NOT NULL

-- name: cancelled_jobs
-- Which of a run's jobs `runner cancel` stopped (four times a second, by the primary key of a small table).
SELECT id FROM jobs WHERE cancelled_at IS NOT NULL AND id IN (/*job_ids*/ ?);
