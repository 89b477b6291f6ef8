"""The batch lane: a job's queued requests sent through the OpenAI Batch API, merged back by custom_id.

One pass packs the queued requests into input files (at most `max_lines` lines and BATCH_MAX_BYTES each,
one model per file), uploads each (`POST /files`, purpose batch) and creates its batch (`POST /batches`,
endpoint /v1/responses, window 24h, metadata naming the job and the chunk). Then it polls the open batches,
backing off, and merges each finished one: every line of its output and error files becomes the same
`Outcome` the sync lane would record (`worker.outcomes`), written through the same guarded write-back.
Requests its files did not settle (expired, cancelled, missing) go back to the queue with their attempt
counted, and the loop packs them again.

Crash safety is the store's: the chunk's requests, the file id and the batch id are each committed
(runner/store/batches.py) before the next step. A restart re-attaches to what is committed, and for a
step whose reply may have been lost (killed after the upload or the create was sent) it first looks for
what the API already holds (`GET /files` by file name, `GET /batches` by metadata) before doing it again.
Merging twice is harmless: a request already merged is no longer leased by its batch, so its write is
refused by the same guard that protects the sync lane.

Over 400 lines on purpose: the steps of one batch (pack, upload, create, poll, merge) share their retry,
stop and crash-safety rules, which are easier to check in one place than across files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar
from urllib.parse import quote

import anyio
import httpx
import orjson

from runner.budget import Budget
from runner.client import ApiClient, ApiReply, classify
from runner.config import BATCH_MAX_BYTES, INITIAL_RETRY_DELAY, Lane
from runner.errors import (
    ApiError,
    BillingError,
    DoomedJobError,
    PermanentApiError,
    TransientApiError,
    UnreachableError,
)
from runner.owners import new_owner, owner_is_dead
from runner.reply import MAX_CODE_CHARS, MAX_MESSAGE_CHARS, read_error_text, read_id, read_request_id
from runner.retry import exponential_backoff, should_retry
from runner.states import ACTIVE, RequestState
from runner.store import Store
from runner.store.batches import (
    CREATED,
    MERGED,
    PACKED,
    UPLOADED,
    BatchRow,
    Member,
    QueuePosition,
    batch_user,
    chunk_lines,
    clear_lane,
    file_user,
    member_bodies,
    members,
    next_due,
    open_batches,
    owner_of,
    pack,
    queued_in_conversations,
    queued_page,
    set_batch,
    take_over,
    unpack,
)
from runner.store.models import Claimed, Outcome
from runner.worker.outcomes import from_error, from_response
from runner.worker.poller import MAX_ID_MISMATCHES
from runner.worker.types import RunResult, Snapshot, StopReason, count_outcome
from runner.worker.writeback import WriteBack

log = logging.getLogger(__name__)
T = TypeVar("T")

ENDPOINT = "/v1/responses"
WINDOW = "24h"
META_JOB, META_CHUNK = "runner_job", "runner_chunk"
FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
# What the store writes on a request of a cancelled job that comes back to the queue (store/sqlite/hot.sql).
CANCELLED_CODE, CANCELLED_WHY = "cancelled", "the job was cancelled"
UNDONE_CODES = frozenset({"batch_expired", "batch_cancelled"})  # a row the batch never ran: worth another try
LIMIT_CODES = frozenset({"token_limit_exceeded"})  # a batch refused for a queue limit: wait, then try again
PAGE = 5_000  # queued requests read per query while packing
LIST_LIMIT = 100  # GET /batches page size (the API's maximum)
POLL_FIRST, POLL_GROWTH, POLL_MAX = 0.5, 1.5, 30.0
LIMIT_WAIT_FIRST, LIMIT_WAIT_MAX = 5.0, 600.0
STEP_TRIES = 10  # transient failures in a row of one call (upload, create, poll) before the run stops
MERGE_WINDOW = 1_000  # outcomes handed to the write-back before waiting for them (bounds memory)
LOOKBACK = 300.0  # seconds before a chunk was packed that its file may be listed as uploaded (clock skew)
# The same for its batch, wider: a look that ends too soon creates the batch (billed) again, so a clock here or
# at the API a day wrong must not end it; an upload looked for too briefly is only uploaded again.
BATCH_LOOKBACK = 86_400.0
ABANDONED_AFTER = 3_600.0  # a chunk half-submitted by a run on another host, untouched this long, is taken over
MAX_LIST_PAGES = 1_000  # pages of a GET /files or /batches list read while looking for a lost upload or create
ID_MISMATCH = "batch_id_mismatch"  # the code of the requests of a batch whose polls kept naming another batch
ID_INVALID = "batch_id_invalid"  # the code of the requests of a batch created with no id that can be polled


class _Refused(Exception):
    """The API refused an upload or a create outright (4xx): this chunk cannot go as it is."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


class _NoApi(Exception):
    """The server has no Files or Batch API at this base URL (`_no_such_api`): no chunk can go."""

    def __init__(self, error: DoomedJobError) -> None:
        super().__init__(error.message)
        self.error = error


class _EndlessList(Exception):
    """A GET /files or /batches list that does not end: its cursor came back, or it went on past MAX_LIST_PAGES."""


class _NoId(Exception):
    """An upload or create answered 2xx without an id the runner can use (missing, too long, `.` or `..`, or
    already another batch's)."""

    def __init__(self, what: str, value: Any, taken: str | None = None) -> None:
        shown = read_error_text(value, 60)
        if taken is not None:  # a usable id, but already another's
            super().__init__(f"{what}: the API answered with {shown!r}, already {taken}")
            return
        super().__init__(
            f"{what}: the API answered without a usable id ({shown!r})"
            if shown
            else f"{what}: the API answered without an id"
        )


class _Stopped(Exception):
    """The run must stop: a signal, a billing error or an API that keeps failing (everything is committed)."""

    def __init__(self, reason: StopReason, error: ApiError | None = None) -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.error = error


def batch_line(custom_id: str, body: str) -> bytes:
    """One input file line for a request whose body is already JSON text."""
    return b'{"custom_id":%b,"method":"POST","url":"%b","body":%b}' % (
        orjson.dumps(custom_id),
        ENDPOINT.encode(),
        body.encode(),
    )


def path_id(value: Any) -> str | None:
    """An id from the API that goes into a URL path (`batches/{id}`, `files/{id}/content`): as `read_id`, but
    never `.` or `..`, which a URL resolves as a step, however quoted (`batches/..` is GET /v1/)."""
    made = read_id(value)
    return None if made in (".", "..") else made


def filename_of(row: BatchRow) -> str:
    """The upload's file name: unique per store and chunk, so a lost upload can be found again by it."""
    return f"runner-{row.job_id}-{row.id}.jsonl"


def _model_of(body: str) -> str:
    parsed: Any = orjson.loads(body)
    model = parsed.get("model") if isinstance(parsed, dict) else None
    return model if isinstance(model, str) else ""


def outcome_of_line(c: Claimed, line: Any, *, max_attempts: int) -> Outcome | None:
    """The outcome of one output or error file line, as the sync lane would record the same reply.

    None for a line that cannot be read (its request is then requeued with the batch's leftovers).
    """
    if not isinstance(line, dict):
        return None
    resp, err = line.get("response"), line.get("error")
    code_ = resp.get("status_code") if isinstance(resp, dict) else None
    # An HTTP status, or the line is unreadable: `true`, -1 or 2^63 were stored as the row's http_status (an
    # integer column PostgreSQL holds in 32 bits), and a 2^63 was treated as a 5xx and sent again.
    if isinstance(resp, dict) and isinstance(code_, int) and not isinstance(code_, bool) and 100 <= code_ <= 599:
        status: int = code_
        body = resp.get("body")
        rid = read_request_id(resp.get("request_id") if isinstance(resp.get("request_id"), str) else None)
        if 200 <= status < 300 and isinstance(body, dict):
            return from_response(c, body, http_status=status, request_id=rid, max_attempts=max_attempts)
        headers = {"x-request-id": rid} if rid else {}
        try:
            classify(httpx.Response(status, content=_error_body(body), headers=headers))
        except (BillingError, DoomedJobError) as e:
            # Inside a batch these judge one line, not the run: the line fails, its reason kept.
            e2 = PermanentApiError(e.message, status=e.status, code=e.code, request_id=e.request_id, body=e.body)
            return from_error(c, e2, max_attempts=max_attempts)
        except ApiError as e:
            return from_error(c, e, max_attempts=max_attempts)
        return None
    if isinstance(err, dict):
        code = read_error_text(err.get("code"), MAX_CODE_CHARS) or "batch_error"
        message = read_error_text(err.get("message"), MAX_MESSAGE_CHARS) or "the batch did not run this request"
        if code in UNDONE_CODES:
            # Never run: back to the queue with its attempt counted, for a later run of any lane.
            return Outcome(c.id, RequestState.QUEUED, error_code=code, error_message=message)
        return from_error(c, TransientApiError(message, code=code), max_attempts=max_attempts)
    return None


def _error_body(body: Any) -> bytes:
    """An error line's body as the bytes `classify` reads. A body nested deeper than orjson writes (254 levels)
    raised TypeError out of the merge, a traceback on every run: it keeps its error's code and message only."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        err = body.get("error") if isinstance(body, dict) else None
        err = err if isinstance(err, dict) else {}
        shallow = {k: read_error_text(err.get(k), MAX_MESSAGE_CHARS) for k in ("code", "message", "type")}
        return orjson.dumps({"error": shallow})


class BatchLane:
    """Runs jobs through the Batch API until every request is final, or re-attaches to their open batches
    only (`pack=False`: another lane runs the queue, this one collects what earlier batch runs left open)."""

    def __init__(
        self,
        store: Store,
        client: ApiClient,
        job_ids: Sequence[str],
        *,
        max_lines: int,
        max_attempts: int,
        max_bytes: int = BATCH_MAX_BYTES,
        detach: bool = False,
        pack: bool = True,
        on_progress: Callable[[Snapshot], None] | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.job_ids = list(job_ids)
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.max_attempts = max_attempts
        self.detach = detach
        self.pack = pack
        self.snap = Snapshot()
        self.owner = new_owner()
        self._on_progress = on_progress
        self._stopping = anyio.Event()
        self._scope: anyio.CancelScope | None = None
        self._made: set[int] = set()  # batch rows packed by this process: no earlier upload to look for
        self._hold_until = 0.0  # a queue limit refused a batch: no new batch before this time
        self._limit_hits = 0
        self._no_more_packing = False  # a batch failed validation: packing the same rows again would fail too
        # The API has answered something in this run. Until it has, a refused connection is most likely a
        # wrong base URL or a dead server: tried again at short intervals, so the run stops within seconds
        # (exit 5), as the sync lane does, instead of backing off for two minutes.
        self._replied = False
        # Requests whose batch expired or was cancelled: queued again for a later run, not repacked by this one
        # (an expired batch has had its 24 hours; a cancelled one was meant to stop).
        self._undone: set[int] = set()
        self._next_poll: dict[int, float] = {}
        self._mismatches: dict[int, int] = {}  # batch row -> polls in a row answered with another batch
        self._poll_wait: dict[int, float] = {}
        self.problems: list[str] = []
        self.status_line = ""
        # --max-cost: a request is packed only if it fits, its estimate at the Batch rate counted until its
        # batch is merged (runner/budget.py). A batch is paid whole, so the budget is kept when packing. Once a
        # request did not fit, this run packs no more: estimates run above real costs (output bounded by
        # max_output_tokens), so packing again after each merge would send ever smaller batches, each of
        # which may take hours; the run stops at the budget once its batches are merged.
        self.budget = budget
        self._budget_blocked = False

    # -- control ----------------------------------------------------------------------------------

    def stop(self, *, grace: float | None = None) -> None:
        """Stop after the step in progress (each step commits before the next starts)."""
        self._stopping.set()
        self.snap.stopping = True

    def abort(self) -> None:
        """Stop now: whatever was sent and not committed is found again by the next run."""
        self._stopping.set()
        if self._scope is not None:
            self._scope.cancel()

    async def _sleep(self, seconds: float) -> None:
        with anyio.move_on_after(max(seconds, 0.0)):
            await self._stopping.wait()
        if self._stopping.is_set():
            raise _Stopped(StopReason.INTERRUPTED)

    # -- the run ----------------------------------------------------------------------------------

    async def execute(self) -> RunResult:
        """Run to the end (or to detaching); every step is committed as it happens."""
        counts, _ = await self.store.progress(self.job_ids)
        self.snap.total = sum(counts.values())
        self.snap.done = self.snap.done_before = sum(v for k, v in counts.items() if k not in ACTIVE)
        await self.store.mark_started(self.job_ids)
        if self.budget is not None:
            # Batches an earlier run left open are paid when they end: their estimates count as in flight.
            factor = self.budget.prices.lane_factor(Lane.BATCH.value)
            for row in await open_batches(self.store, self.job_ids):
                for request_id, body in await member_bodies(self.store, row.id):
                    self.budget.hold(request_id, body, factor)
        reason, error = StopReason.DONE, None
        detached = False
        try:
            async with anyio.create_task_group() as tg:
                if self._on_progress is not None:
                    tg.start_soon(self._report)
                try:
                    with anyio.CancelScope() as self._scope:
                        detached = await self._loop()
                    if self._scope.cancelled_caught:
                        reason = StopReason.INTERRUPTED
                except _Stopped as e:
                    reason, error = e.reason, e.error
                tg.cancel_scope.cancel()
        finally:
            if self._on_progress is not None:
                self._on_progress(self.snap)
        still_open = len(await open_batches(self.store, self.job_ids))
        return RunResult(
            reason,
            billing_error=error if isinstance(error, BillingError) else None,
            snapshot=self.snap,
            doomed_error=error if isinstance(error, DoomedJobError) else None,
            detached=detached,
            batches_open=still_open,
            problems=list(self.problems),
            budget=self.budget if reason is StopReason.BUDGET else None,
        )

    async def _loop(self) -> bool:
        """Pack, submit, poll and merge until nothing is left; True when it detached with batches open."""
        while True:
            if self._stopping.is_set():
                raise _Stopped(StopReason.INTERRUPTED)
            rows = await open_batches(self.store, self.job_ids)
            for row in rows:
                if row.step in (PACKED, UPLOADED) and await self._adopt(row):
                    await self._submit(row)  # a chunk an earlier run was killed in the middle of
            if self.pack and not self._no_more_packing and not self._budget_blocked and time.time() >= self._hold_until:
                await self._pack_all()
            rows = [r for r in await open_batches(self.store, self.job_ids) if r.step == CREATED]
            if self.detach:
                return bool(rows)
            if rows:
                await self._poll(rows)
                continue
            if self._budget_blocked:
                raise _Stopped(StopReason.BUDGET)
            if not self.pack or self._no_more_packing:
                return False
            queued, due = await next_due(self.store, self.job_ids)
            if queued == 0:
                if talks := await queued_in_conversations(self.store, self.job_ids):
                    self.problems.append(
                        f"{talks:,} requests share a conversation or continue another line's response, which a"
                        " batch cannot run in order: they are"
                        " left queued for the sync lane (`runner run` without --lane batch)"
                    )
                return False
            if queued <= len(self._undone):
                self.problems.append(
                    f"{queued:,} requests came back from an expired or cancelled batch and are queued again;"
                    " `runner run` sends them"
                )
                return False
            wake = max(due or 0.0, self._hold_until)
            await self._sleep(min(max(wake - time.time(), 0.05), 5.0))

    async def _report(self) -> None:
        assert self._on_progress is not None
        while True:
            self.snap.notice = self.status_line or None
            self._on_progress(self.snap)
            await anyio.sleep(0.25)

    # -- packing and submitting -----------------------------------------------------------------------

    async def _pack_all(self) -> None:
        """Pack every due queued request into chunks (per job and model) and submit each as it is cut."""
        groups: dict[tuple[str, str], list[int]] = {}
        sizes: dict[tuple[str, str], int] = {}
        after: QueuePosition = None
        factor = self.budget.prices.lane_factor(Lane.BATCH.value) if self.budget is not None else 1.0
        while not self._budget_blocked:
            page, after = await queued_page(self.store, self.job_ids, after, PAGE)
            if not page:
                break
            for row_id, job_id, custom_id, body in page:
                if row_id in self._undone:
                    continue
                if self.budget is not None and not self.budget.admit(row_id, body, factor):
                    self._budget_blocked = True
                    break
                key = (job_id, _model_of(body))
                size = len(batch_line(custom_id, body)) + 1
                ids = groups.setdefault(key, [])
                if ids and (len(ids) >= self.max_lines or sizes[key] + size > self.max_bytes):
                    await self._new_chunk(key, ids, sizes[key])
                    groups[key] = ids = []
                    sizes[key] = 0
                ids.append(row_id)
                sizes[key] = sizes.get(key, 0) + size
        for key, ids in groups.items():
            if ids:
                await self._new_chunk(key, ids, sizes[key])

    async def _adopt(self, row: BatchRow) -> bool:
        """Whether this run may finish submitting `row`: its own, or one whose run is gone (taken over, so
        two runs never upload or create the same chunk)."""
        if row.owner == self.owner:
            return True
        gone = owner_is_dead(row.owner) or row.updated_at < time.time() - ABANDONED_AFTER
        return gone and await take_over(self.store, row.id, row.owner, self.owner)

    async def _new_chunk(self, key: tuple[str, str], ids: list[int], nbytes: int) -> None:
        if self._stopping.is_set():
            raise _Stopped(StopReason.INTERRUPTED)
        row = await pack(self.store, key[0], key[1], ids, nbytes, self.owner)
        if row is not None:
            self._made.add(row.id)
            await self._submit(row)

    async def _submit(self, row: BatchRow) -> None:
        """Upload a packed chunk and create its batch, committing each id before the next step.

        A chunk the API refuses outright is settled like a batch that failed validation: reported, and its
        requests queued again.
        """
        try:
            await self._submit_steps(row)
        except _NoApi as e:
            # No batch was created, so nothing can be billed: the chunk's lines go back to the queue with their
            # attempt, and a run against the right server sends each once.
            await unpack(self.store, row.id)
            raise _Stopped(StopReason.DOOMED, e.error) from None
        except _Refused as e:
            code = e.error.code or (f"http_{e.error.status}" if e.error.status else "refused")
            refused = {"status": "failed", "errors": {"data": [{"code": code, "message": e.error.message}]}}
            await self._merge(replace(row, status="failed", batch_id=row.batch_id or filename_of(row)), refused)

    async def _submit_steps(self, row: BatchRow) -> None:
        if row.step == PACKED:
            file_id = None if row.id in self._made else await self._find_file(row)
            if file_id is None:
                lines = await chunk_lines(self.store, row.id)
                data = b"".join(batch_line(c, b) + b"\n" for c, b in lines)
                fields = {"purpose": "batch"}

                async def upload() -> ApiReply:
                    return await self.client.upload("files", fields, filename_of(row), data)

                async def uploaded() -> str | None:
                    return await self._find_file(row)

                try:
                    file_id = await self._call(upload, "upload", found=uploaded)
                except _NoId as e:
                    # Nothing is billed for a file: a later run finds it by name or uploads it again.
                    raise _Stopped(StopReason.DOOMED, DoomedJobError(str(e))) from None
            other = await file_user(self.store, file_id, row.id)
            if other is not None:
                # A proxy's cached reply, or a server reusing ids: a batch of that file would run the other
                # chunk's lines (billed) a second time, and never this chunk's.
                why = f"the API answered the upload with file {_used_as(file_id, other)}; no batch is created from it"
                raise _Refused(PermanentApiError(why, code="file_id_reused"))
            await set_batch(self.store, row.id, step=UPLOADED, input_file_id=file_id)
            row = replace(row, step=UPLOADED, input_file_id=file_id)
            self.status_line = f"uploaded {filename_of(row)} ({row.lines:,} requests)"
        if row.step == UPLOADED:
            found = None if row.id in self._made else await self._find_batch(row)
            if found is None:
                meta = {META_JOB: row.job_id, META_CHUNK: str(row.id)}
                body = {
                    "input_file_id": row.input_file_id,
                    "endpoint": ENDPOINT,
                    "completion_window": WINDOW,
                    "metadata": meta,
                }

                async def create() -> ApiReply:
                    return await self.client.call("POST", "batches", body)

                async def created() -> str | None:
                    b = await self._find_batch(row)
                    return None if b is None else path_id(b.get("id"))

                try:
                    batch_id = await self._call(create, "batch create", found=created)
                    other = await batch_user(self.store, batch_id, row.id)
                    if other is not None:
                        # A proxy's cached reply: polled, it is the other chunk's batch, never this one's.
                        raise _NoId("batch create", batch_id, f"the batch of chunk {other.id} of job {other.job_id}")
                except _NoId as e:
                    # The batch exists and will run (billed), but cannot be polled: a later run would not find
                    # it by its metadata either, and would create it again. Its requests fail instead.
                    why = f"{e}; it is not created again (it may run and be billed): `runner retry` sends these"
                    self.problems.append(f"job {row.job_id}: {why}")
                    await self._merge(row, {}, given_up=(ID_INVALID, why))
                    return
            else:
                batch_id = path_id(found.get("id")) or ""  # _find_batch only returns batches with an id
            await set_batch(self.store, row.id, step=CREATED, batch_id=batch_id, status="validating")
            self._next_poll[row.id] = time.time() + POLL_FIRST
            self.status_line = f"created batch {batch_id} ({row.lines:,} requests)"

    async def _call(
        self, fn: Callable[[], Awaitable[ApiReply]], what: str, *, found: Callable[[], Awaitable[str | None]]
    ) -> str:
        """The id in the reply of `fn`, retried through transient failures. Before each retry `found` looks
        for what the lost reply may have made, so nothing is uploaded or created twice."""
        for attempt in range(1, STEP_TRIES + 1):
            if attempt > 1:
                made = await found()
                if made is not None:
                    return made
            try:
                reply = await fn()
            except TransientApiError as e:
                if attempt == STEP_TRIES:
                    raise _Stopped(StopReason.DOOMED, _doomed(what, e)) from None
                log.debug("%s: %s; trying again", what, e.describe())
                await self._sleep(self._retry_wait(attempt, e))
                continue
            except (BillingError, DoomedJobError) as e:
                raise _Stopped(StopReason.BILLING if isinstance(e, BillingError) else StopReason.DOOMED, e) from None
            except ApiError as e:
                if (doomed := _no_such_api(what, e, self.client.base_url)) is not None:
                    raise _NoApi(doomed) from None
                raise _Refused(e) from None
            self._replied = True
            made = path_id(reply.body.get("id"))
            if made is None:
                raise _NoId(what, reply.body.get("id"))
            return made
        raise AssertionError("unreachable")

    def _retry_wait(self, attempt: int, e: TransientApiError) -> float:
        """Seconds before trying a failed call again: short while the API has never answered in this run."""
        if isinstance(e, UnreachableError) and not self._replied:
            return INITIAL_RETRY_DELAY
        return max(exponential_backoff(attempt), e.retry_after or 0.0)

    async def _get(self, path: str, what: str) -> dict[str, Any]:
        """GET `path`, retried through transient failures."""
        for attempt in range(1, STEP_TRIES + 1):
            try:
                body = (await self.client.call("GET", path)).body
                self._replied = True
                return body
            except TransientApiError as e:
                if attempt == STEP_TRIES:
                    raise _Stopped(StopReason.DOOMED, _doomed(what, e)) from None
                await self._sleep(self._retry_wait(attempt, e))
            except (BillingError, DoomedJobError) as e:
                raise _Stopped(StopReason.BILLING if isinstance(e, BillingError) else StopReason.DOOMED, e) from None
            except ApiError as e:
                raise _Stopped(StopReason.DOOMED, _doomed(what, e)) from None
        raise AssertionError("unreachable")

    async def _pages(self, path: str, what: str) -> AsyncIterator[dict[str, Any]]:
        """Every object of a cursor-paginated list (`after` = the last id of the page before)."""
        after: str | None = None
        sep = "&" if "?" in path else "?"
        # A list that says `has_more` for ever (a cursor that comes back, or endless new ones) was read page
        # after page without a pause, and the run never ended.
        seen: set[str] = set()
        for _ in range(MAX_LIST_PAGES):
            query = f"{path}{sep}limit={LIST_LIMIT}" + (f"&after={quote(after, safe='')}" if after else "")
            page = await self._get(query, what)
            data = page.get("data")
            items = [x for x in data if isinstance(x, dict)] if isinstance(data, list) else []
            for item in items:
                yield item
            last = read_id(items[-1].get("id")) if items else None
            if page.get("has_more") is not True or last is None:
                return
            if last in seen:
                raise _EndlessList(f"{what}: the API's list does not end (its cursor {last!r} came back)")
            seen.add(last)
            after = last
        raise _EndlessList(f"{what}: the API's list does not end ({MAX_LIST_PAGES:,} pages read)")

    async def _find_file(self, row: BatchRow) -> str | None:
        """The id of this chunk's file if an earlier attempt uploaded it (its reply lost)."""
        try:
            async for f in self._pages("files?purpose=batch", "listing files"):
                # The age first: a file of this name made before the chunk was packed is another chunk's (a
                # store restored from a backup numbers its chunks again), and its batch would run other lines.
                created = _timestamp(f.get("created_at"))
                if created is not None and created < row.created_at - LOOKBACK:
                    return None  # listed newest first: older files cannot be this chunk's
                if f.get("filename") == filename_of(row):  # job ids are random: the name is this chunk's alone
                    return read_id(f.get("id"))
        except _EndlessList as e:
            # An upload costs nothing (only a batch is billed): uploading again is safe.
            log.warning("%s; uploading the file again", e)
        return None

    async def _find_batch(self, row: BatchRow) -> dict[str, Any] | None:
        """This chunk's batch if an earlier attempt created it (its reply lost), by the metadata we set."""
        try:
            async for b in self._pages("batches", "listing batches"):
                meta = b.get("metadata")
                if (
                    isinstance(meta, dict)
                    and meta.get(META_JOB) == row.job_id
                    and meta.get(META_CHUNK) == str(row.id)
                    and b.get("input_file_id") == row.input_file_id
                    and path_id(b.get("id")) is not None
                ):
                    return b
                created = _timestamp(b.get("created_at"))
                if created is not None and created < row.created_at - BATCH_LOOKBACK:
                    return None
        except _EndlessList as e:
            # The batch may exist, and creating another would run (and bill) every line twice: stop instead.
            message = f"{e}; no batch was created again, `runner run` looks for it again"
            raise _Stopped(StopReason.DOOMED, DoomedJobError(message)) from None
        return None

    # -- polling and merging ----------------------------------------------------------------------

    async def _poll(self, rows: list[BatchRow]) -> None:
        """Poll the batches that are due (each backing off on its own); merge those that ended."""
        now = time.time()
        due = [r for r in rows if self._next_poll.get(r.id, 0.0) <= now]
        if not due:
            await self._sleep(min(self._next_poll.get(r.id, now) for r in rows) - now)
            return
        parts = []
        for row in due:
            b = await self._get(f"batches/{quote(row.batch_id or '', safe='')}", "polling a batch")
            # By its id alone: a proxy may show input file ids of its own, and a batch naming another's output
            # file is caught by the merge (file_user).
            got = read_id(b.get("id"))
            if got != row.batch_id:
                # Another batch (a proxy's mix-up): its files name the same custom ids as ours when the
                # jobs' ids are alike (c-00001 ...), so merging them would give this job another's answers.
                await self._mismatch(row, got)
                continue
            self._mismatches.pop(row.id, None)
            # Stored and shown as sent (a status it does not know is polled on), but bounded like an error code.
            status = _status(b.get("status")) or "unknown"
            raw_counts = b.get("request_counts")
            counts: dict[str, Any] = raw_counts if isinstance(raw_counts, dict) else {}
            done, failed = _count(counts, "completed"), _count(counts, "failed")
            if (status, done, failed) != (row.status, row.done_count, row.failed_count):
                await set_batch(self.store, row.id, status=status, done_count=done, failed_count=failed)
            if status in FINAL:
                await self._merge(replace(row, status=status), b)
                continue
            wait = min(self._poll_wait.get(row.id, POLL_FIRST / POLL_GROWTH) * POLL_GROWTH, POLL_MAX)
            self._poll_wait[row.id] = wait
            self._next_poll[row.id] = time.time() + wait
            parts.append(f"{status} {done + failed:,}/{row.lines:,}")
        if parts:
            self.status_line = f"batches open: {', '.join(parts)}"

    async def _mismatch(self, row: BatchRow, got: str | None) -> None:
        """A poll answered with another batch: asked again a few times (a passing mix-up), then this batch's
        requests fail. They are not sent again: the batch may still run, and be billed."""
        n = self._mismatches[row.id] = self._mismatches.get(row.id, 0) + 1
        if n < MAX_ID_MISMATCHES:
            log.debug("polling batch %s returned batch %r; asking again", row.batch_id, got)
            self._next_poll[row.id] = time.time() + POLL_FIRST * POLL_GROWTH**n
            return
        why = (
            f"polling batch {row.batch_id} returned another batch ({got!r}) {n} times; its results are not"
            " merged (it may still run and be billed: `runner retry` sends its requests again)"
        )
        self.problems.append(f"job {row.job_id}: {why}")
        await self._merge(row, {}, given_up=(ID_MISMATCH, why))

    async def _merge(self, row: BatchRow, b: dict[str, Any], *, given_up: tuple[str, str] | None = None) -> None:
        """Write every line of a finished batch into the store; requeue what its files did not settle.

        `given_up`: the batch cannot be followed (it is not merged); its requests fail with that code and message.
        """
        left = await members(self.store, row.id)
        writer = WriteBack(self.store, owner_of(row.id))
        requeued: list[int] = []
        # `runner cancel` cancelled the job (and this batch): what the batch did not run ends cancelled here,
        # as the store would make it at once, so that this run counts it as cancelled and not as a retry.
        job_cancelled = (await self.store.get_job(row.job_id)).cancelled_at is not None

        def put(o: Outcome) -> int:
            if job_cancelled and o.to is RequestState.QUEUED:
                o = Outcome(
                    o.request_id, RequestState.CANCELLED, error_code=CANCELLED_CODE, error_message=CANCELLED_WHY
                )
            count_outcome(self.snap, o)
            if self.budget is not None:
                self.budget.settle(o.request_id, o.usage)
            if o.to is RequestState.QUEUED:
                requeued.append(o.request_id)
                if o.error_code in UNDONE_CODES:
                    self._undone.add(o.request_id)
            return writer.put(o)

        stopped: _Stopped | None = None
        unread: list[str] = []
        files: dict[str, str | None] = {"output_file_id": None, "error_file_id": None}
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run)
            try:
                for key in files:
                    file_id = path_id(b.get(key))
                    if file_id is None:
                        continue
                    other = await file_user(self.store, file_id, row.id)
                    if other is not None:
                        # Another batch's file (a proxy's mix-up) names the same custom ids when the jobs'
                        # ids are alike: merged, it gave this job another's answers.
                        unread.append(f"the batch file {_used_as(file_id, other)}; not merged")
                        log.warning("batch %s: %s", row.batch_id, unread[-1])
                        continue
                    problem, downloaded = await self._merge_file(file_id, left, put, writer)
                    if downloaded:  # recorded as this batch's: never merged for another
                        files[key] = file_id
                    if problem:
                        unread.append(problem)
                await self._settle_leftovers(row, b, left, put, given_up=given_up, unread=unread)
            except _Stopped as e:
                # Raised out of the task group it would reach the CLI wrapped in an ExceptionGroup: a traceback.
                stopped = e
            finally:
                await writer.aclose()
        await clear_lane(self.store, requeued)
        if stopped is not None:
            raise stopped
        errors = _batch_errors(b)
        shown = "\n".join(errors) or (given_up[1] if given_up else None)
        await set_batch(self.store, row.id, step=MERGED, status=row.status, errors=shown, **files)
        self._next_poll.pop(row.id, None)
        if row.status == "failed":
            said = "; ".join(errors) or "no reason given"
            if self._limit_code(b):
                self._limit_hits += 1
                wait = min(LIMIT_WAIT_FIRST * 2 ** (self._limit_hits - 1), LIMIT_WAIT_MAX)
                self._hold_until = time.time() + wait
                log.warning("batch %s was refused for a limit (%s); trying again in %.0f s", row.batch_id, said, wait)
            else:
                self._no_more_packing = True
                self.problems.append(
                    f"batch {row.batch_id} of job {row.job_id} failed: {said}; its {row.lines:,} requests are queued"
                    " again (fix the cause, then `runner run`)"
                )

    async def _merge_file(
        self, file_id: str, left: dict[str, Member], put: Callable[[Outcome], int], writer: WriteBack
    ) -> tuple[str | None, bool]:
        """Stream one output or error file into the write-back (at most MERGE_WINDOW outcomes in memory).

        (What went wrong, whether it was downloaded to its end.) What went wrong: the file could not be read to
        its end (a 404, a line over the limit), or held lines that are not Batch output lines (a proxy's web
        page); the requests it did not settle are then left to `_settle_leftovers`, as missing ones, and their
        message says why.
        """
        path = f"files/{quote(file_id, safe='')}/content"
        for attempt in range(1, STEP_TRIES + 1):
            try:
                last = bad = 0
                async for raw in self.client.lines(path):
                    if not raw.strip():
                        continue
                    try:
                        line = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        bad += 1
                        continue  # unreadable: its request stays in `left` and is requeued
                    cid = line.get("custom_id") if isinstance(line, dict) else None
                    if not isinstance(cid, str):
                        bad += 1
                        continue
                    m = left.get(cid)
                    if m is None:
                        continue  # not ours, or merged already (a line repeated, or a restarted download)
                    c = Claimed(m.id, m.job_id, m.line_no, cid, "", m.attempts)
                    o = outcome_of_line(c, line, max_attempts=self.max_attempts)
                    if o is None:
                        bad += 1
                        continue
                    del left[cid]
                    ticket = put(o)
                    if ticket - last >= MERGE_WINDOW:
                        await writer.wait(last)  # the one before: the write-back keeps one window ahead
                        last = ticket
                if not bad:
                    return None, True
                problem = f"the batch file {file_id} held {bad:,} lines that are not Batch output lines"
                log.warning("%s", problem)
                return problem, True
            except TransientApiError as e:
                if attempt == STEP_TRIES:
                    raise _Stopped(StopReason.DOOMED, _doomed("downloading batch results", e)) from None
                await self._sleep(self._retry_wait(attempt, e))
            except (BillingError, DoomedJobError) as e:
                raise _Stopped(StopReason.BILLING if isinstance(e, BillingError) else StopReason.DOOMED, e) from None
            except ApiError as e:
                # It stopped every run of the job (exit 5) for ever: the file reads the same each time.
                problem = f"the batch file {file_id} could not be read: {e.describe()}"
                log.warning("%s; the requests it did not give are settled as missing", problem)
                return problem, False
        raise AssertionError("unreachable")

    async def _settle_leftovers(
        self,
        row: BatchRow,
        b: dict[str, Any],
        left: dict[str, Member],
        put: Callable[[Outcome], int],
        *,
        given_up: tuple[str, str] | None = None,
        unread: Sequence[str] = (),
    ) -> None:
        """Requests the batch's files did not settle go back to the queue (attempt counted), or fail when out
        of attempts; a batch refused for a limit gives their attempt back."""
        if not left:
            return
        status = row.status or "unknown"
        limit = status == "failed" and self._limit_code(b)
        errors = _batch_errors(b)
        undone = status in ("expired", "cancelled")
        if status == "expired":
            code, message = "batch_expired", "the batch expired before this request ran"
        elif status == "cancelled":
            code, message = "batch_cancelled", "the batch was cancelled before this request ran"
        elif status == "failed":
            code, message = "batch_failed", f"the batch failed: {'; '.join(errors) or 'no reason given'}"
        else:
            code, message = "missing_from_batch", f"the {status} batch's files held no line for this request"
            if unread:
                message = f"{message} ({'; '.join(unread)})"
        now = time.time()
        for cid, m in list(left.items()):
            if given_up is not None:
                put(
                    Outcome(
                        m.id, RequestState.FAILED, error_code=given_up[0], error_message=given_up[1][:MAX_MESSAGE_CHARS]
                    )
                )
            elif limit or undone or should_retry(m.attempts, self.max_attempts):
                put(
                    Outcome(
                        m.id,
                        RequestState.QUEUED,
                        error_code=code,
                        error_message=message[:MAX_MESSAGE_CHARS],
                        next_attempt_at=now,
                        refund_attempt=limit,
                    )
                )
            else:
                put(
                    Outcome(
                        m.id,
                        RequestState.FAILED,
                        error_code=code,
                        error_message=f"gave up after {m.attempts} attempt(s): {message}"[:MAX_MESSAGE_CHARS],
                    )
                )
            del left[cid]

    @staticmethod
    def _limit_code(b: dict[str, Any]) -> bool:
        data = (b.get("errors") or {}).get("data") if isinstance(b.get("errors"), dict) else None
        # The code is checked to be text first: `in` a frozenset raised TypeError on a code that was an object.
        return isinstance(data, list) and any(
            isinstance(e, dict) and isinstance(e.get("code"), str) and e["code"] in LIMIT_CODES for e in data
        )


def _count(counts: dict[str, Any], key: str) -> int:
    v = counts.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 10**9 else 0


def _batch_errors(b: dict[str, Any]) -> list[str]:
    """A failed batch's errors, one bounded line each (code: message, and the line it names)."""
    errs = b.get("errors")
    data = errs.get("data") if isinstance(errs, dict) else None
    out = []
    for e in data[:20] if isinstance(data, list) else []:
        if isinstance(e, dict):
            code = read_error_text(e.get("code"), MAX_CODE_CHARS) or "error"
            message = read_error_text(e.get("message"), 300) or ""
            line = e.get("line")
            where = f" (line {line})" if isinstance(line, int) and not isinstance(line, bool) else ""
            out.append(f"{code}: {message}{where}")
    return out


def _timestamp(value: Any) -> float | None:
    """A listed `created_at` as a time, None when it is none (`true` is an int to Python, and ended a look)."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _status(value: Any) -> str | None:
    """A batch's status as the API gave it, at most MAX_CODE_CHARS characters; None when it is not text."""
    return read_error_text(value, MAX_CODE_CHARS) if isinstance(value, str) and value else None


def _used_as(file_id: str, other: BatchRow) -> str:
    """`file_id`, and which file of which other batch it already is."""
    kind = "input" if other.input_file_id == file_id else "output" if other.output_file_id == file_id else "error"
    return f"{file_id} is already the {kind} file of batch {other.batch_id or other.id} of job {other.job_id}"


def _no_such_api(what: str, e: ApiError, base_url: str) -> DoomedJobError | None:
    """A 404 or 405 from POST /files or /batches that names no missing thing: the server has no such API (vLLM,
    llama.cpp, most gateways). No chunk can go, so the run stops as a 404 from POST /responses stops it: were it
    refused like one chunk, every run would use up an attempt of every line, and fail them all by the sixth."""
    if e.status not in (404, 405) or (e.code or "").lower().endswith(("not_found", "notfound")):
        return None
    api = "Files" if what == "upload" else "Batch"
    path = "files" if what == "upload" else "batches"
    return DoomedJobError(
        f"POST {base_url.rstrip('/')}/{path}: {e.status}; the server has no {api} API at this base URL, which"
        " --lane batch needs (use --lane sync, or check --base-url / OPENAI_BASE_URL)",
        status=e.status,
        code=e.code,
    )


def _doomed(what: str, e: ApiError) -> DoomedJobError:
    return DoomedJobError(f"{what} failed: {e.describe()}; the batches made so far are kept, `runner run` resumes")


async def cancel_batches(store: Store, client: ApiClient, job_id: str) -> tuple[int, int, list[str]]:
    """`POST /batches/{id}/cancel` for each open batch of a job; (batches cancelled, requests in them not merged
    yet, failures as one line each).

    Their partial results are merged, and the rest cancelled, by the next `runner run` of the job (its
    requests stay leased by their batch until then, so `runner status` counts them in progress).
    """
    done, waiting, failures = 0, 0, []
    for row in await open_batches(store, [job_id]):
        if row.step != CREATED or row.batch_id is None or row.status in FINAL:
            continue
        try:
            reply = await client.call("POST", f"batches/{quote(row.batch_id, safe='')}/cancel")
        except ApiError as e:
            failures.append(f"batch {row.batch_id}: {e.describe()}")
            continue
        await set_batch(store, row.id, status=_status(reply.body.get("status")) or "cancelling")
        done += 1
        waiting += len(await members(store, row.id))
    return done, waiting, failures
