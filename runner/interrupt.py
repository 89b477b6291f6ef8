"""SIGINT and SIGTERM outside the run's own graceful stop: one line and exit 130 / 143, never a traceback.

Three phases:
- start-up (imports, argument parsing) and the way out (printing, interpreter shutdown): there is nothing
  to save, so a signal prints `runner: interrupted` and ends the process at once (`leave_at_once`);
- a command's work (store open, migrations, submit, export): a signal unwinds it (`unwind`). SIGINT keeps
  Python's own handler, so asyncio's runner can cancel its main task cleanly, and SIGTERM is sent down the
  same path; the CLI catches the KeyboardInterrupt and exits with `exit_code()`;
- `runner run`: the worker's signal receiver takes over (drain in-flight requests, then stop).

The command then leaves through `exit_now`, without the interpreter's finalization: that is where Python
puts every signal back to its default action, so a Ctrl-C in the last milliseconds would end the process
silently instead of with the line.

This module imports only the standard library so that `runner.__main__` can install it before anything
heavy loads.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from types import FrameType
from typing import NoReturn

MESSAGE = "runner: interrupted"
_received: list[int] = []
# A signal ignored by whoever started us stays ignored (a background job of a script ignores Ctrl-C).
_INHERITED_IGNORE = frozenset(s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) == signal.SIG_IGN)


def exit_code() -> int:
    """128 + the signal that interrupted the command (130 for SIGINT, also when none was recorded)."""
    return 128 + (_received[0] if _received else int(signal.SIGINT))


def _leave_now(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    try:
        os.write(2, (MESSAGE + "\n").encode())
    finally:
        os._exit(exit_code())


def _as_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handled exactly as SIGINT would be now (asyncio's runner may have its own SIGINT handler)."""
    _received.append(signum)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
        return
    raise KeyboardInterrupt


def leave_at_once() -> None:
    """A signal ends the process now with the one-line message (nothing is open that needs closing)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if sig not in _INHERITED_IGNORE:
            signal.signal(sig, _leave_now)


def unwind() -> None:
    """A signal raises KeyboardInterrupt where the command is, so that it unwinds and closes what it opened.

    Also call it after an event loop that handled signals itself: asyncio puts SIGTERM back to the
    default action (die silently) when it lets go of it.
    """
    if signal.SIGINT not in _INHERITED_IGNORE:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.SIGTERM not in _INHERITED_IGNORE:
        signal.signal(signal.SIGTERM, _as_interrupt)


def quiet_threads() -> None:
    """From now on a thread's uncaught exception prints nothing: the command was interrupted and is ending.

    A library's worker thread (aiosqlite's, whose connection's close the interrupt cut short) may finish
    its last call after the event loop has closed and fail handing the result back; its traceback would
    follow `runner: interrupted`, about nothing the user can act on.
    """
    threading.excepthook = lambda args: None


def exit_now(code: object) -> NoReturn:
    """Flush stdout and stderr and end the process with `code` (a SystemExit code), skipping finalization.

    Only for the `runner` command itself, once the command has returned and closed what it opened.
    """
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # SystemExit("message"): Python prints the message and exits 1
        sys.stderr.write(f"{code}\n")
        status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`runner export | head`): nothing to add
            stream.flush()
    os._exit(status)
