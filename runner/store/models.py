"""Plain values passed in and out of the store."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from runner.errors import StoreError
from runner.states import ACTIVE, JobStatus, RequestState, count
from runner.usage import UsageCounts


class NewRequest(NamedTuple):
    """One validated line, ready to insert (a tuple: a submit makes millions, and a frozen dataclass costs 20x)."""

    line_no: int
    custom_id: str
    body: str  # JSON text
    conversation: str | None = None
    body_hash: str | None = None  # runner/reuse.py's hash of the normalised body (None: never reused)
    sched: int | None = None  # claim order: the line_no of its prompt-cache group's first line (None: line_no)


@dataclass(slots=True)
class Claimed:
    """A request this process holds a lease on."""

    id: int
    job_id: str
    line_no: int
    custom_id: str
    body: str
    attempts: int  # including the one now starting
    response_id: str | None = None
    background: bool = False


async def claim_by_job(
    job_ids: Sequence[str], n: int, fetch: Callable[[str, int], Awaitable[Iterable[Sequence[Any]]]]
) -> list[Claimed]:
    """Up to `n` claims, job by job in the order given: `fetch(job_id, k)` runs the claim block for one job.
    One statement per job walks that job's (job_id, sched, id) index in order; over several jobs at once
    the database would sort every queued row of them at every claim."""
    claimed: list[Claimed] = []
    for job_id in job_ids:
        if len(claimed) >= n:
            break
        claimed += in_claim_order(await fetch(job_id, n - len(claimed)))
    return claimed


def in_claim_order(rows: Iterable[Sequence[Any]]) -> list[Claimed]:
    """One job's claimed rows (the hot claim block's RETURNING: Claimed's first six fields, then `sched`), in
    the order to send them: by (sched, id), as they were picked. RETURNING lists them in any order."""
    return [Claimed(*r[:6]) for r in sorted(rows, key=lambda r: (r[6], r[0]))]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one claimed request ends this attempt; the writer turns it into one guarded UPDATE."""

    request_id: int
    to: RequestState
    http_status: int | None = None
    api_request_id: str | None = None
    response_body: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    usage: UsageCounts = field(default_factory=UsageCounts)
    next_attempt_at: float = 0.0  # for a requeue
    refund_attempt: bool = False  # the attempt did not reach the API's judgement (billing stop)
    clear_response_id: bool = False  # a failed background response retried as a new attempt
    rate_limited: bool = False
    sent_at: float | None = None  # when the POST of this attempt went out (claims happen earlier)


@dataclass(frozen=True, slots=True)
class ResponseIdRecord:
    """A background response's id, to be committed before anything else happens to it."""

    request_id: int
    response_id: str
    api_request_id: str | None
    sent_at: float | None


# A background line answered with a response id another request of the store holds (a caching proxy's reply):
# the line is failed for good, as sending it again would make (and bill) another response that may come back
# with the same id.
RESPONSE_ID_TAKEN = "response_id_taken"


def response_id_taken(response_id: str, custom_id: str | None, job_id: str | None) -> str:
    """The message of a line whose response id another request holds (`holder`: that request's line)."""
    holder = f"line {custom_id!r} of job {job_id}" if custom_id is not None else "another request"
    return (
        f"the server answered with response id {response_id!r}, which {holder} already holds (a caching proxy's"
        " reply?); a response id names one response, so this line was not given it, and is not sent again"
    )[:4096]


class Refused(list[int]):
    """What a write-back refused: the request ids no longer leased by the writer (the list itself), and,
    apart, `taken`: the requests failed instead of given a response id another request holds."""

    __slots__ = ("taken",)

    def __init__(self, refused: Iterable[int] = (), taken: Iterable[int] = ()) -> None:
        super().__init__(refused)
        self.taken = list(taken)


@dataclass(frozen=True, slots=True)
class JobRow:
    """A job as the store knows it."""

    id: str
    name: str
    source: str
    background: bool
    total: int
    created_at: float
    started_at: float | None
    cancelled_at: float | None


@dataclass(frozen=True, slots=True)
class JobStats:
    """Counts, attempts and usage of one job."""

    job: JobRow
    counts: dict[str, int]
    attempts: int
    rate_limited: int
    usage: UsageCounts
    first_started: float | None
    last_finished: float | None
    in_flight_by_owner: dict[str, int]
    stale_leases: int

    @property
    def finished(self) -> int:
        """Requests in a final state."""
        return sum(v for k, v in self.counts.items() if k not in ACTIVE)

    @property
    def status(self) -> JobStatus:
        """The job's status, from its counts."""
        if count(self.counts, *ACTIVE) == 0:
            return JobStatus.CANCELLED if self.job.cancelled_at is not None else JobStatus.COMPLETED
        return JobStatus.QUEUED if self.attempts == 0 else JobStatus.IN_PROGRESS

    def elapsed(self, now: float | None = None) -> float | None:
        """A finished job runs from its first claim to its last result; a running one up to now."""
        if self.first_started is None:
            return None
        done = self.status in (JobStatus.COMPLETED, JobStatus.CANCELLED)
        end = self.last_finished if done and self.last_finished is not None else (time.time() if now is None else now)
        return max(end - self.first_started, 0.0)


class ExportRow(NamedTuple):
    """What export needs of one request (a tuple: an export makes millions, and a frozen dataclass costs more)."""

    line_no: int
    custom_id: str
    state: str
    http_status: int | None
    request_id: str | None
    response_body: str | None
    error_code: str | None
    error_message: str | None
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    body: str | None = None  # the request body as sent (JSON), when the export asked for it
    # the stored response's `output_text` when it is there, read by SQLite (flat exports only)
    stored_output_text: str | None = None


class ReadyLines(NamedTuple):
    """Finished lines of the batch export format, already encoded by the store (see sqlite/export.py)."""

    data: bytes  # `lines` lines, each ending in a newline
    lines: int


def ready_runs(lines: Iterable[bytes | None], others: Iterator[ExportRow]) -> list[ReadyLines | ExportRow]:
    """A chunk of the batch export in line order: each run of lines the store encoded (not None) joined into
    one ReadyLines, and for each None the next of `others` (the rows export.py encodes itself)."""
    out: list[ReadyLines | ExportRow] = []
    run: list[bytes] = []
    for line in lines:
        if line is not None:
            run.append(line)
            continue
        if run:
            out.append(ReadyLines(b"".join(run), len(run)))
            run = []
        out.append(next(others))
    if run:
        out.append(ReadyLines(b"".join(run), len(run)))
    return out


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One attempt of a request, as recorded with its outcome (`outcome` "queued" means it was retried)."""

    attempt: int
    outcome: str
    sent_at: float | None
    recorded_at: float
    http_status: int | None
    api_request_id: str | None
    response_id: str | None
    error_code: str | None
    error_message: str | None


@dataclass(frozen=True, slots=True)
class RequestDetail:
    """Everything the store knows about one request: what was sent, every attempt, and how it ended."""

    job_id: str
    line_no: int
    custom_id: str
    body: str
    state: str
    attempts: int  # the attempt count (a `runner retry` starts it again from 0)
    http_status: int | None
    request_id: str | None
    response_id: str | None
    response_body: str | None
    error_code: str | None
    error_message: str | None
    usage: UsageCounts
    created_at: float
    submitted_at: float | None
    finished_at: float | None
    attempt_rows: list[AttemptRow]
    # A line answered from the store (`submit --reuse`): True, and the source's (job id, custom_id) while that
    # job still exists (None once it was deleted).
    reused: bool = False
    reused_source: tuple[str, str] | None = None


class DuplicateCustomId(StoreError):
    """A custom_id is already used in this job."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id}: a custom_id in this chunk is already used")
