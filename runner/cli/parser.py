"""The command registry and the argument parser built from it, with did-you-mean for mistyped words."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence

from runner import VERSION_LINE
from runner.cli import estimate, inspect, manage, run, submit
from runner.cli.command import Command
from runner.cli.exits import epilog
from runner.cli.options import Parser, global_options

# Every command once, in the order `runner --help` lists them.
COMMANDS: tuple[Command, ...] = (
    submit.SUBMIT,
    submit.CONVERT,
    run.RUN,
    estimate.ESTIMATE,
    inspect.STATUS,
    inspect.JOBS,
    inspect.EXPORT,
    inspect.SHOW,
    inspect.REPORT,
    manage.CANCEL,
    manage.RETRY,
    manage.DELETE,
    manage.DOCTOR,
)
BY_NAME = {c.name: c for c in COMMANDS}
# `runner mock-server ...` becomes `python -m runner_mock ...` before parsing; it is listed for --help only.
MOCK_SERVER = "mock-server"


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = Parser(
        prog="runner",
        description="Run JSONL files of OpenAI Responses API requests as resumable batch jobs.",
        epilog=epilog(),
    )
    parser.add_argument("--version", action="version", version=VERSION_LINE)
    global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.description)
        command.options(p)
        global_options(p, top=False)
    sub.add_parser(
        MOCK_SERVER, help="the built-in fake Responses API (see `runner mock-server --help`)", add_help=False
    )
    return parser


def _takes_value(parser: argparse.ArgumentParser) -> set[str]:
    """The top-level option strings that consume the next argument (--db PATH)."""
    return {
        opt
        for action in parser._actions  # argparse keeps no public list of its options
        if action.option_strings and action.nargs != 0
        for opt in action.option_strings
    }


def _command_word(args: Sequence[str], parser: argparse.ArgumentParser) -> str | None:
    """The command among `args`, skipping global flags and their values; None if there is none."""
    takes_value = _takes_value(parser)
    it = iter(args)
    for a in it:
        if a == "--":
            return next(it, None)
        if a.startswith("-"):
            if _global_flag(a, parser) in takes_value:  # `--db x`, and `--d x` as argparse reads it
                next(it, None)
            continue
        return a
    return None


def _global_flag(flag: str, parser: argparse.ArgumentParser) -> str | None:
    """The global option `flag` names, as argparse reads it (a unique prefix such as `--verb` included)."""
    if flag in parser._option_string_actions:
        return flag
    if flag.startswith("--"):
        found = [o for o in parser._option_string_actions if o.startswith(flag)]
        if len(found) == 1:
            return found[0]
    return None


def _misplaced_option(args: Sequence[str], parser: argparse.ArgumentParser) -> tuple[str, list[str]] | None:
    """The first option before the command that is not a global one (`runner --concurrency 4 status`), as
    given, and what follows it; or None. Left to the word scan, its value was taken for the command:
    "unknown command '4'"."""
    takes_value = _takes_value(parser)
    value_next = False
    for i, a in enumerate(args):
        if value_next:  # the value of a global option (`--db x.db`, `--db -odd.db`)
            value_next = False
            continue
        if a == "--" or not a.startswith("-") or a == "-":
            return None
        flag = a.split("=", 1)[0]
        known = _global_flag(flag, parser)
        if known is None:
            return a, list(args[i + 1 :])
        value_next = known in takes_value and "=" not in a
    return None


def _misplaced_error(arg: str, rest: Sequence[str], commands: dict[str, argparse.ArgumentParser]) -> str:
    """The one line for an option given before the command that belongs after it (or nowhere)."""
    flag = arg.split("=", 1)[0]
    givers = [name for name, p in commands.items() if flag in p._option_string_actions]
    only = "only -v, --db, --log-level and --log-format go before the command"
    if not givers:
        return f"unknown option {flag} ({only})"
    action = commands[givers[0]]._option_string_actions[flag]
    after = rest[1:] if action.nargs != 0 and "=" not in arg and rest else rest
    word = next((a for a in after if not a.startswith("-")), None)
    if word in givers:
        return f"{flag} goes after the command: `runner {word} {flag} ...` ({only})"
    of = ", ".join(givers)
    if word in commands:
        return f"{flag} goes after the command, and `runner {word}` does not take it (it is an option of {of}; {only})"
    return f"{flag} goes after the command (it is an option of {of}; {only})"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the command line; a mistyped command or flag gets a did-you-mean, a bad value a one-line error."""
    parser = build_parser()
    commands = _subparsers(parser)
    misplaced = _misplaced_option(argv, parser)
    if misplaced is not None:
        parser.error(_misplaced_error(*misplaced, commands))
    word = _command_word(argv, parser)
    if word is not None and word not in commands:
        hint = _suggest(word, list(commands)) or f" (commands: {', '.join(commands)})"
        parser.error(f"unknown command '{word}'{hint}")
    ns, extras = parser.parse_known_args(argv)
    if extras:
        command = commands[ns.command]
        options = [o for o in {*command._option_string_actions, *parser._option_string_actions} if o.startswith("--")]
        first = extras[0]
        if first.startswith("-"):
            command.error(f"unknown option {first.split('=', 1)[0]}{_suggest(first.split('=', 1)[0], options)}")
        command.error(f"unexpected argument '{first}'")
    return ns
