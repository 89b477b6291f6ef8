"""The `runner` command: one module per group of commands, each declaring its options beside its handler.

- `parser`: the registry of commands (`COMMANDS`) and the argument parser built from it;
- `submit`, `run`, `inspect`, `manage`: the commands, each a `Command(name, help, options, run)`;
- `options`: flags shared by commands; a flag for a `Settings` field takes its `[env: X]` from the model;
- `exits`: the `ExitCode` enum (the code, `--help` and the README's table);
- `output`: printing, logging, the async runner.

The CLI imports `runner.app` (and its own helpers `display`, `show`, `interrupt`), never the flow or the
store; nothing imports the CLI but `runner.__main__`, which arms the signals before loading it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from runner import app, interrupt
from runner.cli.exits import ExitCode
from runner.cli.options import settings
from runner.cli.output import say, setup_logging, show_store_notices
from runner.cli.parser import BY_NAME, MOCK_SERVER, build_parser, parse_args
from runner.errors import ConfigError, InputError, JobBusy, JobNotFound, RunnerError, StoreUnavailable
from runner.term import printable

__all__ = ["ExitCode", "build_parser", "main", "parse_args", "settings"]


def _quiet_stdout() -> None:
    """stdout's reader went away: send what is left to /dev/null so the exit does not complain either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _is_broken_pipe(e: BaseException) -> bool:
    if isinstance(e, BrokenPipeError):
        return True
    return isinstance(e, BaseExceptionGroup) and e.subgroup(BrokenPipeError) is not None


def _dispatch(ns: argparse.Namespace) -> tuple[int, str | None]:
    """Run the command; its exit code and the one-line message to end with, if any."""
    try:
        s = settings(ns)  # flags over environment: a bad value of any setting is one line here, exit 2
        secret = s.api_key.get_secret_value() if s.api_key is not None else None
        setup_logging(s.log_level, s.log_format, verbose=ns.verbose, secret=secret)
        show_store_notices(ns.verbose)
        return BY_NAME[ns.command].run(ns), None
    except KeyboardInterrupt:
        return interrupt.exit_code(), interrupt.MESSAGE.removeprefix("runner: ")
    except InputError as e:
        return ExitCode.USAGE, e.render()
    except (ConfigError, JobNotFound, JobBusy, StoreUnavailable) as e:
        return ExitCode.USAGE, str(e)
    except RunnerError as e:
        if ns.verbose:
            raise
        return ExitCode.FAILED, str(e)
    except (OSError, BaseExceptionGroup) as e:
        if _is_broken_pipe(e):
            _quiet_stdout()
            return ExitCode.PIPE, None
        if not isinstance(e, OSError):
            raise
        refused = app.refused_output(e)
        if refused is not None:
            return ExitCode.USAGE, str(refused)
        if ns.verbose:
            raise
        return ExitCode.FAILED, f"{type(e).__name__}: {e}"


def _fail(message: str, code: int) -> NoReturn:
    say(
        "\n".join(
            f"runner: {printable(line)}" if i == 0 else printable(line) for i, line in enumerate(message.split("\n"))
        ),
        level="error",
    )
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `runner` command (through runner.__main__, which arms the signals first)."""
    interrupt.leave_at_once()
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == MOCK_SERVER:
        # The fake API is a package of its own (runner_mock, in the same wheel) that runner never imports:
        # this process becomes it, keeping its pid, so whoever started it can still stop it with a signal.
        os.execv(sys.executable, [sys.executable, "-m", "runner_mock", *args[1:]])
    ns = parse_args(args)
    interrupt.unwind()
    code, message = _dispatch(ns)
    interrupt.leave_at_once()  # from here on there is nothing left to close: a signal just ends the exit
    if message is not None:
        _fail(message, code)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
        code = ExitCode.PIPE
    except OSError as e:
        # The command's last lines, still held in stdout's buffer, met a full disk.
        refused = app.refused_output(e)
        if refused is None:
            raise
        _quiet_stdout()
        _fail(str(refused), ExitCode.USAGE)
    sys.exit(code)
