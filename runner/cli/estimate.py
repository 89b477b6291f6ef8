"""`runner estimate`: what a file or a job will send and cost, before it runs."""

from __future__ import annotations

import argparse
import json

from runner import app
from runner.cli import options
from runner.cli.command import Command
from runner.cli.exits import ExitCode
from runner.cli.manage import duration
from runner.cli.options import setting
from runner.cli.output import put, run_async
from runner.errors import ConfigError


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="FILE|JOB", help="a JSONL file ('-' reads stdin), or a job id: what it has left")
    setting(
        p,
        "lane",
        choices=app.LANES,
        help="how it would be sent (default sync; flex and batch are priced at the Batch rate)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--reuse", action="store_true", help="leave out lines the store already answered, as submit --reuse")
    p.add_argument("--reuse-max-age", metavar="DURATION", help="with --reuse: only answers at most this old")
    p.add_argument("--model", type=options.not_blank, help="model for lines that name none, as submit --model")
    setting(p, "prices", help="price table TOML overriding the shipped one")
    options.db(p)


def _estimate(ns: argparse.Namespace) -> ExitCode:
    if ns.reuse_max_age is not None and not ns.reuse:
        raise ConfigError("--reuse-max-age needs --reuse")
    max_age = duration(ns.reuse_max_age, "--reuse-max-age") if ns.reuse_max_age is not None else None
    est = run_async(
        lambda: app.estimate(
            ns.target,
            lane=ns.lane,
            reuse=ns.reuse,
            reuse_max_age=max_age,
            model=ns.model,
            db=ns.db,
            prices=ns.prices,
        )
    )
    put(json.dumps(est.to_json()) if ns.json else est.render_text())
    return ExitCode.OK


ESTIMATE = Command(
    "estimate",
    "tokens and a cost range per model for a file or a job, before it runs (nothing is sent)",
    _options,
    _estimate,
)
