-- The SQLite backend's export reads (runner/store/sqlite/export.py runs them on a plain sqlite3 connection).
-- tests/unit/test_sql_states.py checks the state names in them.

-- name: batch_lines
-- A chunk of a job's rows in line order, after line `?`. A completed row with an HTTP status and a stored
-- answer comes with its whole line of the batch format, byte for byte what export.py's `batch_line` and
-- orjson write (json_quote escapes strings as orjson does; the stored answer is embedded as it is); any
-- other row with NULL, and is read in full by `odd_rows`. The first `?` is the JSON text of the id's start.
-- A reused row's answer is its source's (`a`, runner/store/answer.py: the row's own body wins when it has one).
SELECT r.line_no,
    CASE WHEN r.state = 'completed' AND r.http_status IS NOT NULL AND COALESCE(r.response_body, a.response_body) IS NOT NULL THEN
        CAST('{"id":' || ? || r.line_no || '","custom_id":' || json_quote(r.custom_id)
            || ',"response":{"status_code":' || r.http_status || ',"request_id":' || json_quote(r.request_id)
            || ',"body":' || COALESCE(r.response_body, a.response_body) || '},"error":null}' || char(10) AS BLOB)
    END
FROM requests r LEFT JOIN requests a ON a.id = r.reused_from AND r.response_body IS NULL
WHERE r.job_id = ? AND r.line_no > ? ORDER BY r.line_no LIMIT ?

-- name: odd_rows
-- The rows of lines (after, last] that `batch_lines` did not write, as ExportRow's fields, in line order.
SELECT r.line_no, r.custom_id, r.state, r.http_status, r.request_id, COALESCE(r.response_body, a.response_body),
    r.error_code, r.error_message, r.input_tokens, r.cached_tokens, r.output_tokens, r.reasoning_tokens,
    r.total_tokens
FROM requests r LEFT JOIN requests a ON a.id = r.reused_from AND r.response_body IS NULL
WHERE r.job_id = ? AND r.line_no > ? AND r.line_no <= ?
  AND NOT (r.state = 'completed' AND r.http_status IS NOT NULL
           AND COALESCE(r.response_body, a.response_body) IS NOT NULL)
ORDER BY r.line_no

-- name: rows
-- The same fields for every row of a chunk (an SQLite without its JSON functions writes every line in Python).
SELECT r.line_no, r.custom_id, r.state, r.http_status, r.request_id, COALESCE(r.response_body, a.response_body),
    r.error_code, r.error_message, r.input_tokens, r.cached_tokens, r.output_tokens, r.reasoning_tokens,
    r.total_tokens
FROM requests r LEFT JOIN requests a ON a.id = r.reused_from AND r.response_body IS NULL
WHERE r.job_id = ? AND r.line_no > ? ORDER BY r.line_no LIMIT ?
