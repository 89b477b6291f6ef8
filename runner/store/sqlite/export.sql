-- The SQLite backend's export reads (runner/store/sqlite/export.py runs them on a plain sqlite3 connection).
-- tests/unit/test_sql_states.py checks the state names in them.

-- name: batch_lines
-- A chunk of a job's rows in line order, after line `?`. A completed row with an HTTP status and a stored
-- answer comes with its whole line of the batch format, byte for byte what export.py's `batch_line` and
-- orjson write (json_quote escapes strings as orjson does; the stored answer is embedded as it is); any
-- other row with NULL, and is read in full by `odd_rows`. The first `?` is the JSON text of the id's start.
SELECT line_no,
    CASE WHEN state = 'completed' AND http_status IS NOT NULL AND response_body IS NOT NULL THEN
        CAST('{"id":' || ? || line_no || '","custom_id":' || json_quote(custom_id)
            || ',"response":{"status_code":' || http_status || ',"request_id":' || json_quote(request_id)
            || ',"body":' || response_body || '},"error":null}' || char(10) AS BLOB)
    END
FROM requests WHERE job_id = ? AND line_no > ? ORDER BY line_no LIMIT ?

-- name: odd_rows
-- The rows of lines (after, last] that `batch_lines` did not write, as ExportRow's fields, in line order.
SELECT line_no, custom_id, state, http_status, request_id, response_body, error_code, error_message,
    input_tokens, cached_tokens, output_tokens, reasoning_tokens, total_tokens
FROM requests WHERE job_id = ? AND line_no > ? AND line_no <= ?
  AND NOT (state = 'completed' AND http_status IS NOT NULL AND response_body IS NOT NULL)
ORDER BY line_no

-- name: rows
-- The same fields for every row of a chunk (an SQLite without its JSON functions writes every line in Python).
SELECT line_no, custom_id, state, http_status, request_id, response_body, error_code, error_message,
    input_tokens, cached_tokens, output_tokens, reasoning_tokens, total_tokens
FROM requests WHERE job_id = ? AND line_no > ? ORDER BY line_no LIMIT ?
