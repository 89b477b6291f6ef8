"""A submit's chunk as PostgreSQL's binary COPY data, made by the process that parses the file.

The parsing child (runner/ingest.py) pickled each chunk's rows to the submitting process, which unpickled them
and had asyncpg encode them again, row by row and field by field, while the server waited for the chunk. The
child writes the COPY data itself instead (`encode`), and the submitting process hands the bytes on as they are
(postgres/__init__.py `insert_copy`). For 300,000 lines (a loaded VM): encoding took the child 0.52 CPU-s where
pickling took 0.74, and the submitting process no longer spends 0.45 unpickling and about as much encoding.
`decode` reads them back for the rare chunk that must be looked at row by row (a custom_id used twice).

The columns are postgres/__init__.py's COPY_COLUMNS, with the types the migrations give them: a value of another
width is refused by the server ("incorrect binary data format"), never stored wrong
(tests/integration/test_ingest.py submits through this on PostgreSQL).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from runner.states import RequestState
from runner.store.models import NewRequest

__all__ = ["COPY_COLUMNS", "HEADER", "TRAILER", "decode", "encode", "rows_of"]

# A NewRequest's own fields first, in its order, then those every row of a submit starts with.
COPY_COLUMNS = (
    *NewRequest._fields,
    "job_id",
    "created_at",
    "state",
    "attempts",
    "next_attempt_at",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
    "rate_limited",
)
HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)  # the signature, no flags, no extension
TRAILER = struct.pack(">h", -1)
_NULL = struct.pack(">i", -1)
# Each row: the field count, then line_no (int4) and the length of custom_id.
_START = struct.Struct(">hiii")
_LEN = struct.Struct(">i")
_INT4 = struct.Struct(">ii")  # a length of 4 and the int4


def _shared(job_id: str, now: float) -> bytes:
    """The fields after sched, the same in every row of the job's submit."""
    job = job_id.encode()
    state = RequestState.QUEUED.value.encode()
    return b"".join(
        (
            _LEN.pack(len(job)),
            job,
            struct.pack(">id", 8, now),  # created_at, float8
            _LEN.pack(len(state)),
            state,
            struct.pack(">ii", 4, 0),  # attempts
            struct.pack(">id", 8, 0.0),  # next_attempt_at
            struct.pack(">iq", 8, 0) * 5,  # the five token counts, int8
            struct.pack(">ii", 4, 0),  # rate_limited
        )
    )


def encode(rows: Sequence[NewRequest], job_id: str, now: float) -> bytes:
    """The rows as one binary COPY (header and trailer included) into COPY_COLUMNS of `requests`."""
    shared = _shared(job_id, now)
    start, length, int4, null = _START.pack, _LEN.pack, _INT4.pack, _NULL
    fields = len(COPY_COLUMNS)
    out = bytearray(HEADER)
    for line_no, custom_id, body, conversation, body_hash, sched in rows:
        cid = custom_id.encode()
        out += start(fields, 4, line_no, len(cid))
        out += cid
        data = body.encode()
        out += length(len(data))
        out += data
        if conversation is None:
            out += null
        else:
            data = conversation.encode()
            out += length(len(data))
            out += data
        if body_hash is None:
            out += null
        else:
            data = body_hash.encode()
            out += length(len(data))
            out += data
        # sched is None only on the rows of invalid lines (there for their custom_id; the job is dropped).
        out += int4(4, line_no if sched is None else sched)
        out += shared
    out += TRAILER
    return bytes(out)


def rows_of(data: bytes) -> memoryview:
    """`encode`'s rows alone, without its header and trailer: a part of one COPY that streams many chunks."""
    return memoryview(data)[len(HEADER) : len(data) - len(TRAILER)]


def decode(data: bytes) -> list[NewRequest]:
    """`encode`'s rows back (the fields a NewRequest has), in their order."""
    rows: list[NewRequest] = []
    pos = len(HEADER)
    wanted = len(NewRequest._fields)
    while True:
        (count,) = struct.unpack_from(">h", data, pos)
        pos += 2
        if count == -1:
            return rows
        values: list[bytes | None] = []
        for _ in range(count):
            (size,) = _LEN.unpack_from(data, pos)
            pos += 4
            if size == -1:
                values.append(None)
                continue
            values.append(data[pos : pos + size])
            pos += size
        line_no, custom_id, body, conversation, body_hash, sched = values[:wanted]
        assert line_no is not None and custom_id is not None and body is not None and sched is not None
        rows.append(
            NewRequest(
                _LEN.unpack(line_no)[0],
                custom_id.decode(),
                body.decode(),
                None if conversation is None else conversation.decode(),
                None if body_hash is None else body_hash.decode(),
                _LEN.unpack(sched)[0],
            )
        )
