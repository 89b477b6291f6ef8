"""A command: its name, its options and its handler, declared together in the module of its group."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from runner import app
from runner.cli.exits import ExitCode
from runner.cli.output import run_async
from runner.errors import ConfigError

Handler = Callable[[argparse.Namespace], ExitCode]


@dataclass(frozen=True)
class Command:
    """One `runner` command. `options` adds its own flags (the global ones are added for every command)."""

    name: str
    help: str
    options: Callable[[argparse.ArgumentParser], None]
    run: Handler
    description: str | None = None


def newest_job(db: str | None) -> str:
    """The id of the newest job, for commands whose JOB_ID is optional."""
    all_jobs = run_async(lambda: app.jobs(db=db))
    if not all_jobs:
        raise ConfigError("no job was submitted yet: give a JOB_ID or run `runner submit FILE` first")
    return all_jobs[-1].job.id
