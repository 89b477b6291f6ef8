"""Export: results streamed from the store, in input order, in one of three formats.

- `batch` (default), the OpenAI Batch output format: a line is `{"id", "custom_id",
  "response": {"status_code", "request_id", "body"} | null, "error": {"code", "message"} | null}`.
- `jsonl-flat`: one flat JSON object per line: FLAT_COLUMNS (the request's line, model, instructions and
  input text beside its answer's text, usage and error) and `metadata`, the line's metadata object.
- `csv`: the same columns with a header row, the metadata as one `metadata.<key>` column per key used in
  the job (RFC 4180 quoting, so text with commas, quotes and newlines reads back intact with `csv.DictReader`;
  a text that a spreadsheet would run as a formula, `=...`, `@...`, gets a leading `'`: `spreadsheet_text`).
- `parquet`: the same columns as csv, typed, in row groups (needs the optional `pyarrow`: `responses-runner[parquet]`).

The flat formats join each answer with its input so an evaluation can be scored from the export alone;
the request body is read in the same streamed query as the answer. `iter_results` gives the same rows to
Python code (`app.results`).

Files are written to a temporary name and renamed at the end, so a killed export never leaves half a file
where the user expects a whole one.

Over 400 lines on purpose: one streamed loop with a sink per format; the sinks share the column model and
the read, and as separate files they would be small modules importing each other.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, cast

import orjson

from runner import DISTRIBUTION
from runner.config import FORMATS
from runner.errors import ConfigError
from runner.files import atomic_writer, refuse_store_file, refused_write
from runner.heap import gc_spares_the_heap
from runner.reply import output_text
from runner.states import ACTIVE, RESULTS, RequestState
from runner.store import ExportRow, ReadyLines, Store
from runner.store.outputs import checks_between, has_checks
from runner.store.reuse import reused_line_numbers
from runner.term import printable
from runner.usage import UsageCounts

_ERROR_STATES = frozenset({RequestState.FAILED.value, RequestState.CANCELLED.value})
_CANCELLED = RequestState.CANCELLED.value
_FAILED = RequestState.FAILED.value
_UNFINISHED = frozenset(s.value for s in ACTIVE)
_RESULT_STATES = frozenset(s.value for s in RESULTS)
_BATCH_CANCELLED: Final = "batch_cancelled"  # a cancelled line's error code, as the Batch API spells it

PARQUET_ROW_GROUP = 50_000  # rows held before a row group is written: bounded memory, few groups
METADATA: Final = "metadata"  # the jsonl-flat field; csv and parquet spread it over `metadata.<key>` columns
FLAT_COLUMNS: Final = (
    "custom_id",
    "line",
    "model",
    "instructions",
    "input",
    "status",
    "output_text",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
    "error",
    "output_check",  # valid | invalid_json | schema_mismatch for lines that asked for JSON, else null
    "parsed",  # that answer's JSON value (as JSON text in csv and parquet), else null
    "reused",  # true for a line answered from the store at submit (`--reuse`): its usage counts are then 0
)
# A checked line's verdict and parsed JSON text (runner/store/outputs.py); None for lines not checked.
Check = tuple[str, str | None] | None


@dataclass
class ExportCounts:
    """How many lines went where, and warnings about the files written (`misnamed`)."""

    results: int = 0
    errors: int = 0
    unfinished: int = 0  # not exported yet: still queued or in progress
    warnings: list[str] = field(default_factory=list)


# What a file's name says it holds, and what each format writes: `-o results.csv` without `--format csv` got
# JSON lines, silently, which a spreadsheet shows split at their commas.
_NAMED_FOR: Final = {".csv": "csv", ".parquet": "parquet", ".jsonl": "JSON lines", ".ndjson": "JSON lines"}
_WRITES: Final = {"batch": "JSON lines", "jsonl-flat": "JSON lines", "csv": "csv", "parquet": "parquet"}
_FORMATS_FOR: Final = {"csv": "csv", "parquet": "parquet", "JSON lines": "batch or jsonl-flat"}


def misnamed(path: str | None, fmt: str) -> str | None:
    """A warning when `path`'s name says another format than `fmt` writes; None when they agree, or the name
    says nothing (`out.txt`, `-`). The file is written all the same: a name is the user's to choose."""
    if path is None or path == "-":
        return None
    named = _NAMED_FOR.get(Path(path).suffix.lower())
    written = _WRITES[fmt]
    if named is None or named == written:
        return None
    hint = f"--format {_FORMATS_FOR[named]} writes {named}"
    return f"{path} is named for {named}, but --format {fmt} wrote {written} into it ({hint})"


def batch_line(job_id: str, row: ExportRow) -> dict[str, Any]:
    """One request as an OpenAI Batch output line (the stored JSON bodies are embedded, not re-parsed)."""
    body: Any = orjson.Fragment(row.response_body) if row.response_body is not None else None
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    if row.http_status is not None and body is not None:
        response = {"status_code": row.http_status, "request_id": row.request_id, "body": body}
    state = row.state
    if state == _CANCELLED:
        error = {"code": _BATCH_CANCELLED, "message": row.error_message or "cancelled"}
    elif state == _FAILED and not (response is not None and (row.http_status or 0) >= 400):
        # An HTTP error keeps its details in response.body.error, as the Batch API does; failures with
        # no HTTP error (retries exhausted on timeouts, a background response that ended failed) use `error`.
        error = {"code": row.error_code or "failed", "message": row.error_message or ""}
    return {
        "id": f"{_batch_id_start(job_id)}{row.line_no}",
        "custom_id": row.custom_id,
        "response": response,
        "error": error,
    }


def _batch_id_start(job_id: str) -> str:
    """A batch line's id is this and the line number."""
    return f"batch_req_{job_id.removeprefix('job_')}_"


def _same_file(out: str | None, errors: str) -> bool:
    """Whether `out` and `errors` are one regular file (or one path not there yet); stdout and devices may be
    shared, as they are written in place."""
    if out is None or out == "-" or errors == "-":
        return False
    a, b = Path(out), Path(errors)
    try:
        if a.exists() and b.exists():
            return a.samefile(b) and a.is_file()
        return a.resolve() == b.resolve()
    except OSError:
        return False  # the write says what is wrong with the path


def _is_stdout(target: str | None) -> bool:
    return target is None or target == "-"


def _stream_id(target: str | None) -> tuple[int, int, bool] | None:
    """What a target writes to (device, inode, whether it is a regular file); None for a bad path."""
    try:
        st = os.fstat(sys.stdout.fileno()) if _is_stdout(target) else os.stat(target or "")
    except (OSError, ValueError):
        return None  # the write says what is wrong with the path
    return st.st_dev, st.st_ino, stat.S_ISREG(st.st_mode)


def _one_stream(out: str | None, errors: str | None) -> bool:
    """Whether -o and --errors name one stream written in place: `--errors -` with the results on stdout, or
    stdout twice by other names (/dev/stdout), or one pipe. Written as one, or a csv export put a second header
    in the middle of the table (and a second descriptor on stdout's file wrote over the first's lines)."""
    if errors is None:
        return False
    if _is_stdout(out) and _is_stdout(errors):
        return True
    first, second = _stream_id(out), _stream_id(errors)
    if first is None or first != second:
        return False
    # One regular file by two paths is refused before (`_same_file`); one of them stdout is one stream.
    return not first[2] or _is_stdout(out) or _is_stdout(errors)


# On a terminal, the control characters an answer holds would be obeyed (clear the screen, retitle the window,
# a C1 CSI): the README promises that text from a server is shown, never obeyed. Tab, line feed and carriage
# return stay (layout, and the csv record's end). Into a file or a pipe every byte stays as stored.
_TERMINAL_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\xc2[\x80-\x9f]")


def _json_escape(m: re.Match[bytes]) -> bytes:
    return f"\\u{ord(m.group().decode()):04x}".encode()  # the same JSON string: its own escape


def _text_escape(m: re.Match[bytes]) -> bytes:
    return printable(m.group().decode()).encode()  # `\x1b`, as every command shows such text


class _Terminal:
    """A terminal written to: each write (whole lines, so no character is split) with its controls escaped."""

    def __init__(self, raw: IO[bytes], fmt: str) -> None:
        self._raw = raw
        self._escape = _text_escape if fmt == "csv" else _json_escape

    def write(self, data: bytes) -> int:
        self._raw.write(_TERMINAL_CONTROL.sub(self._escape, data))
        return len(data)


@contextmanager
def _atomic_writer(path: str | None, fmt: str = "batch") -> Iterator[IO[bytes]]:
    if path is None or path == "-":
        out = sys.stdout.buffer
        yield cast(IO[bytes], _Terminal(out, fmt)) if out.isatty() else out
        out.flush()
        return
    with atomic_writer(Path(path)) as f:
        yield cast(IO[bytes], _Terminal(f, fmt)) if f.isatty() else f  # `-o /dev/tty`, `-o /dev/stdout`


# -- the input side: a request body made readable ------------------------------------------------------

# Content parts that are not text, shown by what they are.
_PART_PLACEHOLDERS: Final = {"input_image": "[image]", "input_file": "[file]", "input_audio": "[audio]"}


def _part_text(part: Any) -> str:
    if isinstance(part, str):
        return part
    if not isinstance(part, dict):
        return "[?]"
    kind = part.get("type")
    text = part.get("text")
    if isinstance(text, str):
        return text
    refusal = part.get("refusal")
    if isinstance(refusal, str):
        return refusal
    if kind == "input_file" and isinstance(part.get("filename"), str):
        return f"[file: {part['filename']}]"
    return _PART_PLACEHOLDERS.get(str(kind), f"[{kind}]" if isinstance(kind, str) else "[?]")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_part_text(p) for p in content)
    return "" if content is None else orjson.dumps(content).decode()


def flatten_input(value: Any) -> str | None:
    """A request's `input` as readable text: a string as is; a list of items as one line per item,
    `role: text` for messages, non-text parts as placeholders (`[image]`), other items as `[type]`."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        return orjson.dumps(value).decode()
    lines: list[str] = []
    for item in value:
        if isinstance(item, str):
            lines.append(item)
        elif isinstance(item, dict) and ("role" in item or item.get("type") == "message"):
            lines.append(f"{item.get('role', '?')}: {_content_text(item.get('content'))}")
        elif isinstance(item, dict):
            kind = item.get("type")
            lines.append(f"[{kind}]" if isinstance(kind, str) else "[?]")
        else:
            lines.append(orjson.dumps(item).decode())
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class RequestFields:
    """What the flat formats show of a request body."""

    model: str | None
    instructions: str | None
    input: str | None
    metadata: dict[str, str] | None
    body: dict[str, Any]


def _metadata(value: Any) -> dict[str, str] | None:
    if not isinstance(value, dict):
        return None
    if all(type(v) is str for v in value.values()):  # what submit lets through: no copy needed
        return value
    return {str(k): v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in value.items()}


def request_fields(body_text: str | None) -> RequestFields:
    """The model, instructions, flattened input and metadata of a stored request body."""
    try:
        body = orjson.loads(body_text) if body_text is not None else None
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return RequestFields(None, None, None, None, {})
    model = body.get("model")
    instructions = body.get("instructions")
    metadata = body.get("metadata")
    return RequestFields(
        model if isinstance(model, str) else None,
        instructions if isinstance(instructions, str) or instructions is None else orjson.dumps(instructions).decode(),
        flatten_input(body.get("input")),
        _metadata(metadata),
        body,
    )


# -- the answer side ----------------------------------------------------------------------------------------


def _response(row: ExportRow) -> dict[str, Any] | None:
    if row.response_body is None:
        return None
    try:
        body = orjson.loads(row.response_body)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


_NUL_ESCAPE: Final = "\\u0000"


def _output_text(row: ExportRow, response: dict[str, Any] | None = None) -> str | None:
    """The response's text for results (completed, incomplete); None otherwise.

    The writer stores `output_text` in every response body, so SQLite has usually read it already
    (`stored_output_text`); a body without it (written elsewhere) is parsed and its text rebuilt here.
    """
    if row.state not in _RESULT_STATES or row.response_body is None:
        return None
    # SQLite's json_extract ends a string at an escaped NUL (`\u0000`): such a body is parsed here instead,
    # or the flat exports would cut the answer short (a check on the raw text, cheap beside the parse it saves).
    if isinstance(row.stored_output_text, str) and _NUL_ESCAPE not in row.response_body:
        return row.stored_output_text
    if response is None:
        response = _response(row)
    return output_text(response) if response is not None else ""


def _error(row: ExportRow) -> str | None:
    """ "code: message" for failed and cancelled requests, None for the rest (as in the Batch format)."""
    if row.state not in _ERROR_STATES:
        return None
    # A cancelled line's code is the Batch format's (`batch_line`), whatever the store recorded (`cancelled`):
    # the flat exports said `cancelled: ...` where the Batch export of the same line said `batch_cancelled`.
    code = _BATCH_CANCELLED if row.state == _CANCELLED else row.error_code or "failed"
    return f"{code}: {row.error_message}" if row.error_message else code


def _flat_values(
    row: ExportRow, req: RequestFields, check: Check = None, reused: bool = False, *, embed: bool = False
) -> list[Any]:
    """A row's FLAT_COLUMNS values, in order (a list: csv and parquet need no dict per row).

    `embed` puts the parsed value in as JSON (jsonl-flat); otherwise it stays JSON text (csv, parquet).
    """
    parsed = None if check is None else check[1]
    return [
        row.custom_id,
        row.line_no,
        req.model,
        req.instructions,
        req.input,
        row.state,
        _output_text(row),
        row.input_tokens,
        row.cached_tokens,
        row.output_tokens,
        row.reasoning_tokens,
        row.total_tokens,
        _error(row),
        None if check is None else check[0],
        orjson.Fragment(parsed) if embed and parsed is not None else parsed,
        reused,
    ]


class Reused:
    """Which lines of a job were reused: a flag per line number (`store.reuse.reused_line_numbers`)."""

    def __init__(self, flags: bytearray | None = None) -> None:
        self._flags = flags or bytearray()

    def __call__(self, line_no: int) -> bool:
        return 0 <= line_no < len(self._flags) and self._flags[line_no] == 1


NONE_REUSED: Final = Reused()


def flat_record(row: ExportRow, check: Check = None, reused: Reused = NONE_REUSED) -> dict[str, Any]:
    """One request as a jsonl-flat record: FLAT_COLUMNS, then `metadata` (the line's object, or null).

    `output_text` is the stored response's text for results (completed, incomplete) and null otherwise;
    `error` is "code: message" for failed and cancelled requests and null for results, as in the Batch format.
    """
    req = request_fields(row.body)
    record = dict(zip(FLAT_COLUMNS, _flat_values(row, req, check, reused(row.line_no), embed=True), strict=True))
    record[METADATA] = req.metadata
    return record


def metadata_column(key: str) -> str:
    """The csv and parquet column of one metadata key."""
    return f"{METADATA}.{key}"


def _table_values(row: ExportRow, keys: Sequence[str], check: Check = None, reused: Reused = NONE_REUSED) -> list[Any]:
    """A row's values with its metadata spread over one column per key of the job (csv, parquet)."""
    req = request_fields(row.body)
    values = _flat_values(row, req, check, reused(row.line_no))
    metadata = req.metadata
    if keys:
        values += [metadata.get(k) for k in keys] if metadata else [None] * len(keys)
    return values


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One line of a job with its answer, for Python code (`app.results`).

    The input: `custom_id`, `line` (in the submitted file), `model`, `instructions`, `input` (flattened
    text), `metadata` and `request` (the body as sent). The answer: `status`, `output_text` (results only),
    `usage`, `error` ("code: message" for failed and cancelled lines) and `response` (the stored Response
    object, or the API's error body). Lines not finished yet have status queued or in_progress and no answer.
    """

    custom_id: str
    line: int
    model: str | None
    instructions: str | None
    input: str | None
    metadata: dict[str, str]
    request: dict[str, Any]
    status: str
    output_text: str | None
    usage: UsageCounts
    error: str | None
    response: dict[str, Any] | None
    reused: bool = False  # answered from the store at submit (`--reuse`); its usage is then 0


def result_row(row: ExportRow, reused: Reused = NONE_REUSED) -> ResultRow:
    """An exported row (read with its body) as a ResultRow."""
    req = request_fields(row.body)
    response = _response(row)
    return ResultRow(
        custom_id=row.custom_id,
        line=row.line_no,
        model=req.model,
        instructions=req.instructions,
        input=req.input,
        metadata=req.metadata or {},
        request=req.body,
        status=row.state,
        output_text=_output_text(row, response),
        usage=UsageCounts(
            row.input_tokens, row.cached_tokens, row.output_tokens, row.reasoning_tokens, row.total_tokens
        ),
        error=_error(row),
        response=response,
        reused=reused(row.line_no),
    )


async def iter_results(store: Store, job_id: str) -> AsyncGenerator[ResultRow, None]:
    """Every line of a job, finished or not, joined with its input, in input order, streamed."""
    reused = Reused(await reused_line_numbers(store, job_id))
    async with store.stream_export(job_id, with_body=True) as stream, aclosing(stream) as chunks:
        async for chunk in chunks:
            for row in chunk:
                yield result_row(row, reused)


class _LineSink:
    """One encoded line per row, straight to the file (JSON Lines, or CSV after its header)."""

    def __init__(self, f: IO[bytes], encode: Callable[[ExportRow, Check], bytes], header: bytes = b"") -> None:
        self._f = f
        self._encode = encode
        # Both files of a CSV export get the header, even when no row lands in one of them.
        f.write(header)

    def write(self, row: ExportRow, check: Check = None) -> None:
        self._f.write(self._encode(row, check))

    def close(self) -> None:
        """Nothing is held back: every line is written as it comes."""


# A field needs quotes when it holds the delimiter, the quote or a line break: csv's QUOTE_MINIMAL rule.
_CSV_SPECIAL = re.compile(r'[,"\r\n]')
# A cell that starts with one of these is run as a formula by Excel, LibreOffice and Google Sheets (OWASP's
# list): an answer or a prompt `=HYPERLINK(...)`, `@SUM(...)` or `-2+3` would run on the user's machine when
# they open the results. Such a field gets a leading `'`, which makes the cell text (OWASP's advice).
# A set, not a string: the first character of an empty cell, "", is in every string.
_FORMULA_START: Final = frozenset("=+-@\t\r")
# ...except a plain number (`-42`, `+1.5e3`): a spreadsheet reads it as that number, which runs nothing.
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def spreadsheet_text(text: str) -> str:
    """`text` as a csv field a spreadsheet shows and never evaluates: a leading `'` before a formula start."""
    if text[:1] in _FORMULA_START and _PLAIN_NUMBER.fullmatch(text) is None:
        return "'" + text
    return text


def _csv_field(value: Any) -> str:
    if value is None:
        return ""
    if value is True or value is False:  # the `reused` column, spelled as in the JSON formats
        return "true" if value else "false"
    if not isinstance(value, str):  # only text can start a formula: the number columns are never negative
        text = str(value)
    elif value[:1] in _FORMULA_START:  # looked at here, as this runs for every text cell: a call cost ~10 %
        text = spreadsheet_text(value)
    else:
        text = value
    if _CSV_SPECIAL.search(text) is None:
        return text
    return '"' + text.replace('"', '""') + '"'


def csv_line(values: Sequence[Any]) -> bytes:
    """One RFC 4180 record, byte for byte what `csv.writer` (the excel dialect) writes for these values once
    a text that a spreadsheet would run as a formula has its leading `'` (`spreadsheet_text`).

    The csv module appends a field character by character (~14 µs for a row with a prompt and an answer);
    this does the same with C string methods, in a third of the time.
    """
    return (",".join(map(_csv_field, values)) + "\r\n").encode()


class _CsvEncoder:
    """CSV rows as bytes, one at a time, so the output stays a plain binary stream."""

    def __init__(self, keys: Sequence[str], reused: Reused = NONE_REUSED) -> None:
        self._keys = keys
        self._reused = reused
        self._header = [*FLAT_COLUMNS, *map(metadata_column, keys)]

    def header(self) -> bytes:
        return csv_line(self._header)

    def row(self, row: ExportRow, check: Check = None) -> bytes:
        return csv_line(_table_values(row, self._keys, check, self._reused))  # None becomes an empty field


class _ParquetSink:
    """Flat records gathered column by column and written as Parquet row groups of PARQUET_ROW_GROUP rows."""

    def __init__(self, f: IO[bytes], keys: Sequence[str], reused: Reused = NONE_REUSED) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError(
                f"--format parquet needs pyarrow, which is optional: pip install '{DISTRIBUTION}[parquet]'"
            ) from None
        self._pa = pa
        self._keys = keys
        self._reused = reused
        text, count = pa.string(), pa.int64()
        self._names = [*FLAT_COLUMNS, *map(metadata_column, keys)]
        self._schema = pa.schema(
            [
                (c, count if c.endswith("_tokens") or c == "line" else pa.bool_() if c == "reused" else text)
                for c in self._names
            ],
        )
        self._writer = pq.ParquetWriter(f, self._schema, compression="zstd")
        self._columns: dict[str, list[Any]] = {c: [] for c in self._names}
        self._rows = 0

    def write(self, row: ExportRow, check: Check = None) -> None:
        values_of = _table_values(row, self._keys, check, self._reused)
        for values, value in zip(self._columns.values(), values_of, strict=True):
            values.append(value)
        self._rows += 1
        if self._rows >= PARQUET_ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(self._pa.table(self._columns, schema=self._schema))
            self._columns = {c: [] for c in self._names}
            self._rows = 0

    def close(self) -> None:
        """Write the last row group and the footer (a file with no rows still gets the schema)."""
        self._flush()
        self._writer.close()


_Sink = _LineSink | _ParquetSink
_NEWLINE = orjson.OPT_APPEND_NEWLINE


def _sink(fmt: str, f: IO[bytes], job_id: str, keys: Sequence[str], reused: Reused = NONE_REUSED) -> _Sink:
    if fmt == "batch":
        return _LineSink(f, lambda row, _check: orjson.dumps(batch_line(job_id, row), option=_NEWLINE))
    if fmt == "jsonl-flat":
        return _LineSink(f, lambda row, check: orjson.dumps(flat_record(row, check, reused), option=_NEWLINE))
    if fmt == "csv":
        encoder = _CsvEncoder(keys, reused)
        return _LineSink(f, encoder.row, encoder.header())
    return _ParquetSink(f, keys, reused)


async def export_job(
    store: Store, job_id: str, out: str | None, errors: str | None = None, fmt: str = "batch"
) -> ExportCounts:
    """Write a job's finished requests to `out` (stdout when None or "-") in `fmt` (one of FORMATS);
    failed and cancelled ones go to `errors` instead when it is given."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "parquet" and (out is None or out == "-" or errors == "-"):
        raise ConfigError("--format parquet writes files, not stdout: give -o FILE")
    for flag, target in (("-o", out), ("--errors", errors)):
        if target == "":
            # `--errors "$ERRORS"` with the variable unset: the failed lines went into the results file.
            raise ConfigError(f"{flag} is empty: give a file path (or - for standard output)")
        if target is not None and target != "-":
            refuse_store_file(Path(target), store.path)
    if errors is not None and _same_file(out, errors):
        # Each is written to a temporary file renamed over the target: the second rename would drop the first.
        raise ConfigError(f"-o and --errors name the same file ({errors}): give --errors another path")
    try:
        with gc_spares_the_heap():
            return await _export(store, job_id, out, errors, fmt)
    except OSError as e:
        # Which of the two files the disk refused is not known here; both are named.
        targets = [out] if errors is None else [out, errors]
        refused = refused_write(e, " or ".join(dict.fromkeys("stdout" if _is_stdout(t) else str(t) for t in targets)))
        if refused is None:
            raise
        raise refused from None


async def _export(store: Store, job_id: str, out: str | None, errors: str | None, fmt: str) -> ExportCounts:
    counts = ExportCounts()
    counts.warnings = [w for w in (misnamed(out, fmt), misnamed(errors, fmt)) if w is not None]
    flat = fmt != "batch"
    # csv and parquet name their columns before the first row: one column per metadata key of the job.
    keys = await store.metadata_keys(job_id) if fmt in ("csv", "parquet") else []
    # Checks live in their own table: looked up per chunk, and only for a job that has any.
    checked = flat and await has_checks(store, job_id)
    reused = Reused(await reused_line_numbers(store, job_id)) if flat else NONE_REUSED
    # `--errors -` with the results on stdout: one sink, so a csv has one header and the rows stay in order.
    shared = _one_stream(out, errors)
    with (
        _atomic_writer(out, fmt) as f_out,
        _atomic_writer(errors, fmt) if errors and not shared else _null() as f_err,
    ):
        results = _sink(fmt, f_out, job_id, keys, reused)
        failures = _sink(fmt, f_err, job_id, keys, reused) if f_err is not None else results if shared else None
        try:
            if fmt == "batch":
                await _batch(store, job_id, f_out, results, failures, counts)
                return counts
            async with store.stream_export(job_id, with_body=flat) as stream, aclosing(stream) as chunks:
                async for chunk in chunks:
                    checks = {}
                    if checked and chunk:
                        checks = await checks_between(store, job_id, chunk[0].line_no, chunk[-1].line_no)
                    for row in chunk:
                        _route(row, checks.get(row.line_no), results, failures, counts)
        finally:
            # Parquet's footer goes out while the file is open; after a failure the atomic writer
            # discards the file anyway.
            results.close()
            if failures is not None and failures is not results:
                failures.close()
    return counts


def _route(row: ExportRow, check: Check, results: _Sink, failures: _Sink | None, counts: ExportCounts) -> None:
    """One row to the results, to the errors file, or only counted (unfinished)."""
    if row.state in _UNFINISHED:
        counts.unfinished += 1
    elif failures is not None and row.state in _ERROR_STATES:
        failures.write(row, check)
        counts.errors += 1
    else:
        results.write(row, check)
        counts.results += 1


async def _batch(
    store: Store, job_id: str, f_out: IO[bytes], results: _Sink, failures: _Sink | None, counts: ExportCounts
) -> None:
    """The batch format: lines the store encoded itself (completed, with an answer: results) go out as they
    are; the other rows are encoded here (`batch_line`)."""
    async with store.stream_batch_export(job_id, _batch_id_start(job_id)) as stream, aclosing(stream) as chunks:
        async for chunk in chunks:
            for item in chunk:
                if isinstance(item, ReadyLines):
                    f_out.write(item.data)
                    counts.results += item.lines
                else:
                    _route(item, None, results, failures, counts)


@contextmanager
def _null() -> Iterator[None]:
    yield None
