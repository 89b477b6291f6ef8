"""The exit codes of the `runner` command, spelled once: the code returns them, `--help` and the README list them."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """How a `runner` command ended (the README's "Exit codes" table lists the same, a test keeps them equal)."""

    OK = 0
    FAILED = 1  # some requests failed
    USAGE = 2  # usage or input error; nothing was changed
    BILLING = 3  # stopped by a billing error
    BUDGET = 4  # a run stopped at its spending budget (--max-cost): the rest stays queued
    DOOMED = 5  # the whole job cannot succeed as configured (bad key, wrong base URL, server unreachable)
    SIGHUP = 129  # the terminal closed (runner/interrupt.py): stopped as on SIGINT
    SIGINT = 130
    PIPE = 141  # stdout was closed early (`runner export JOB | head`): 128 + SIGPIPE, as `cat` would exit
    SIGTERM = 143

    @property
    def summary(self) -> str:
        """A few words for the `--help` epilog."""
        return _SUMMARY[self]


_SUMMARY = {
    ExitCode.OK: "ok",
    ExitCode.FAILED: "some requests failed",
    ExitCode.USAGE: "usage or input error",
    ExitCode.BILLING: "billing stop",
    ExitCode.BUDGET: "stopped at the budget (--max-cost)",
    ExitCode.DOOMED: "job doomed (bad key, wrong base URL, server unreachable)",
    ExitCode.SIGHUP: "SIGHUP",
    ExitCode.SIGINT: "SIGINT",
    ExitCode.PIPE: "output pipe closed",
    ExitCode.SIGTERM: "SIGTERM",
}


def epilog() -> str:
    """The `runner --help` epilog: every exit code with its meaning."""
    return "Exit codes: " + ", ".join(f"{int(c)} {c.summary}" for c in ExitCode) + "."
