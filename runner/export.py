"""Export: results streamed from the store, in input order, in the OpenAI Batch output format.

A line is `{"id", "custom_id", "response": {"status_code", "request_id", "body"} | null,
"error": {"code", "message"} | null}`. Files are written to a temporary name and renamed at the end,
so a killed export never leaves half a file where the user expects a whole one.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from runner.states import RequestState
from runner.store import ExportRow, Store

_ERROR_STATES = frozenset({RequestState.FAILED.value, RequestState.CANCELLED.value})
_UNFINISHED = frozenset({RequestState.QUEUED.value, RequestState.IN_PROGRESS.value})


@dataclass
class ExportCounts:
    """How many lines went where."""

    results: int = 0
    errors: int = 0
    unfinished: int = 0  # not exported yet: still queued or in progress


def batch_line(job_id: str, row: ExportRow) -> dict[str, Any]:
    """One request as an OpenAI Batch output line (the stored JSON bodies are embedded, not re-parsed)."""
    body: Any = orjson.Fragment(row.response_body) if row.response_body is not None else None
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    if row.http_status is not None and body is not None:
        response = {"status_code": row.http_status, "request_id": row.request_id, "body": body}
    state = row.state
    if state == RequestState.CANCELLED.value:
        error = {"code": "batch_cancelled", "message": row.error_message or "cancelled"}
    elif state == RequestState.FAILED.value and not (response is not None and (row.http_status or 0) >= 400):
        # An HTTP error keeps its details in response.body.error, as the Batch API does; failures with
        # no HTTP error (retries exhausted on timeouts, a background response that ended failed) use `error`.
        error = {"code": row.error_code or "failed", "message": row.error_message or ""}
    return {
        "id": f"batch_req_{job_id.removeprefix('job_')}_{row.line_no}",
        "custom_id": row.custom_id,
        "response": response,
        "error": error,
    }


@contextmanager
def _atomic_writer(path: str | None) -> Iterator[IO[bytes]]:
    if path is None or path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def export_job(store: Store, job_id: str, out: str | None, errors: str | None = None) -> ExportCounts:
    """Write a job's finished requests to `out` (stdout when None or "-"); failed ones to `errors` if given."""
    counts = ExportCounts()
    with _atomic_writer(out) as f_out, _atomic_writer(errors) if errors else _null() as f_err:
        async with store.stream_export(job_id) as rows:
            async for row in rows:
                if row.state in _UNFINISHED:
                    counts.unfinished += 1
                    continue
                data = orjson.dumps(batch_line(job_id, row), option=orjson.OPT_APPEND_NEWLINE)
                if f_err is not None and row.state in _ERROR_STATES:
                    f_err.write(data)
                    counts.errors += 1
                else:
                    f_out.write(data)
                    counts.results += 1
    return counts


@contextmanager
def _null() -> Iterator[None]:
    yield None
