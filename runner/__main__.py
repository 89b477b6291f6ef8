"""`python -m runner` and the `runner` command.

Signal handling is installed before anything heavy is imported: loading the CLI takes most of a second,
and a Ctrl-C in that time must end with one line, not a KeyboardInterrupt traceback.
"""

from __future__ import annotations

import contextlib
import sys

from runner import VERSION_LINE, interrupt


def main() -> None:
    """Entry point of the `runner` command."""
    interrupt.leave_at_once()
    if sys.argv[1:] == ["--version"]:  # answered before the CLI (all its commands' imports) is loaded
        with contextlib.suppress(OSError):  # a closed pipe (`runner --version | head -0`): nothing to add
            sys.stdout.write(f"{VERSION_LINE}\n")
        interrupt.exit_now(0)
    from runner.cli import main as cli_main

    try:
        cli_main()
    except SystemExit as e:
        interrupt.exit_now(e.code)
    interrupt.exit_now(0)


if __name__ == "__main__":
    main()
