"""Options shared by the commands, and the settings they make.

An option that sets a `Settings` field is declared with `setting()`: its flag is the field's name and the
`[env: X]` in its help is the field's environment alias, read from the model, so neither is spelled twice.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from pydantic import ValidationError

from runner.cli.exits import ExitCode
from runner.cli.output import LOG_FORMATS, LOG_LEVELS
from runner.config import (
    DEFAULT_BASE_URL,
    DEFAULT_DB,
    DEFAULT_PROGRESS_EVERY,
    DEFAULT_TIMEOUT,
    MAX_TIMEOUT,
    AuthStyle,
    Settings,
    env_name,
    name_problem,
)
from runner.errors import ConfigError
from runner.term import printable

# --prices is a path its command hands on by itself (a spec run reads the spec's table under it), so it is
# not one of the settings made from the flags.
_NOT_FROM_FLAGS = frozenset({"prices"})
_HAS_FLAG: set[str] = set()  # Settings fields with a flag (filled as the parser is built)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (`runner run: argument --concurrency: ...`) instead of the usage text."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {printable(message)} (see `{self.prog} --help`)\n")
        sys.exit(ExitCode.USAGE)


def setting(p: argparse.ArgumentParser, field: str, *, help: str, **kw: Any) -> None:
    """An option for the `Settings` field `field`: `--field-name`, its variable named in --help."""
    if field not in Settings.model_fields:
        raise AssertionError(f"no setting {field!r}")  # a programming error, caught by any test of the parser
    env = env_name(field)
    kw.setdefault("default", None)
    suffix = f" [env: {env}]" if env else ""
    p.add_argument("--" + field.replace("_", "-"), dest=field, help=help + suffix, **kw)
    _HAS_FLAG.add(field)


def bounded(kind: type[int] | type[float], low: float, high: float | None, *, low_open: bool = False) -> Any:
    """An argparse `type` that refuses values out of [low, high] (and NaN, infinity) with one clear line."""
    what = "a whole number" if kind is int else "a number"
    if high is None:
        span = f"greater than {low:g}" if low_open else f"at least {low:g}"
    else:
        span = f"{'above' if low_open else 'from'} {low:g} to {high:,g}"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what} {span} (got {text!r})") from None
        if not math.isfinite(value):
            # `1e999` is infinity to float(): "must be greater than 0" was no answer to it.
            raise argparse.ArgumentTypeError(f"must be a finite number {span} (got {text})")
        if value < low or (low_open and value == low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what} {span} (got {text})")
        return value

    return parse


def not_blank(text: str) -> str:
    """An argparse `type` for a name that must say something (`--model ""` queued lines with no model)."""
    if not text or text.isspace():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def job_name(text: str) -> str:
    """An argparse `type` for --name: something to show, without control characters."""
    text = not_blank(text)
    if (problem := name_problem(text)) is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


_DB_HELP = f"SQLite file or SQLAlchemy URL of the job store (default {DEFAULT_DB})"


def db(p: argparse.ArgumentParser) -> None:
    """--db on a command; it is also a global flag, so given before the command it must not be reset here."""
    setting(p, "db", help=_DB_HELP, default=argparse.SUPPRESS)


def global_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    """Flags every command takes, before or after the command name (`runner --db x status`, `runner status
    --db x`). On the commands their default is SUPPRESS, so a value given before the command survives."""
    keep: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    given: dict[str, Any] = {"default": None} if top else keep
    candidates: list[Callable[[], object]] = [
        lambda: p.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks", **keep),
        lambda: setting(p, "db", help=_DB_HELP, **given),
        lambda: setting(
            p,
            "log_level",
            choices=LOG_LEVELS,
            help="least severe log messages shown on stderr (default warning; debug with -v)",
            **given,
        ),
        lambda: setting(
            p, "log_format", choices=LOG_FORMATS, help="text (default), or json: one JSON object per log line", **given
        ),
    ]
    for add in candidates:
        with contextlib.suppress(argparse.ArgumentError):  # the command defines the flag itself (--db)
            add()


def client(p: argparse.ArgumentParser) -> None:
    """The options of a command that talks to the API."""
    setting(p, "base_url", help=f"API base URL (default {DEFAULT_BASE_URL})")
    setting(p, "api_key", help="API key; prefer the environment variable, a flag is visible to other users in `ps`")
    setting(
        p,
        "auth_style",
        choices=[a.value for a in AuthStyle],
        help="how the key is sent: 'bearer' (Authorization: Bearer KEY), 'raw' (Authorization: KEY), "
        "'api-key' (api-key: KEY, Azure)",
    )
    setting(
        p,
        "timeout",
        type=bounded(float, 0, MAX_TIMEOUT, low_open=True),
        help=f"seconds to wait for one HTTP reply (default {DEFAULT_TIMEOUT:g}, at most {MAX_TIMEOUT:,g})",
    )


def flags(ns: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (not those from the environment)."""
    return {
        k: getattr(ns, k)
        for k in Settings.model_fields
        if k in _HAS_FLAG and k not in _NOT_FROM_FLAGS and getattr(ns, k, None) is not None
    }


def settings(ns: argparse.Namespace) -> Settings:
    """Flags over environment over defaults; a bad value names its flag and variable."""
    try:
        return Settings(**flags(ns))
    except ValidationError as e:
        first = e.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        raise ConfigError(f"invalid {where(name)}: {first['msg']}") from None


def where(name: str) -> str:
    """How a user sets a Settings field: its flag and variable, or the variable alone (no flag)."""
    env = env_name(name)
    if name in _HAS_FLAG and env:
        return f"--{name.replace('_', '-')} / {env}"
    return env or name or "settings"


def progress_every(ns: argparse.Namespace) -> float:
    """RUNNER_PROGRESS_EVERY, read through Settings, for a command that makes its other settings later.

    A spec run validates its settings with the spec's limits over the environment, so here only this
    field's own error stops the command; the others' are left for the spec run to judge as before.
    """
    given = flags(ns)
    for _ in range(len(Settings.model_fields)):
        try:
            return Settings(**given).progress_every
        except ValidationError as e:
            bad = {str(x["loc"][0]) for x in e.errors() if x["loc"]}
            if "progress_every" in bad or not bad:
                raise ConfigError(f"invalid {where('progress_every')}: {e.errors()[0]['msg']}") from None
            # Put a default over each other variable in error (it does not matter for the display).
            given.update({k: Settings.model_fields[k].default for k in bad})
    return DEFAULT_PROGRESS_EVERY
