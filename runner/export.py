"""Export: results streamed from the store, in input order, in one of three formats.

- `batch` (default), the OpenAI Batch output format: a line is `{"id", "custom_id",
  "response": {"status_code", "request_id", "body"} | null, "error": {"code", "message"} | null}`.
- `jsonl-flat`: one flat JSON object per line with FLAT_COLUMNS (the text and the usage, no bodies).
- `csv`: the same columns with a header row (RFC 4180 quoting, so text with commas, quotes and newlines
  reads back intact with `csv.DictReader`).
- `parquet`: the same columns, typed, in row groups (needs the optional `pyarrow`: `responses-runner[parquet]`).

Files are written to a temporary name and renamed at the end, so a killed export never leaves half a file
where the user expects a whole one.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import orjson

from runner import DISTRIBUTION
from runner.errors import ConfigError
from runner.files import atomic_writer
from runner.schema import output_text
from runner.states import RequestState
from runner.store import ExportRow, Store

_ERROR_STATES = frozenset({RequestState.FAILED.value, RequestState.CANCELLED.value})
_CANCELLED = RequestState.CANCELLED.value
_FAILED = RequestState.FAILED.value
_UNFINISHED = frozenset({RequestState.QUEUED.value, RequestState.IN_PROGRESS.value})
_RESULT_STATES = frozenset({RequestState.COMPLETED.value, RequestState.INCOMPLETE.value})

FORMATS: Final = ("batch", "jsonl-flat", "csv", "parquet")
PARQUET_ROW_GROUP = 50_000  # rows held before a row group is written: bounded memory, few groups
FLAT_COLUMNS: Final = (
    "custom_id",
    "status",
    "output_text",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
    "error",
)


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
    if state == _CANCELLED:
        error = {"code": "batch_cancelled", "message": row.error_message or "cancelled"}
    elif state == _FAILED and not (response is not None and (row.http_status or 0) >= 400):
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
    with atomic_writer(Path(path)) as f:
        yield f


def flat_record(row: ExportRow) -> dict[str, Any]:
    """One request as a flat record (FLAT_COLUMNS).

    `output_text` is the stored response's text for results (completed, incomplete) and null otherwise;
    `error` is "code: message" for failed and cancelled requests and null for results, as in the Batch format.
    """
    text: str | None = None
    if row.state in _RESULT_STATES and row.response_body is not None:
        try:
            body = orjson.loads(row.response_body)
        except orjson.JSONDecodeError:
            body = None
        text = output_text(body) if isinstance(body, dict) else ""
    error: str | None = None
    if row.state in _ERROR_STATES:
        default = "batch_cancelled" if row.state == RequestState.CANCELLED.value else "failed"
        code = row.error_code or default
        error = f"{code}: {row.error_message}" if row.error_message else code
    return {
        "custom_id": row.custom_id,
        "status": row.state,
        "output_text": text,
        "input_tokens": row.input_tokens,
        "cached_tokens": row.cached_tokens,
        "output_tokens": row.output_tokens,
        "reasoning_tokens": row.reasoning_tokens,
        "total_tokens": row.total_tokens,
        "error": error,
    }


class _LineSink:
    """One encoded line per row, straight to the file (JSON Lines, or CSV after its header)."""

    def __init__(self, f: IO[bytes], encode: Callable[[ExportRow], bytes], header: bytes = b"") -> None:
        self._f = f
        self._encode = encode
        # Both files of a CSV export get the header, even when no row lands in one of them.
        f.write(header)

    def write(self, row: ExportRow) -> None:
        self._f.write(self._encode(row))

    def close(self) -> None:
        """Nothing is held back: every line is written as it comes."""


class _CsvEncoder:
    """CSV rows as bytes, one at a time, so the output stays a plain binary stream."""

    def __init__(self) -> None:
        self._buf = io.StringIO()
        self._writer = csv.DictWriter(self._buf, fieldnames=FLAT_COLUMNS)

    def _take(self) -> bytes:
        data = self._buf.getvalue().encode("utf-8")
        self._buf.seek(0)
        self._buf.truncate()
        return data

    def header(self) -> bytes:
        self._writer.writeheader()
        return self._take()

    def row(self, row: ExportRow) -> bytes:
        self._writer.writerow(flat_record(row))  # None becomes an empty field
        return self._take()


class _ParquetSink:
    """Flat records gathered column by column and written as Parquet row groups of PARQUET_ROW_GROUP rows."""

    def __init__(self, f: IO[bytes]) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError(
                f"--format parquet needs pyarrow, which is optional: pip install '{DISTRIBUTION}[parquet]'"
            ) from None
        self._pa = pa
        text, count = pa.string(), pa.int64()
        self._schema = pa.schema(
            [(c, count if c.endswith("_tokens") else text) for c in FLAT_COLUMNS],
        )
        self._writer = pq.ParquetWriter(f, self._schema, compression="zstd")
        self._columns: dict[str, list[Any]] = {c: [] for c in FLAT_COLUMNS}
        self._rows = 0

    def write(self, row: ExportRow) -> None:
        record = flat_record(row)
        for c, values in self._columns.items():
            values.append(record[c])
        self._rows += 1
        if self._rows >= PARQUET_ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(self._pa.table(self._columns, schema=self._schema))
            self._columns = {c: [] for c in FLAT_COLUMNS}
            self._rows = 0

    def close(self) -> None:
        """Write the last row group and the footer (a file with no rows still gets the schema)."""
        self._flush()
        self._writer.close()


_Sink = _LineSink | _ParquetSink
_NEWLINE = orjson.OPT_APPEND_NEWLINE


def _sink(fmt: str, f: IO[bytes], job_id: str) -> _Sink:
    if fmt == "batch":
        return _LineSink(f, lambda row: orjson.dumps(batch_line(job_id, row), option=_NEWLINE))
    if fmt == "jsonl-flat":
        return _LineSink(f, lambda row: orjson.dumps(flat_record(row), option=_NEWLINE))
    if fmt == "csv":
        encoder = _CsvEncoder()
        return _LineSink(f, encoder.row, encoder.header())
    return _ParquetSink(f)


async def export_job(
    store: Store, job_id: str, out: str | None, errors: str | None = None, fmt: str = "batch"
) -> ExportCounts:
    """Write a job's finished requests to `out` (stdout when None or "-") in `fmt` (one of FORMATS);
    failed and cancelled ones go to `errors` instead when it is given."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "parquet" and (out is None or out == "-" or errors == "-"):
        raise ConfigError("--format parquet writes files, not stdout: give -o FILE")
    counts = ExportCounts()
    with _atomic_writer(out) as f_out, _atomic_writer(errors) if errors else _null() as f_err:
        results = _sink(fmt, f_out, job_id)
        failures = _sink(fmt, f_err, job_id) if f_err is not None else None
        try:
            async with store.stream_export(job_id) as chunks:
                async for chunk in chunks:
                    for row in chunk:
                        if row.state in _UNFINISHED:
                            counts.unfinished += 1
                        elif failures is not None and row.state in _ERROR_STATES:
                            failures.write(row)
                            counts.errors += 1
                        else:
                            results.write(row)
                            counts.results += 1
        finally:
            # Parquet's footer goes out while the file is open; after a failure the atomic writer
            # discards the file anyway.
            results.close()
            if failures is not None:
                failures.close()
    return counts


@contextmanager
def _null() -> Iterator[None]:
    yield None
