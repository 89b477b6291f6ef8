"""A Responses API server that speaks HTTP the way foreign servers (gateways, proxies, self-hosted) do.

Standalone on purpose: it imports nothing of `runner`. It is written on raw asyncio sockets, not aiohttp's
server, so that it can misbehave at the HTTP level: redirect a POST, drop the connection after reading the
body or halfway through the reply, answer in HTTP/1.0, send 1xx heads, compress or claim to.

A request picks its scenario by its `input` text (`"scenario:<name>"`, see `Server.answer`). Three ports:

- the API (`listening on http://127.0.0.1:P/v1`);
- "another origin" (`other on http://127.0.0.1:Q`), the target of cross-origin redirects: it answers every
  request like the API would, and records whether it was sent an Authorization or api-key header;
- "a proxy" (`proxy on http://127.0.0.1:R`), which answers every request 502 and counts them, to be put in
  HTTP_PROXY and friends: a request that goes there went through the proxy.

`GET /_stats` on the API port: POSTs per scenario, what the other origin and the proxy saw.

    python tests/servers/foreign.py --port 0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import sys
import zlib
from collections import Counter
from typing import Any


def _gzip_bomb(mib: int) -> bytes:
    """`mib` MiB of spaces (JSON whitespace, endlessly) as about 1 KB of gzip per MiB, made in milliseconds.

    After the first MiB the window holds only spaces, so every further MiB compresses to the same bytes:
    they are repeated rather than compressed again. The stream has no end (no last block, no checksum): a
    reader that keeps to its limit stops long before it would notice.
    """
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b" " * (1 << 20)
    first = c.compress(block) + c.flush(zlib.Z_SYNC_FLUSH)
    again = c.compress(block) + c.flush(zlib.Z_SYNC_FLUSH)
    return first + again * (mib - 1)


REASONS = {
    200: "OK",
    204: "No Content",
    304: "Not Modified",
    404: "Not Found",
    502: "Bad Gateway",
    503: "Service Unavailable",
}

# What a server that is up but not serving answers every POST with, by the scenario that starts it: llama.cpp's
# llama-server while it loads its model, and nginx while the server behind it restarts.
UNAVAILABLE: dict[str, tuple[int, bytes, str]] = {
    "loading": (
        503,
        b'{"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}',
        "application/json",
    ),
    "gateway": (
        502,
        b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
        b"</center>\r\n<hr><center>nginx/1.24.0</center>\r\n</body>\r\n</html>\r\n",
        "text/html",
    ),
}


def _response(rid: str, text: str = "fine") -> dict[str, Any]:
    return {
        "id": rid,
        "object": "response",
        "status": "completed",
        "model": "gpt-test",
        "output": [
            {
                "type": "message",
                "id": f"msg_{rid}",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "usage": {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8},
    }


def _head(status: int, headers: list[tuple[str, str]], version: str = "HTTP/1.1", reason: str | None = None) -> bytes:
    lines = [f"{version} {status} {reason if reason is not None else REASONS.get(status, 'Whatever')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _reply(status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> bytes:
    hs = [("content-type", "application/json"), *(headers or []), ("content-length", str(len(body)))]
    return _head(status, hs) + body


class Request:
    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """One request off the connection; None at its end."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    first, *rest = head.decode("latin-1").split("\r\n")
    method, target, _ = first.split(" ", 2)
    headers: dict[str, str] = {}
    for line in rest:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    try:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return Request(method, target, headers, body)


class Server:
    def __init__(self) -> None:
        self.posts: Counter[str] = Counter()
        self.client_ids: dict[str, list[str]] = {}  # the x-client-request-id of each POST, per scenario
        self.other: list[dict[str, Any]] = []  # what the other origin was sent
        self.proxied: list[str] = []  # request lines the proxy was sent
        self.seq = 0
        self.port = 0
        self.other_port = 0
        self.host = "127.0.0.1"
        self.listener: asyncio.Server | None = None
        self.open: set[asyncio.StreamWriter] = set()  # the API's connections, closed by an outage
        self.down = False  # in an outage: a connection accepted before it but not yet served is closed unserved
        self.tasks: set[asyncio.Task[None]] = set()
        self.unavailable: tuple[int, bytes, str] | None = None  # what every POST is answered until `unavailable_until`
        self.unavailable_until = 0.0  # loop time

    def new_id(self, scenario: str) -> str:
        self.seq += 1
        return f"resp_{scenario}_{self.seq}"

    def stats(self) -> bytes:
        data = {"posts": dict(self.posts), "total_posts": sum(self.posts.values()), "client_ids": self.client_ids}
        data.update(other=self.other, proxied=self.proxied)
        return _reply(200, json.dumps(data).encode())

    # -- the API ------------------------------------------------------------------------------------------

    def go_down(self, seconds: float, current: asyncio.StreamWriter) -> None:
        """Down for a while, as a restarting server is: new connections refused, every other one closed now
        (before the reply on `current` goes out, so that no request slips in), back after `seconds`."""
        assert self.listener is not None
        self.down = True
        self.listener.close()
        for w in self.open - {current}:
            w.close()
        self.tasks.add(asyncio.create_task(self.come_back(seconds)))

    async def come_back(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.down = False
        self.listener = await asyncio.start_server(self.api, self.host, self.port, reuse_address=True)

    async def api(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            # Accepted just before the outage, its handler started only now (under load the loop is behind):
            # served, it answered every other line through the outage, and the run never met it.
            writer.close()
            return
        self.open.add(writer)
        try:
            while (req := await read_request(reader)) is not None:
                if req.method == "GET" and req.target == "/_stats":
                    writer.write(self.stats())
                elif req.method == "GET" and req.target.startswith("/v1/responses/"):
                    # A background response, polled: it has finished.
                    rid = req.target.rsplit("/", 1)[1]
                    writer.write(_reply(200, json.dumps(_response(rid)).encode()))
                elif req.method == "POST" and req.target.startswith("/v1/responses"):
                    keep = await self.answer(req, writer)
                    if not keep:
                        break
                else:
                    writer.write(_reply(404, b'{"error": {"message": "no such path", "code": "not_found"}}'))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.open.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def answer(self, req: Request, w: asyncio.StreamWriter) -> bool:
        """Answer one POST; False closes the connection."""
        try:
            sent = json.loads(req.body)
            text = sent["input"]
            scenario = text.split("scenario:", 1)[1].strip() if "scenario:" in text else "ok"
        except (ValueError, KeyError, TypeError, AttributeError):
            w.write(_reply(400, b'{"error": {"message": "bad request body", "code": "bad"}}'))
            return True
        if req.target != "/v1/responses":
            scenario = "followed:" + scenario  # a redirect that the client followed
        self.posts[scenario] += 1
        self.client_ids.setdefault(scenario, []).append(req.headers.get("x-client-request-id", ""))
        rid = self.new_id(scenario.replace(":", "_"))
        answer = _response(rid)
        if sent.get("background"):
            answer["status"] = "queued"  # polled with GET /v1/responses/{id}, which says it completed
            del answer["usage"]
        good = json.dumps(answer).encode()

        if scenario.startswith("redirect_"):
            # redirect_<status>_<same|other>[_...]: a gateway moving the API (http -> https, another path or host).
            _, status, where = scenario.split("_", 2)
            base = (
                f"http://127.0.0.1:{self.port}" if where.startswith("same") else f"http://127.0.0.1:{self.other_port}"
            )
            w.write(_reply(int(status), b"", [("location", f"{base}/v1/responses/moved?token=s3cret")]))
            return True
        first = self.posts[scenario] == 1
        now = asyncio.get_running_loop().time()
        if scenario.startswith(tuple(f"{k}_" for k in UNAVAILABLE)) and first:
            # <loading|gateway>_<seconds>: from this POST on, every POST is answered 503 "Loading model" (or 502
            # from nginx) for that long, as by a server restarting behind its open port (or a gateway's).
            kind, seconds = scenario.split("_")[:2]
            self.unavailable, self.unavailable_until = UNAVAILABLE[kind], now + float(seconds)
        if self.unavailable is not None and now < self.unavailable_until:
            status, body, content_type = self.unavailable
            w.write(_head(status, [("content-type", content_type), ("content-length", str(len(body)))]) + body)
            return True
        if scenario.startswith("always_503"):
            # One line the server cannot serve while it serves the others; it may be tried again at once.
            err = b'{"error": {"message": "The server had an error processing your request.", "type": "server_error"}}'
            w.write(_reply(503, err, [("retry-after", "0")]))
            return True
        if scenario.startswith("outage_") and first:
            # Answered, then down for outage_<seconds> (a server restarting: vLLM loading its model, a deploy).
            self.go_down(float(scenario.split("_")[1]), w)
            w.write(_reply(200, good, [("connection", "close")]))
            return False
        if scenario.startswith("drop_after_body") or (scenario.startswith("drop_once") and first):
            return False  # read the whole request, then hung up: the reply never comes
        if scenario == "half_body" or (scenario.startswith("half_once") and first):
            w.write(_head(200, [("content-type", "application/json"), ("content-length", str(len(good)))]))
            w.write(good[: len(good) // 2])
            return False
        if scenario == "half_chunked" or (scenario.startswith("half_chunked_once") and first):
            w.write(_head(200, [("content-type", "application/json"), ("transfer-encoding", "chunked")]))
            w.write(f"{len(good) // 2:x}\r\n".encode() + good[: len(good) // 2] + b"\r\n")
            return False
        if scenario == "chunked_trickle":
            # A good reply in chunks of 16 bytes, 20 ms apart: slow, but within any sane timeout.
            w.write(_head(200, [("content-type", "application/json"), ("transfer-encoding", "chunked")]))
            for i in range(0, len(good), 16):
                piece = good[i : i + 16]
                w.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                await w.drain()
                await asyncio.sleep(0.02)
            w.write(b"0\r\n\r\n")
            return True
        if scenario == "gzip":
            w.write(_reply(200, gzip.compress(good), [("content-encoding", "gzip")]))
            return True
        if scenario == "gzip_bomb":
            # 256 KB on the wire, 256 MiB once decoded: the body limit must count decoded bytes, as they come.
            w.write(_reply(200, _gzip_bomb(256), [("content-encoding", "gzip")]))
            return True
        if scenario == "deflate":
            w.write(_reply(200, zlib.compress(good), [("content-encoding", "deflate")]))
            return True
        if scenario == "text_plain":
            w.write(_head(200, [("content-type", "text/plain"), ("content-length", str(len(good)))]) + good)
            return True
        if scenario == "no_content_type":
            w.write(_head(200, [("content-length", str(len(good)))]) + good)
            return True
        if scenario == "charset_utf16":
            # The header says UTF-16; the body is UTF-8 (JSON is UTF-8 whatever a header says: RFC 8259).
            hs = [("content-type", "application/json; charset=utf-16"), ("content-length", str(len(good)))]
            w.write(_head(200, hs) + good)
            return True
        if scenario == "http10":
            # HTTP/1.0, no content-length: the body ends when the connection closes.
            w.write(_head(200, [("content-type", "application/json")], version="HTTP/1.0") + good)
            return False
        if scenario == "conn_close":
            w.write(_reply(200, good, [("connection", "close")]))
            return False
        if scenario.startswith("late_"):
            # Answered half a second late (a slow reply, not an error): in flight when an outage_ line is answered
            # beside it, so that it meets the outage (its connection closed) and is never answered first.
            await asyncio.sleep(0.5)
        if scenario == "early_hints":
            # A 1xx head (103 Early Hints, then a stray 100 Continue) before the real one.
            w.write(_head(103, [("link", "</style.css>; rel=preload")], reason="Early Hints"))
            w.write(_head(100, [], reason="Continue"))
            w.write(_reply(200, good))
            return True
        if scenario in ("status_204", "status_304"):
            w.write(_head(int(scenario[-3:]), [("x-request-id", f"req_{rid}")]))
            return True
        if scenario in ("status_600", "status_999", "status_099"):
            body = b'{"error": {"message": "odd status", "code": "odd"}}'
            w.write(_head(int(scenario[-3:]), [("content-length", str(len(body)))], reason="Odd") + body)
            return True
        w.write(_reply(200, good, [("x-request-id", f"req_{rid}")]))
        return True

    # -- another origin, and a proxy ----------------------------------------------------------------------

    async def other_origin(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while (req := await read_request(reader)) is not None:
                auth = {k: v for k, v in req.headers.items() if k in ("authorization", "api-key")}
                self.other.append({"method": req.method, "target": req.target, "auth": auth})
                self.seq += 1
                writer.write(_reply(200, json.dumps(_response(f"resp_other_{self.seq}", "from elsewhere")).encode()))
                await writer.drain()
        writer.close()

    async def proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while (req := await read_request(reader)) is not None:
                self.proxied.append(f"{req.method} {req.target}")
                writer.write(_reply(502, b'{"error": {"message": "the proxy says no", "code": "proxy"}}'))
                await writer.drain()
        writer.close()


async def serve(host: str, port: int) -> None:
    server = Server()
    api = server.listener = await asyncio.start_server(server.api, host, port)
    server.host = host
    other = await asyncio.start_server(server.other_origin, host, 0)
    proxy = await asyncio.start_server(server.proxy, host, 0)
    server.port = api.sockets[0].getsockname()[1]
    server.other_port = other.sockets[0].getsockname()[1]
    proxy_port = proxy.sockets[0].getsockname()[1]
    print(f"listening on http://{host}:{server.port}/v1", flush=True)
    print(f"other on http://{host}:{server.other_port}", flush=True)
    print(f"proxy on http://{host}:{proxy_port}", flush=True)
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
