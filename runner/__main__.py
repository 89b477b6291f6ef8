"""`python -m runner` and the `runner` command.

Signal handling is installed before anything heavy is imported: loading the CLI takes most of a second,
and a Ctrl-C in that time must end with one line, not a KeyboardInterrupt traceback.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys

from runner import VERSION_LINE, interrupt


def _stdout_closed_as_a_pipe() -> None:
    """Started with stdout closed (`runner export >&-`), Python has no sys.stdout and the first print was an
    AttributeError traceback. Descriptor 1 becomes a pipe nobody reads: every write then fails as into
    `| head -0` (exit 141, nothing else printed), and no file the command opens can take descriptor 1."""
    if sys.stdout is not None:
        return
    read, write = os.pipe()  # descriptor 1 is free: one of these takes it
    if write != 1:
        os.dup2(write, 1)  # closes `read` if it took descriptor 1
        os.close(write)
    if read != 1:
        os.close(read)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115 - the process's stdout


def main() -> None:
    """Entry point of the `runner` command."""
    interrupt.leave_at_once()
    _stdout_closed_as_a_pipe()
    if sys.argv[1:] == ["--version"]:  # answered before the CLI (all its commands' imports) is loaded
        with contextlib.suppress(OSError):  # a closed pipe (`runner --version | head -0`): nothing to add
            sys.stdout.write(f"{VERSION_LINE}\n")
        interrupt.exit_now(0)
    # Loading the CLI makes ~70,000 objects (modules, classes, functions) that live as long as the process, and
    # the cyclic collector scanned them again and again for nothing: 166 collections while importing, 21 more
    # in a `runner status`. So the collector is off while importing and what was loaded is frozen (never
    # scanned again); objects made after it are collected as always. `runner status`: 0.377 -> 0.339 CPU-s.
    gc.disable()
    try:
        from runner.cli import main as cli_main
        from runner.files import whole_stdout
    finally:
        gc.freeze()
        gc.enable()

    whole_stdout()

    try:
        cli_main()
    except SystemExit as e:
        interrupt.exit_now(e.code)
    interrupt.exit_now(0)


if __name__ == "__main__":
    main()
