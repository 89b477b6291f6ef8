"""A fast, deterministic fake of the OpenAI Responses API, for the demo, the tests and the benchmarks.

It ships in the same wheel as `runner` but imports nothing from it, on purpose: tests treat it as an
outside party (an import-linter contract in pyproject.toml checks this). Run it with
`python -m runner_mock` or `runner mock-server`.

Routes, under any prefix that ends in `/v1` (`/v1/responses`, or Azure-style `/openai/v1/responses`):

    POST /v1/responses                create (foreground or `background: true`)
    GET  /v1/responses/{id}           current Response object
    POST /v1/responses/{id}/cancel    cancel a background response (idempotent)
    GET  /_mock/stats                 counters and summed usage (admin, no key needed)
    POST /_mock/config                change `Config` knobs at runtime (admin, no key needed)

Every other path and method gets a 404 with an OpenAI-style error body, as the real API answers
(`Invalid URL (POST /responses)`), so a base URL without `/v1` fails in the demo as it would for real.

The parts, by what each owns:

    knobs.py     `Config`, declared once; the flags and the `/_mock/config` checks derive from it
    state.py     one instance's memory: stored responses, counters and usage (`/_mock/stats`), rate windows
    content.py   request checks and Response objects, pure functions of the request body
    replies.py   the error body and the headers every reply carries
    faults.py    401, 429, 404 and dropped connections
    routes.py    the aiohttp handlers
    app.py       `build_app` and `serve` (in this event loop, for tests)
    cli.py       the command line
"""

from runner_mock.app import build_app, serve
from runner_mock.cli import main
from runner_mock.content import usage_for
from runner_mock.knobs import Config
from runner_mock.state import STATE_KEY, MockState, format_duration

__all__ = [
    "STATE_KEY",
    "Config",
    "MockState",
    "build_app",
    "format_duration",
    "main",
    "serve",
    "usage_for",
]
