"""The command line: `python -m runner_mock`, or `runner mock-server` (which runs this module)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from runner_mock import knobs
from runner_mock.app import serve
from runner_mock.knobs import Config

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mock-server",
        description="Fake OpenAI Responses API server, answering under /v1 (and any prefix ending in /v1).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8787, help="port to listen on; 0 picks a free port")
    knobs.add_flags(p)
    return p


async def _serve_forever(config: Config, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with serve(config, host, port) as url:
        print(f"mock-server listening on {url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (`python -m runner_mock`, `runner mock-server`)."""
    args = _parser().parse_args(argv)
    try:
        asyncio.run(_serve_forever(knobs.from_flags(args), args.host, args.port))
    except OSError as exc:
        print(f"mock-server: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        pass
