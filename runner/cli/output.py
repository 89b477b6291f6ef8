"""What every command shares: running its async part, printing, logging, and the store notices.

Everything printed that came from a server or a file (error codes and messages, custom_ids, model names,
job names, paths) goes through `runner.term.printable`, so it cannot drive the terminal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

from runner import interrupt
from runner.display import err
from runner.term import printable

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")

T = TypeVar("T")


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """anyio.run, then re-arm SIGTERM: asyncio resets it to the default (die silently) when it lets go."""

    async def main() -> T:
        try:
            return await fn()
        except Exception as e:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # A Ctrl-C cancels this task mid-statement; a library that caught the cancellation then fails
                # on the connection it left behind (a migration's next statement: "invalid transaction").
                # That error is the interrupt's, and is reported as one.
                raise asyncio.CancelledError from e
            raise
        finally:
            await _end_leftover_tasks()

    try:
        return anyio.run(main)
    except asyncio.CancelledError:
        # asyncio's runner turns a Ctrl-C (and SIGTERM, runner/interrupt.py) into a cancel of the main task and
        # raises KeyboardInterrupt only if that task took exactly the one cancel; a signal that lands before
        # the task has started comes out as the CancelledError itself. Nothing else cancels the main task.
        interrupt.quiet_threads()
        raise KeyboardInterrupt from None
    except KeyboardInterrupt:
        interrupt.quiet_threads()
        raise
    except BaseExceptionGroup as group:
        # A signal's KeyboardInterrupt (runner/interrupt.py) raised where a task was, inside a task group, comes
        # out grouped: a SIGTERM during a big PostgreSQL submit ended in this traceback instead of one line.
        if group.subgroup(KeyboardInterrupt) is None:
            raise
        interrupt.quiet_threads()
        raise KeyboardInterrupt from None
    finally:
        interrupt.unwind()


async def _end_leftover_tasks() -> None:
    """Cancel what libraries left running, again until it ends (at most ~1 s), before asyncio shuts down.

    SQLAlchemy closes an invalidated aiosqlite connection in a task of its own; when that connection's
    thread has already stopped (the store file vanished under a run, say), the close waits on a future no
    thread will ever answer, and one cancel only moves it to a second such wait. asyncio's own shutdown
    cancels once and then waits forever: the process hung instead of exiting 2.
    """
    current = asyncio.current_task()
    for _ in range(10):
        left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not left:
            return
        for t in left:
            t.cancel()
        await asyncio.wait(left, timeout=0.1)


_json_lines = False  # --log-format json: every line on stderr is one JSON object (setup_logging)


def say(text: str, *, level: str = "info") -> None:
    """A message on stderr (no markup, no emoji codes: parts of it may come from outside, escaped by callers).

    Under `--log-format json` it is a JSON object like a log line's (`level` as given), not text: warnings,
    the run's summary and a command's one-line error came out as text among the JSON log lines.
    """
    if _json_lines:
        text = _json_doc(time.time(), level, "runner", text)
    err.out(text, highlight=False)


def json_lines() -> bool:
    """Whether stderr carries JSON objects (`--log-format json`): no live display then."""
    return _json_lines


def _json_doc(created: float, level: str, logger: str, message: str, exception: str | None = None) -> str:
    doc: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created * 1000) % 1000:03d}Z",
        "level": level,
        "logger": logger,
        "message": message,
    }
    if exception is not None:
        doc["exception"] = exception
    return json.dumps(doc, ensure_ascii=False)  # JSON escapes control characters and newlines


def put(line: str) -> None:
    """A line on stdout (the command's result)."""
    sys.stdout.write(line + "\n")


def when(ts: float) -> str:
    """A local date and minute, for job lists."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


class _StoreNotices(logging.Handler):
    """Says which store a command uses, once per path: "created store PATH" always, "using store PATH" at -v."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[object] = set()

    def emit(self, record: logging.LogRecord) -> None:
        path = record.args[0] if isinstance(record.args, tuple) and record.args else record.msg
        if path not in self._seen:
            self._seen.add(path)
            say(printable(record.getMessage()))


def show_store_notices(verbose: bool) -> None:
    """Route the store's "created/using store PATH" log lines to stderr as plain notices."""
    notices = logging.getLogger("runner.store.place")
    notices.setLevel(logging.DEBUG if verbose else logging.INFO)
    notices.propagate = False
    notices.addHandler(_StoreNotices())


class _LogFormatter(logging.Formatter):
    """Text or JSON log lines; text from outside is escaped, and the API key never appears."""

    def __init__(self, style: str, secret: str | None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.json = style == "json"
        self.secret = secret

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if self.json:
            exception = self.formatException(record.exc_info) if record.exc_info else None
            text = _json_doc(record.created, record.levelname.lower(), record.name, message, exception)
        else:
            plain = logging.makeLogRecord({**record.__dict__, "msg": printable(message), "args": None})
            text = super().format(plain)
        return text.replace(self.secret, "***") if self.secret else text


class _LogHandler(logging.Handler):
    """Log lines through the console, so that they appear above the live display instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            err.out(self.format(record), highlight=False)  # formatted already, JSON or text
        except Exception:
            self.handleError(record)


def setup_logging(level: str | None, style: str, *, verbose: bool, secret: str | None) -> None:
    """Log lines on stderr at `level` (from Settings: the flag, else RUNNER_LOG_LEVEL), as text or JSON;
    `secret` is masked."""
    global _json_lines
    _json_lines = style == "json"
    level = level or ("debug" if verbose else "warning")
    handler = _LogHandler()
    handler.setFormatter(_LogFormatter(style, secret))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Request bodies and keys must never reach a log line, whatever the level.
    for noisy in ("httpx", "httpcore", "aiohttp", "sqlalchemy", "aiosqlite", "alembic", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("asyncio").addFilter(_spare_graceful_close)


def _spare_graceful_close(record: logging.LogRecord) -> bool:
    """Drop asyncio's "Task was destroyed but it is pending" for SQLAlchemy's graceful close of an SQLite
    connection, which printed an ERROR line at the end of a command (seen under load, when a store query was
    cancelled as its task group ended). SQLAlchemy shields that close, is cancelled again while it waits, and
    then force-closes the connection: the task left behind has nothing to do, and nothing was lost."""
    return "_terminate_graceful_close" not in record.getMessage()
