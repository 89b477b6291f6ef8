"""A deliberately misbehaving Responses API server, for the tests of what the runner trusts.

Standalone on purpose: it imports nothing of `runner`, so the runner cannot share a bug with its own test
server. One process serves every scenario; a request picks its scenario by its `input` text
(`"scenario:<name>"`, see SCENARIOS). It counts the POSTs per scenario (GET /_stats), so a test can check
that a second run sends nothing already answered.

    python tests/servers/misbehaving.py --port 0     # prints "listening on http://127.0.0.1:PORT/v1"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]

ESCAPES = "bad\x1b[2J\x1b]0;owned\x07code"
ESCAPE_MESSAGE = "line one\r\nline two \x1b[31mred\x1b[0m \x08\x00 end"


def _response(rid: str, *, status: str = "completed", usage: Any = None, text: str = "fine") -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": rid,
        "object": "response",
        "status": status,
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
    }
    if status != "queued":
        body["usage"] = usage if usage is not None else {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8}
    return body


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json", headers=headers)


def _raw(text: str, status: int = 200, content_type: str = "application/json") -> web.Response:
    return web.Response(status=status, body=text.encode(), content_type=content_type)


# -- scenarios: each answers a POST /v1/responses ----------------------------------------------------------

# Usage blocks of every wrong kind and size (2^63 and 2^64 do not fit a signed 64-bit integer).
# Answers of a priced model (gpt-4.1-mini: $0.40 input, $0.10 cached input, $1.60 output per 1M tokens).
PRICED_USAGES: dict[str, Any] = {
    "priced_cached_over": {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 1_000_000}, "output_tokens": 3},
    "priced_million": {"input_tokens": 1_000_000, "output_tokens": 1_000_000},
}
USAGES: dict[str, Any] = {
    "usage_2p63": {"input_tokens": 2**63, "output_tokens": 1, "total_tokens": 2**63 + 1},
    "usage_2p64": {"input_tokens": 5, "output_tokens": 2**64 - 1, "total_tokens": 2**64 + 4},
    "usage_negative": {"input_tokens": -5, "output_tokens": 3, "total_tokens": -2},
    "usage_float": {"input_tokens": 1.5, "output_tokens": 3, "total_tokens": 4.5},
    "usage_string": {"input_tokens": "12", "output_tokens": 3, "total_tokens": 15},
    "usage_bool": {"input_tokens": True, "output_tokens": 3, "total_tokens": 4},
    "usage_near_2p63": {"input_tokens": 2**62 + 7, "output_tokens": 2**62 + 9, "total_tokens": 2**63 - 1},
    "usage_details": {
        "input_tokens": 5,
        "input_tokens_details": {"cached_tokens": 2**70},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": -1},
        "total_tokens": 8,
    },
    "usage_not_object": "lots",
}

# 200s whose x-ratelimit-* headers are broken in every way: none may crash the reply's reading.
RATE_HEADERS: dict[str, dict[str, str]] = {
    "rl_inf": {
        "x-ratelimit-limit-requests": "inf",
        "x-ratelimit-remaining-requests": "1e999",
        "x-ratelimit-reset-requests": "inf",
        "x-ratelimit-limit-tokens": "1e999",
        "x-ratelimit-remaining-tokens": "-inf",
        "x-ratelimit-reset-tokens": "1e999s",
    },
    "rl_nan": {
        "x-ratelimit-limit-requests": "nan",
        "x-ratelimit-remaining-requests": "nan",
        "x-ratelimit-reset-requests": "nan",
        "x-ratelimit-limit-tokens": "NaN",
    },
    "rl_negative": {
        "x-ratelimit-limit-requests": "-100",
        "x-ratelimit-remaining-requests": "-1",
        "x-ratelimit-reset-requests": "-5s",
    },
    "rl_huge": {
        "x-ratelimit-limit-requests": "9" * 400,
        "x-ratelimit-limit-tokens": "1" + "0" * 30,
        "x-ratelimit-remaining-tokens": "9" * 400,
        "x-ratelimit-reset-tokens": "9" * 400 + "h",
    },
    "rl_garbage": {
        "x-ratelimit-limit-requests": "lots",
        "x-ratelimit-remaining-requests": "0x10",
        "x-ratelimit-reset-requests": "soon",
        "x-ratelimit-reset-tokens": "1m-3s",
    },
}

# Retry-After of every wrong kind, on a 503 (a wait for that request) or, where the wait it stands for is
# short, a 429 (a pause of the whole pool). The test runs with one attempt per request.
RETRY_AFTER_429 = frozenset({"ra_nan", "ra_negative", "ra_garbage", "ra_1970"})
RETRY_AFTERS: dict[str, dict[str, str]] = {
    "ra_inf": {"retry-after": "inf"},
    "ra_1e999": {"retry-after": "1e999", "retry-after-ms": "1e999"},
    "ra_nan": {"retry-after": "nan", "retry-after-ms": "nan"},
    "ra_negative": {"retry-after": "-30", "retry-after-ms": "-5"},
    "ra_huge": {"retry-after": "9" * 400},
    "ra_garbage": {"retry-after": "tomorrow-ish", "retry-after-ms": "soon"},
    "ra_1970": {"retry-after": "Thu, 01 Jan 1970 00:00:00 GMT"},
    "ra_9999": {"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"},
    "ra_year_overflow": {"retry-after": "Fri, 31 Dec 99999999999999999999 23:59:59 GMT"},
}

# 200s with a JSON object whose fields are of the wrong kind.
ODD_FIELDS: dict[str, dict[str, Any]] = {
    "status_list": {"id": "resp_odd", "status": ["queued"], "output": "none"},
    "status_object": {"id": "resp_odd", "status": {"completed": True}, "error": "text"},
    "status_number": {"id": "resp_odd", "status": 200, "output": [1, None, {"type": "message", "content": 5}]},
}

_VLLM_404 = {"message": "The model `x` does not exist.", "type": "NotFoundError", "param": None, "code": 404}
NOT_FOUND_404: dict[str, Any] = {
    # vLLM (serving_engine._check_model), and its older flat ErrorResponse.
    "vllm_404": {"error": _VLLM_404},
    "vllm_404_flat": {"object": "error", **_VLLM_404},
    "litellm_404": {
        "error": {
            "message": "litellm.NotFoundError: NotFoundError: OpenAIException - The model `x` does not exist",
            "type": None,
            "param": None,
            "code": "404",
        }
    },
    # Words no rule knows: after the same endpoint has answered, still only this line's.
    "unknown_404": {"error": {"message": "Not found", "code": None}},
}
# Completed 200s whose `id` is not a response id: too long, empty, a number; `.` and `..` are steps in a URL
# path (`runner cancel` sent POST /v1/responses/cancel and /v1/cancel for them).
ODD_IDS: dict[str, Any] = {"id_long": "r" * 300, "id_empty": "", "id_number": 12345, "id_dot": ".", "id_dotdot": ".."}

# 200s whose bodies are not JSON objects.
BODIES: dict[str, str] = {
    "body_array": "[1, 2, 3]",
    "body_string": '"a string"',
    "body_null": "null",
    "body_number": "12",
    "body_html": "<html><body>hello</body></html>",
    "body_truncated": '{"id": "resp_x", "status": "comp',
    "body_inf": '{"id": "resp_x", "status": "completed", "usage": {"input_tokens": 1e999}}',
    # Valid JSON, nested deeper than a JSON writer may go: it parses, but cannot be written back out.
    "body_deep": '{"id": "resp_x", "status": "completed", "output": ' + "[" * 400 + "]" * 400 + "}",
}


class Server:
    """State: POST counts per scenario, and the background responses handed out."""

    def __init__(self) -> None:
        self.posts: Counter[str] = Counter()
        self.polls: Counter[str] = Counter()
        self.cancels: Counter[str] = Counter()
        self.cancelled: set[str] = set()
        self.created: dict[str, float] = {}  # loop time of each create, for responses that run a while
        self.seq = 0

    def new_id(self, scenario: str) -> str:
        self.seq += 1
        return f"resp_{scenario}_{self.seq}"

    async def create(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
            text = body["input"]
            scenario = text.split("scenario:", 1)[1].strip() if "scenario:" in text else "ok"
        except (ValueError, KeyError, TypeError, AttributeError):
            return _json({"error": {"message": "bad request body", "code": "bad"}}, status=400)
        self.posts[scenario] += 1
        return await self.answer(request, scenario, body)

    async def answer(self, request: web.Request, scenario: str, body: dict[str, Any]) -> web.StreamResponse:
        rid = self.new_id(scenario)
        if scenario in USAGES:
            return _json(_response(rid, usage=USAGES[scenario]))
        if scenario in PRICED_USAGES:
            return _json({**_response(rid, usage=PRICED_USAGES[scenario]), "model": "gpt-4.1-mini"})
        if scenario in RATE_HEADERS:
            return _json(_response(rid), headers=RATE_HEADERS[scenario])
        if scenario in RETRY_AFTERS:
            err = {"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}
            status = 429 if scenario in RETRY_AFTER_429 else 503
            return _json(err, status=status, headers=RETRY_AFTERS[scenario])
        if scenario in ODD_FIELDS:
            return _json(ODD_FIELDS[scenario])
        if scenario in BODIES:
            return _raw(BODIES[scenario])
        if scenario in ODD_IDS:
            return _json({**_response(rid), "id": ODD_IDS[scenario]})
        if scenario == "bad_gzip":
            # Says gzip, is not: the body cannot be decoded.
            return web.Response(
                body=b"this is not gzip", headers={"content-type": "application/json", "content-encoding": "gzip"}
            )
        if scenario == "escapes":
            err = {"error": {"message": ESCAPE_MESSAGE, "type": "invalid_request_error", "code": ESCAPES}}
            return _json(err, status=400)
        if scenario == "usage_chat":  # usage in Chat Completions words (a server behind such an engine)
            return _json(_response(rid, usage={"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49}))
        if scenario == "bom_ok":  # a byte order mark before good JSON (some Windows-hosted gateways)
            return web.Response(
                body=b"\xef\xbb\xbf" + json.dumps(_response(rid)).encode(), content_type="application/json"
            )
        if scenario == "surrogate_ok":  # a lone surrogate escape in the answer: JSON's grammar takes it
            return _raw(json.dumps(_response(rid, text="half \ud83d of an emoji")))
        if scenario in NOT_FOUND_404:  # a 404 for this line's model, in the words of servers other than OpenAI
            return _json(NOT_FOUND_404[scenario], status=404)
        if scenario in ("key_echo_json", "key_echo_ok"):
            # A gateway (or a model) echoing the Authorization header it was sent: into an OpenAI error's message
            # and code, into the answer itself, and as the request id. The runner keeps none of it.
            echoed = request.headers.get("authorization", "")
            if scenario == "key_echo_ok":
                return _json(_response(rid, text=f"you sent {echoed}"), headers={"x-request-id": echoed})
            err = {"error": {"message": f"bad header {echoed}", "type": "invalid_request_error", "code": echoed}}
            return _json(err, status=400, headers={"x-request-id": echoed})
        if scenario == "not_openai_400":
            # A proxy's own error page, echoing what it was sent (the key included): the runner must keep
            # the text and never the key.
            echoed = request.headers.get("authorization", "")
            return _raw(f"400 Bad Request from the gateway. You sent: {echoed}", 400, "text/plain")
        if scenario == "error_deep":
            deep = "[" * 400 + "]" * 400
            text = '{"error": {"message": "deep", "type": "invalid_request_error", "code": "deep", "param": %s}}'
            return _raw(text % deep, 400)
        if scenario == "rl_dry":
            # The request budget (shared with other clients) ran dry: the pool must wait for the reset.
            headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "30s"}
            return _json(_response(rid), headers=headers)
        if scenario == "brotli_unasked":
            # Says br, which the runner never offers (and cannot decode without the Brotli package).
            return web.Response(
                body=b'{"id": "resp_br"}', headers={"content-type": "application/json", "content-encoding": "br"}
            )
        if scenario == "pause_429":
            # The budget ran out, and the server asks for a wait far past the runner's cap: the pool pauses 300 s.
            err = {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
            return _json(err, status=429, headers={"retry-after": "1e12"})
        if scenario == "pay_402_plain":
            # A gateway's 402 with no OpenAI error object, hence no code.
            return _raw("Payment Required", 402, "text/plain")
        if scenario == "text_nul":
            # A NUL in the answer (JSON escapes it as \u0000): SQLite's JSON functions end a string there.
            return _json(_response(rid, text="before\x00after, and the rest"))
        if scenario == "big_header":
            return _json(_response(rid), headers={"x-request-id": "r" * 10_000})
        if scenario == "trickle":
            return await self.trickle(request, rid)
        if scenario == "bg_hint_zero":
            self.created[rid] = asyncio.get_running_loop().time()
            return _json(_response(rid, status="queued"), headers={"openai-poll-after-ms": "0"})
        if scenario.startswith("bg_id_"):  # a background create answered with an id that is none
            return _json({**_response(rid, status="queued"), "id": ODD_IDS[scenario.removeprefix("bg_")]})
        if scenario == "bg_dupid":
            # A proxy whose response cache keys loosely: every create gets the first one's response.
            return _json(_response("resp_bg_dupid_0", status="queued"))
        if scenario.startswith("bg_"):
            return _json(_response(rid, status="queued"))
        return _json(_response(rid), headers={"x-request-id": f"req_{rid}"})

    async def trickle(self, request: web.Request, rid: str) -> web.StreamResponse:
        """A good reply, one byte every 0.2 s: each byte arrives well within a read timeout."""
        data = json.dumps(_response(rid)).encode()
        resp = web.StreamResponse(status=200, headers={"content-type": "application/json"})
        resp.content_length = len(data)
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError, RuntimeError):
            for i in range(len(data)):
                await resp.write(data[i : i + 1])
                await asyncio.sleep(0.2)
            await resp.write_eof()
        return resp

    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        rid = request.match_info["rid"]
        scenario = rid.split("_", 1)[1].rsplit("_", 1)[0] if rid.count("_") >= 2 else ""
        self.polls[scenario] += 1
        if scenario == "bg_other_id":
            # Somebody else's answer: a proxy mixing up ids, or a cache keyed wrongly.
            return _json(_response("resp_someone_else", text="not yours"))
        if scenario == "bg_inf_headers":
            return _json(_response(rid), headers=RATE_HEADERS["rl_inf"])
        if scenario == "bg_hint_zero" and asyncio.get_running_loop().time() - self.created.get(rid, 0.0) < 1.0:
            # Running for a second, and saying on every reply to poll again at once.
            return _json(_response(rid, status="in_progress"), headers={"openai-poll-after-ms": "0"})
        if scenario == "bg_get_503" or (scenario == "bg_get_503_twice" and self.polls[scenario] <= 2):
            # The response was created, but reading it back fails: always, or for its first two GETs.
            err = {"error": {"message": "The server is overloaded.", "type": "server_error", "code": "overloaded"}}
            return _json(err, status=503)
        if scenario == "bg_pending" or (scenario == "bg_pending_twice" and self.polls[scenario] <= 2):
            # A status the runner does not know (a newer API's, or a proxy's own): always, or for two GETs.
            return _json(_response(rid, status="pending"))
        if scenario.startswith("bg_running"):
            # Runs until it is cancelled, so that a test can cancel it.
            return _json(_response(rid, status="cancelled" if rid in self.cancelled else "in_progress"))
        return _json(_response(rid))

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        rid = request.match_info["rid"]
        scenario = rid.split("_", 1)[1].rsplit("_", 1)[0] if rid.count("_") >= 2 else ""
        self.cancels[scenario] += 1
        if scenario == "bg_running_cancel_other_id":
            # Somebody else's finished answer, as a proxy mixing up ids would send: never this request's.
            return _json(_response("resp_someone_else", text="not yours"))
        self.cancelled.add(rid)
        return _json(_response(rid, status="cancelled"))

    async def stats(self, request: web.Request) -> web.Response:
        return _json(
            {
                "posts": dict(self.posts),
                "polls": dict(self.polls),
                "cancels": dict(self.cancels),
                "total_posts": sum(self.posts.values()),
            }
        )


def make_app() -> web.Application:
    server = Server()
    app = web.Application()
    app.router.add_post("/v1/responses", server.create)
    app.router.add_get("/v1/responses/{rid}", server.retrieve)
    app.router.add_post("/v1/responses/{rid}/cancel", server.cancel)
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
