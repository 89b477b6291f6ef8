"""`python -m runner` and the `runner` command.

Signal handling is installed before anything heavy is imported: loading the CLI takes most of a second,
and a Ctrl-C in that time must end with one line, not a KeyboardInterrupt traceback.
"""

from __future__ import annotations

from runner import interrupt


def main() -> None:
    """Entry point of the `runner` command."""
    interrupt.leave_at_once()
    from runner.cli import main as cli_main

    try:
        cli_main()
    except SystemExit as e:
        interrupt.exit_now(e.code)
    interrupt.exit_now(0)


if __name__ == "__main__":
    main()
