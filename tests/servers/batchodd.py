"""A Files + Batches API that is wrong, odd or hostile, for the tests of what the batch lane trusts.

Standalone on purpose: it imports nothing of `runner`, so the runner cannot share a bug with its own test
server. A batch runs at once: its first GET finds it `completed`, every line answered (text
`"<text> <custom_id>"`, 10 tokens in and 5 out). `POST /_odd` with a JSON object changes what it does next
(see ODD), `GET /_stats` counts what it was asked.

    python tests/servers/batchodd.py --port 0     # prints "listening on http://127.0.0.1:PORT/v1"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from typing import Any

from aiohttp import BodyPartReader, web

# What the server does; POST /_odd replaces any of these.
ODD: dict[str, Any] = {
    "text": "answer",  # the answers' text, before the custom_id
    "no_files": False,  # POST /v1/files answers 404, as a server without a Files API (vLLM, llama.cpp) does
    "upload_500": 0,  # the next N uploads store the file, then answer 500 (the runner never hears its id)
    "create_500": 0,  # the next N creates make the batch, then answer 500
    "files_loop": False,  # GET /files: every page says has_more, with the same last id, for ever
    "batches_loop": False,  # GET /batches: likewise
    "same_file_id": False,  # every upload is answered with the first upload's reply (a proxy's stale cache)
    "same_batch_id": False,  # every create makes its batch, but is answered with the first create's reply
    "batch_id": None,  # the id the next creates are given (`..`, 10 KB of text, ...), in their reply and in the list
    "fail_errors": None,  # a batch ends `failed` with this `errors` value (of any shape) and no files
    "status": None,  # a batch polled shows this status (any text: `paused`, 100 KB of it) and never ends
    "pad": 0,  # characters added to the next answer's text (a line of 10 MB)
    "content_503": False,  # every download of a batch's output file answers 503 (the runner waits, then tries again)
    "output_file": None,  # a finished batch names this file (another batch's) as its output file
    "poll_as": None,  # GET /batches/{id} answers with this other batch instead
    # ok | 404 (the output file id names no file) | html (its content is a web page) | messy (before each
    # line: one that is not JSON, a made-up custom_id, one without status_code; after it, the same custom_id
    # again with another answer and 100 times the tokens; then the lines of the other batches)
    "output": "ok",
}


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": {"message": message, "type": "server_error", "code": None}}, status)


def _page(items: list[dict[str, Any]], after: str | None, loop: bool) -> dict[str, Any]:
    if loop:  # somebody else's object, on a page that says `has_more` for ever: the cursor never moves
        other = {"id": "other-1", "filename": "theirs.jsonl", "metadata": {}, "created_at": int(time.time())}
        return {"object": "list", "data": [other], "has_more": True, "last_id": "other-1"}
    ids = [x["id"] for x in items]
    if after is not None:
        items = items[ids.index(after) + 1 :] if after in ids else []
    return {"object": "list", "data": items[:100], "has_more": len(items) > 100}


class Server:
    def __init__(self) -> None:
        self.odd = dict(ODD)
        self.files: dict[str, dict[str, Any]] = {}  # id -> shown object, plus "data"
        self.batches: dict[str, dict[str, Any]] = {}
        self.counts: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()  # custom_id -> times a batch ran it (and billed it)
        self.serial = 0

    def _id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{self.serial}"

    def _store(self, fid: str, name: str, purpose: str, data: bytes) -> dict[str, Any]:
        shown = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()), "filename": name}
        self.files[fid] = {**shown, "purpose": purpose, "data": data}
        return shown

    async def upload(self, request: web.Request) -> web.StreamResponse:
        self.counts["uploads"] += 1
        if self.odd["no_files"]:
            return web.Response(status=404, text="404: Not Found")
        name, data, purpose = "file.jsonl", b"", ""
        async for part in await request.multipart():
            if isinstance(part, BodyPartReader) and part.name == "file":
                name, data = part.filename or name, bytes(await part.read())
            elif isinstance(part, BodyPartReader) and part.name == "purpose":
                purpose = (await part.read()).decode()
        if self.odd["same_file_id"] and self.files:
            first = next(iter(self.files.values()))
            return _json({k: v for k, v in first.items() if k not in ("data", "purpose")})
        shown = self._store(self._id("file"), name, purpose, data)
        if self.odd["upload_500"] > 0:
            self.odd["upload_500"] -= 1
            return _error(500, "upload reply lost")
        return _json(shown)

    async def list_files(self, request: web.Request) -> web.StreamResponse:
        self.counts["file_lists"] += 1
        items = [{k: v for k, v in f.items() if k != "data"} for f in reversed(self.files.values())]
        return _json(_page(items, request.query.get("after"), self.odd["files_loop"]))

    async def content(self, request: web.Request) -> web.StreamResponse:
        self.counts["contents"] += 1
        f = self.files.get(request.match_info["fid"])
        if f is None:
            return _error(404, "No such file")
        if self.odd["content_503"] and f["purpose"] == "batch_output":
            return _error(503, "overloaded")
        if self.odd["output"] == "html" and f["purpose"] == "batch_output":
            page = b"<html><body>Bad gateway\n<p>try later</p></body></html>\n"
            return web.Response(body=page, content_type="text/html")
        return web.Response(body=f["data"], content_type="application/octet-stream")

    async def create(self, request: web.Request) -> web.StreamResponse:
        self.counts["creates"] += 1
        body = await request.json()
        bid = self.odd["batch_id"] or self._id("batch")
        self.batches[bid] = {
            "id": bid,
            "object": "batch",
            "endpoint": body.get("endpoint"),
            "input_file_id": body.get("input_file_id"),
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(time.time()),
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
            "errors": None,
        }
        if self.odd["same_batch_id"]:
            return _json(next(iter(self.batches.values())))
        if self.odd["create_500"] > 0:
            self.odd["create_500"] -= 1
            return _error(500, "create reply lost")
        return _json(self.batches[bid])

    def _run(self, b: dict[str, Any]) -> dict[str, Any]:
        """Answer every line of a batch that has not run yet: it ends `completed` at once."""
        if b["status"] != "validating":
            return b
        lines = [json.loads(x) for x in self.files[b["input_file_id"]]["data"].splitlines() if x.strip()]
        out: list[Any] = []
        for n, line in enumerate(lines):
            cid = line["custom_id"]
            self.answered[cid] += 1
            text, self.odd["pad"] = f"{self.odd['text']} {cid}" + "x" * self.odd["pad"], 0
            answer = self._answer(b["id"], n, line, text, 1)
            response = {"status_code": 200, "request_id": f"req_{n}", "body": answer}
            if self.odd["output"] == "messy":
                other = {"status_code": 200, "request_id": "req_x", "body": answer}
                out += ["{not json", {"custom_id": f"made-up-{n}", "response": other, "error": None}]
                out.append({"custom_id": cid, "response": {"body": answer}, "error": None})
            out.append({"id": f"batch_req_{n}", "custom_id": cid, "response": response, "error": None})
            if self.odd["output"] == "messy":
                again = self._answer(b["id"], n, line, "a second answer", 100)
                response = {"status_code": 200, "request_id": f"req_{n}", "body": again}
                out.append({"custom_id": cid, "response": response, "error": None})
        if self.odd["output"] == "messy":  # and a line for each line of the other batches: not this batch's
            for o in self.batches.values():
                theirs = self.files[o["input_file_id"]]["data"].splitlines() if o is not b else []
                for n, raw in enumerate(theirs):
                    line = json.loads(raw)
                    wrong = self._answer(b["id"], n, line, "not this batch's", 1)
                    response = {"status_code": 200, "request_id": "req_y", "body": wrong}
                    out.append({"custom_id": line["custom_id"], "response": response, "error": None})
        oid = self._id("file")
        data = b"".join((x if isinstance(x, str) else json.dumps(x)).encode() + b"\n" for x in out)
        self._store(oid, f"{b['id']}_output.jsonl", "batch_output", data)
        b.update(
            status="completed",
            output_file_id="file-gone" if self.odd["output"] == "404" else self.odd["output_file"] or oid,
            request_counts={"total": len(lines), "completed": len(lines), "failed": 0},
        )
        return b

    @staticmethod
    def _answer(bid: str, n: int, line: dict[str, Any], text: str, scale: int) -> dict[str, Any]:
        return {
            "id": f"resp_{bid}_{n}",
            "object": "response",
            "status": "completed",
            "model": line["body"].get("model", "gpt-test"),
            "output": [
                {
                    "type": "message",
                    "id": f"msg_{bid}_{n}",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "usage": {"input_tokens": 10 * scale, "output_tokens": 5 * scale, "total_tokens": 15 * scale},
        }

    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        self.counts["polls"] += 1
        b = self.batches.get(request.match_info["bid"])
        if b is None:
            return _error(404, "No such batch")
        other = self.odd["poll_as"]
        if self.odd["status"] is not None:
            return _json({**b, "status": self.odd["status"]})
        if self.odd["fail_errors"] is not None:
            return _json({**b, "status": "failed", "errors": self.odd["fail_errors"]})
        return _json(self._run(self.batches.get(other, b)))

    async def list_batches(self, request: web.Request) -> web.StreamResponse:
        self.counts["batch_lists"] += 1
        items = list(reversed(self.batches.values()))
        return _json(_page(items, request.query.get("after"), self.odd["batches_loop"]))

    async def set_odd(self, request: web.Request) -> web.StreamResponse:
        self.odd.update(await request.json())
        return _json(self.odd)

    async def stats(self, request: web.Request) -> web.StreamResponse:
        batches = {k: b["status"] for k, b in self.batches.items()}
        return _json({**self.counts, "batches": batches, "most_runs_of_a_line": max(self.answered.values(), default=0)})


def make_app() -> web.Application:
    server = Server()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/files", server.upload)
    app.router.add_get("/v1/files", server.list_files)
    app.router.add_get("/v1/files/{fid}/content", server.content)
    app.router.add_post("/v1/batches", server.create)
    app.router.add_get("/v1/batches", server.list_batches)
    app.router.add_get("/v1/batches/{bid}", server.retrieve)
    app.router.add_post("/_odd", server.set_odd)
    app.router.add_get("/_stats", server.stats)
    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1] if site._server and site._server.sockets else port  # type: ignore[union-attr]
    print(f"listening on http://{host}:{bound}/v1", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(a.host, a.port))


if __name__ == "__main__":
    main(sys.argv[1:])
