"""The Files and Batches endpoints of the fake API: upload and read files, and batches that run their lines.

A batch moves `validating -> in_progress -> finalizing -> completed` on the clock (the `batch_*_delay`
knobs), advanced lazily whenever it is looked at. When it finishes, each line is answered with the same
usage model and faults as `POST /responses`, counted once in the ledger, and written to an output file
(answers) and an error file (HTTP failures and `batch_expired` / `batch_cancelled` rows), in shuffled
order as the real API may. Knobs add expiry of part of the lines, failed validation, an enqueued-token
limit, and a create whose reply is lost after the batch was made.

Over 400 lines on purpose: Files and Batches are one fake service (a batch reads the files it was given
and writes its results as files), and its lifecycle reads best beside the handlers that advance it.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from runner_mock.content import final_fields, skeleton, usage_for, validate
from runner_mock.faults import authorized, drop, unauthorized
from runner_mock.replies import error, reply
from runner_mock.state import STATE_KEY, MockState

__all__ = ["BATCHES_KEY", "MAX_UPLOAD_BYTES", "BatchState", "add_batch_routes"]

ENDPOINTS = frozenset({"/v1/responses"})
MAX_UPLOAD_BYTES = 200 * 1024 * 1024 + 1024 * 1024  # the Batch API's 200 MB per file, and the form around it
MAX_LIST = 100
FINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def shown(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


@dataclass
class Batch:
    body: dict[str, Any]  # the Batch object as shown
    started: float  # time.monotonic() at create
    lines: list[dict[str, Any]] = field(default_factory=list)
    cancelled_at: float | None = None  # monotonic time of the cancel
    settled: bool = False


class BatchState:
    """Files, batches and the batch ledger of one server instance."""

    def __init__(self) -> None:
        self.files: OrderedDict[str, StoredFile] = OrderedDict()
        self.batches: OrderedDict[str, Batch] = OrderedDict()
        self.uploads = 0
        self.creates = 0
        self.cancels = 0
        self.reads = 0  # file downloads started
        self.lines_uploaded: Counter[str] = Counter()  # custom_id -> times it was in an uploaded batch file

    def stats(self) -> dict[str, Any]:
        return {
            "uploads": self.uploads,
            "creates": self.creates,
            "cancels": self.cancels,
            "reads": self.reads,
            "lines_uploaded": sum(self.lines_uploaded.values()),
            "max_uploads_of_a_line": max(self.lines_uploaded.values(), default=0),
            "batches": {k: b.body["status"] for k, b in self.batches.items()},
        }


BATCHES_KEY = web.AppKey("mock_batches", BatchState)


Handler = Callable[[web.Request, MockState, BatchState, float], Awaitable[web.StreamResponse]]


def _api(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """What every Files/Batches handler does first: note the start time (for the latency knobs) and check the key."""

    @functools.wraps(handler)
    async def handle(request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        state = request.app[STATE_KEY]
        if not authorized(state, request):
            return unauthorized(state, started)
        return await handler(request, state, request.app[BATCHES_KEY], started)

    return handle


def _bad(state: MockState, started: float, message: str, param: str | None = None) -> web.Response:
    return reply(state, started, 400, error(message, "invalid_request_error", "invalid_request_error", param))


def _missing(state: MockState, started: float, what: str, oid: str) -> web.Response:
    return reply(state, started, 404, error(f"No such {what}: '{oid}'", "invalid_request_error", None))


def _page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    if after is not None:
        ids = [x["id"] for x in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }


def _limit(request: web.Request, default: int) -> int:
    try:
        return max(1, min(MAX_LIST, int(request.query.get("limit", default))))
    except ValueError:
        return default


@_api
async def _upload(request: web.Request, state: MockState, bs: BatchState, started: float) -> web.StreamResponse:
    if not request.content_type.startswith("multipart/"):
        return _bad(state, started, "Expected a multipart/form-data body.")
    purpose, filename, data = None, "file.jsonl", None
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "purpose":
            purpose = (await part.read()).decode()
        elif part.name == "file":
            filename = part.filename or filename
            data = bytes(await part.read())
    if purpose is None:
        return _bad(state, started, "Missing required parameter: 'purpose'.", "purpose")
    if data is None:
        return _bad(state, started, "Missing required parameter: 'file'.", "file")
    f = StoredFile(state.new_id("file"), filename, purpose, data, int(time.time()))
    bs.files[f.id] = f
    bs.uploads += 1
    if purpose == "batch":
        for raw in data.splitlines():
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
                bs.lines_uploaded[line["custom_id"]] += 1
    if state.config.batch_reply_delay > 0:
        await asyncio.sleep(state.config.batch_reply_delay)  # the file exists: a client killed now lost its id
    return reply(state, started, 200, f.shown())


@_api
async def _list_files(request: web.Request, state: MockState, bs: BatchState, started: float) -> web.StreamResponse:
    purpose = request.query.get("purpose")
    items = [f.shown() for f in reversed(bs.files.values()) if purpose is None or f.purpose == purpose]
    return reply(state, started, 200, _page(items, request.query.get("after"), _limit(request, 10_000)))


@_api
async def _file_content(request: web.Request, state: MockState, bs: BatchState, started: float) -> web.StreamResponse:
    f = bs.files.get(request.match_info["fid"])
    if f is None:
        return _missing(state, started, "file", request.match_info["fid"])
    bs.reads += 1
    delay = state.config.file_read_delay
    if delay <= 0:
        return web.Response(body=f.data, content_type="application/octet-stream")
    response = web.StreamResponse(headers={"content-type": "application/octet-stream"})
    response.content_length = len(f.data)
    await response.prepare(request)
    half = f.data.rfind(b"\n", 0, len(f.data) // 2) + 1
    await response.write(f.data[:half])
    await asyncio.sleep(delay)  # the first half is on its way: a client killed now merged part of the file
    await response.write(f.data[half:])
    await response.write_eof()
    return response


@_api
async def _create(request: web.Request, state: MockState, bs: BatchState, started: float) -> web.StreamResponse:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return _bad(state, started, "The request body must be a JSON object.")
    fid = body.get("input_file_id")
    f = bs.files.get(fid) if isinstance(fid, str) else None
    if f is None:
        return _bad(state, started, f"No such file: {fid!r}", "input_file_id")
    if body.get("endpoint") not in ENDPOINTS:
        return _bad(state, started, "Unsupported endpoint.", "endpoint")
    if body.get("completion_window") != "24h":
        return _bad(state, started, "completion_window must be 24h.", "completion_window")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or len(metadata) > 16:
        return _bad(state, started, "Invalid metadata.", "metadata")
    now = int(time.time())
    bid = state.new_id("batch")
    shown = {
        "id": bid,
        "object": "batch",
        "endpoint": body["endpoint"],
        "model": None,
        "errors": None,
        "input_file_id": fid,
        "completion_window": "24h",
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now,
        "in_progress_at": None,
        "expires_at": now + 86_400,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": metadata,
    }
    bs.batches[bid] = Batch(shown, time.monotonic())
    bs.creates += 1
    if state.config.batch_reply_delay > 0:
        await asyncio.sleep(state.config.batch_reply_delay)  # the batch exists: a client killed now lost its id
    if state.config.batch_drop_create > 0:
        # The batch exists, but its creator never hears of it: it must find it with GET /batches.
        state.config.batch_drop_create -= 1
        return drop(request)
    return reply(state, started, 200, shown)


def _fail(b: Batch, code: str, message: str, line: int | None = None) -> None:
    b.body.update(
        status="failed",
        failed_at=int(time.time()),
        errors={"object": "list", "data": [{"code": code, "message": message, "param": None, "line": line}]},
    )
    b.settled = True


def _validate(state: MockState, bs: BatchState, b: Batch) -> None:
    """The end of `validating`: read the input file, or fail the batch."""
    config = state.config
    if config.batch_fail > 0:
        config.batch_fail -= 1
        _fail(b, "invalid_request", "The batch input file failed validation (mock batch_fail).", 1)
        return
    data = bs.files[b.body["input_file_id"]].data
    seen: set[str] = set()
    models: set[str] = set()
    for n, raw in enumerate(data.splitlines(), 1):
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            _fail(b, "invalid_json_line", "This line is not valid JSON.", n)
            return
        cid = line.get("custom_id") if isinstance(line, dict) else None
        if not isinstance(cid, str) or cid in seen:
            _fail(b, "duplicate_custom_id" if cid in seen else "missing_custom_id", "Bad or repeated custom_id.", n)
            return
        if line.get("method") != "POST" or line.get("url") != b.body["endpoint"]:
            _fail(b, "invalid_url", "The url of each line must be the batch's endpoint.", n)
            return
        body = line.get("body")
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            models.add(body["model"])
        seen.add(cid)
        b.lines.append(line)
    if len(models) > 1:
        _fail(b, "mixed_models", "A batch input file may name one model only.")
        return
    b.body["model"] = next(iter(models), None)
    if config.batch_token_limit is not None:
        tokens = sum(_tokens(x) for x in b.lines)
        queued = sum(
            _tokens(x)
            for o in bs.batches.values()
            if o is not b and o.body["status"] in ("in_progress", "finalizing") and o.body["model"] == b.body["model"]
            for x in o.lines
        )
        if tokens + queued > config.batch_token_limit:
            message = f"Enqueued token limit reached for {b.body['model']}: limit {config.batch_token_limit}."
            _fail(b, "token_limit_exceeded", message)
            return
    b.body["request_counts"]["total"] = len(b.lines)


def _tokens(line: dict[str, Any]) -> int:
    body = line.get("body")
    return usage_for(body)[1]["input_tokens"] if isinstance(body, dict) else 0


def _answer(state: MockState, line: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """One line run as `POST /responses` would run it: (the output line, whether it succeeded)."""
    rid = "req_" + state.new_id("r")[-32:]
    raw = orjson.dumps(line.get("body"))
    body, problem = validate(raw)
    if body is None:
        status, payload = 400, problem
    elif state.config.p5xx and state.rng.random() < state.config.p5xx:
        status, payload = 500, error("The server had an error processing your request.", "server_error", "server_error")
    else:
        computed = usage_for(body)
        now = int(time.time())
        payload = skeleton(body, state.new_id("resp"), now)
        payload.update(final_fields(state, computed, now, False))
        state.count_usage(payload["usage"])
        status = 200
    out = {
        "id": state.new_id("batch_req"),
        "custom_id": line["custom_id"],
        "response": {"status_code": status, "request_id": rid, "body": payload},
        "error": None,
    }
    return out, status == 200


def _settle(state: MockState, bs: BatchState, b: Batch, done: int, final: str, undone_code: str) -> None:
    """Run the first `done` lines, write the output and error files, and end the batch as `final`."""
    ok: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    for line in b.lines[:done]:
        out, good = _answer(state, line)
        (ok if good else bad).append(out)
    message = {
        "batch_expired": "This request could not be executed before the completion window expired.",
        "batch_cancelled": "This request was cancelled before it was executed.",
    }[undone_code]
    for line in b.lines[done:]:
        bad.append(
            {
                "id": state.new_id("batch_req"),
                "custom_id": line["custom_id"],
                "response": None,
                "error": {"code": undone_code, "message": message},
            }
        )
    state.rng.shuffle(ok)
    state.rng.shuffle(bad)
    now = int(time.time())
    for rows, key in ((ok, "output_file_id"), (bad, "error_file_id")):
        if rows:
            f = StoredFile(state.new_id("file"), f"{b.body['id']}_{key}.jsonl", "batch_output", b"", now)
            f.data = b"\n".join(orjson.dumps(r) for r in rows) + b"\n"
            bs.files[f.id] = f
            b.body[key] = f.id
    b.body["request_counts"] = {"total": len(b.lines), "completed": len(ok), "failed": len(bad)}
    b.body["status"] = final
    b.body[f"{final}_at"] = now
    b.settled = True


def advance(state: MockState, bs: BatchState, b: Batch) -> dict[str, Any]:
    """Bring a batch's status up to date from the clock; the Batch object as it is now."""
    if b.settled:
        return b.body
    config = state.config
    v, r, f = config.batch_validate_delay, config.batch_run_delay, config.batch_finalize_delay
    elapsed = time.monotonic() - b.started
    status = b.body["status"]
    if status == "validating" and elapsed >= v:
        _validate(state, bs, b)
        if b.settled:
            return b.body
        b.body.update(status="in_progress", in_progress_at=int(time.time()))
    if b.cancelled_at is not None:
        if time.monotonic() - b.cancelled_at >= f:
            ran = max(0.0, min(1.0, (b.cancelled_at - b.started - v) / r)) if r > 0 else 1.0
            _settle(state, bs, b, math.floor(len(b.lines) * ran), "cancelled", "batch_cancelled")
        return b.body
    if b.body["status"] == "in_progress":
        done = len(b.lines) if r <= 0 else math.floor(len(b.lines) * min(1.0, max(0.0, (elapsed - v) / r)))
        b.body["request_counts"]["completed"] = done
        if elapsed >= v + r:
            b.body.update(status="finalizing", finalizing_at=int(time.time()))
    if b.body["status"] == "finalizing" and elapsed >= v + r + f:
        if config.batch_expire > 0:
            undone = math.ceil(len(b.lines) * config.batch_expire)
            _settle(state, bs, b, len(b.lines) - undone, "expired", "batch_expired")
        else:
            _settle(state, bs, b, len(b.lines), "completed", "batch_expired")
    return b.body


@_api
async def _retrieve(request: web.Request, state: MockState, bs: BatchState, started: float) -> web.StreamResponse:
    b = bs.batches.get(request.match_info["bid"])
    if b is None:
        return _missing(state, started, "batch", request.match_info["bid"])
    return reply(state, started, 200, advance(state, bs, b))


@_api
async def _list(request: web.Request, state: MockState, bs: BatchState, started: float) -> web.StreamResponse:
    items = [advance(state, bs, b) for b in reversed(bs.batches.values())]  # newest first, as the API lists
    return reply(state, started, 200, _page(items, request.query.get("after"), _limit(request, 20)))


@_api
async def _cancel(request: web.Request, state: MockState, bs: BatchState, started: float) -> web.StreamResponse:
    b = bs.batches.get(request.match_info["bid"])
    if b is None:
        return _missing(state, started, "batch", request.match_info["bid"])
    bs.cancels += 1
    shown = advance(state, bs, b)
    if shown["status"] in FINAL or b.cancelled_at is not None:
        return reply(state, started, 200, shown)
    if shown["status"] == "validating":
        b.started -= state.config.batch_validate_delay  # validate now, so the lines are known
        shown = advance(state, bs, b)
        if b.settled:
            return reply(state, started, 200, shown)
    b.cancelled_at = time.monotonic()
    b.body.update(status="cancelling", cancelling_at=int(time.time()))
    return reply(state, started, 200, b.body)


def add_batch_routes(app: web.Application, prefix: str) -> None:
    """Route Files and Batches under `prefix` (any path ending in /v1)."""
    app[BATCHES_KEY] = BatchState()
    app.router.add_post(f"{prefix}/files", _upload)
    app.router.add_get(f"{prefix}/files", _list_files)
    app.router.add_get(f"{prefix}/files/{{fid}}/content", _file_content)
    app.router.add_post(f"{prefix}/batches", _create)
    app.router.add_get(f"{prefix}/batches", _list)
    app.router.add_get(f"{prefix}/batches/{{bid}}", _retrieve)
    app.router.add_post(f"{prefix}/batches/{{bid}}/cancel", _cancel)
