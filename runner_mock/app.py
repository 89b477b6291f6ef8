"""The aiohttp application and running it in this event loop (`serve`), for tests and the command line."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from runner_mock.batches import MAX_UPLOAD_BYTES
from runner_mock.faults import QuietDisconnects
from runner_mock.knobs import Config
from runner_mock.routes import add_routes
from runner_mock.state import STATE_KEY, MockState

__all__ = ["build_app", "serve"]


def build_app(config: Config) -> web.Application:
    """Build the aiohttp application serving `config`; its state is `app[STATE_KEY]`."""
    # Batch input files may be 200 MB (aiohttp's default limit on a request body is 1 MB).
    app = web.Application(client_max_size=MAX_UPLOAD_BYTES)
    app[STATE_KEY] = MockState(config)
    add_routes(app)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, QuietDisconnects) for f in server_log.filters):
        server_log.addFilter(QuietDisconnects())
    return app


def _base_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


@contextlib.asynccontextmanager
async def _started(app: web.Application, host: str, port: int) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        yield _base_url(host, int(bound))
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serve(config: Config, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run a mock server in this event loop; yield its base URL, e.g. `http://127.0.0.1:PORT/v1`."""
    async with _started(build_app(config), host, port) as url:
        yield url
