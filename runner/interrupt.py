"""SIGINT, SIGTERM and SIGHUP outside the run's own graceful stop: one line and exit 130 / 143 / 129, never a
traceback.

Three phases:
- start-up (imports, argument parsing) and the way out (printing, interpreter shutdown): there is nothing
  to save, so a signal prints `runner: interrupted` and ends the process at once (`leave_at_once`);
- a command's work (store open, migrations, submit, export): a signal unwinds it (`unwind`). SIGINT keeps
  Python's own handler, so asyncio's runner can cancel its main task cleanly, and SIGTERM and SIGHUP are
  sent down the same path; the CLI catches the KeyboardInterrupt and exits with `exit_code()`;
- `runner run`: the worker's signal receiver takes over (drain in-flight requests, then stop).

The command then leaves through `exit_now`, without the interpreter's finalization: that is where Python
puts every signal back to its default action, so a Ctrl-C in the last milliseconds would end the process
silently instead of with the line.

This module imports only the standard library so that `runner.__main__` can install it before anything
heavy loads, and so that the run's own handlers (app, processes, ingest) can take `stop_signals()` from it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import termios
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

MESSAGE = "runner: interrupted"
_received: list[int] = []
# The signals that stop a command as Ctrl-C does, each ending it with 128 + its number. SIGHUP is a closed
# terminal (a dropped ssh session, a closed window): its default action killed a run on the spot, losing the
# answers on the wire (paid for, and sent again by the next run) and exiting 129 without a word.
_STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# A signal ignored by whoever started us stays ignored (a background job of a script ignores Ctrl-C, `nohup`
# ignores SIGHUP).
_INHERITED_IGNORE = frozenset(s for s in _STOPPING if signal.getsignal(s) == signal.SIG_IGN)


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals a command stops on (drains, for a run): SIGINT, SIGTERM, SIGHUP, less those ignored at start."""
    return tuple(s for s in _STOPPING if s not in _INHERITED_IGNORE)


# A stop signal that comes again this soon after the same one is one stop sent twice, not the user's "stop
# now": GNU `timeout` signals the command and then its process group, which holds the command, and `kill PID;
# kill -- -PGID` does the same. Taken as a second signal, it dropped every answer on the wire (paid for, and
# sent again by the next run): 20 of 150 lines in 3 of 6 tries. A person's second Ctrl-C comes after reading
# "Ctrl-C again to stop now"; one faster than this is asked for once more.
REPEAT_WINDOW = 0.25


class Repeats:
    """Tells a stop signal from the same signal delivered twice at once (see REPEAT_WINDOW)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[int, float] = {}  # signal -> when it last counted

    def counts(self, signum: int) -> bool:
        """Whether `signum` is a stop of its own (False: a repeat of one that just came)."""
        now = self._clock()
        last = self._last.get(signum)
        if last is not None and now - last < REPEAT_WINDOW:
            return False
        self._last[signum] = now
        return True


def exit_code() -> int:
    """128 + the signal that interrupted the command (130 for SIGINT, also when none was recorded)."""
    return 128 + (_received[0] if _received else int(signal.SIGINT))


def _hung_up(fd: int) -> bool:
    """Whether `fd` is a terminal that hung up (closed window, dropped ssh): its every write fails with EIO.

    A file, a pipe (ENOTTY) or a terminal still there is not: its reader may still read what comes.
    """
    try:
        termios.tcgetattr(fd)
    except termios.error as e:
        return bool(e.args) and e.args[0] == errno.EIO
    return False


def on_signal(signum: int) -> None:
    """A stop signal came. After a SIGHUP, output to a terminal that is gone goes to /dev/null from now on:
    a run that had drained and saved every answer then died on its summary line (EIO), exit 1 instead of 129.
    """
    if signum != signal.SIGHUP:
        return
    for fd in (1, 2):
        if _hung_up(fd):
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, fd)
                os.close(devnull)


def _leave_now(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    on_signal(signum)
    try:
        os.write(2, (MESSAGE + "\n").encode())
    finally:
        os._exit(exit_code())


def _as_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM or SIGHUP handled exactly as SIGINT would be now (asyncio's runner may have its own SIGINT handler)."""
    _received.append(signum)
    on_signal(signum)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
        return
    raise KeyboardInterrupt


def leave_at_once() -> None:
    """A signal ends the process now with the one-line message (nothing is open that needs closing)."""
    for sig in stop_signals():
        signal.signal(sig, _leave_now)


def unwind() -> None:
    """A signal raises KeyboardInterrupt where the command is, so that it unwinds and closes what it opened.

    Also call it after an event loop that handled signals itself: asyncio puts SIGTERM and SIGHUP back to
    the default action (die silently) when it lets go of them.
    """
    for sig in stop_signals():
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else _as_interrupt)


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
