"""Argument parsing: global flags on either side of the command, bounded values, did-you-mean."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from runner import app
from runner.cli.options import progress_every as _progress_every
from runner.cli.options import settings as _settings
from runner.cli.parser import parse_args
from runner.errors import ConfigError, RunnerError
from runner.report import _short


def test_global_flags_before_and_after_the_command_mean_the_same() -> None:
    before = parse_args(["--db", "x.db", "-v", "--log-format", "json", "status", "J"])
    after = parse_args(["status", "J", "--log-format", "json", "-v", "--db", "x.db"])
    for ns in (before, after):
        assert (ns.db, ns.verbose, ns.log_format, ns.job_id) == ("x.db", True, "json", "J")
    plain = parse_args(["jobs"])
    assert (plain.db, plain.verbose, plain.log_level) == (None, False, None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--grace", "inf"], "runner run: argument --grace: must be a finite number from 0 to 3,600 (got inf)"),
        (["run", "--timeout", "0"], "runner run: argument --timeout: must be a number above 0 to 86,400 (got 0)"),
        (["run", "--rpm", "nan"], "runner run: argument --rpm: must be a finite number greater than 0 (got nan)"),
        (["run", "--max-attempts", "x"], "runner run: argument --max-attempts: must be a whole number from 1"),
        (["--db", "x", "reprot"], "runner: unknown command 'reprot'; did you mean 'report'?"),
        (["status", "--jsno"], "runner status: unknown option --jsno; did you mean '--json'?"),
        (["run", "--concurency", "8"], "runner run: unknown option --concurency; did you mean '--concurrency'?"),
        (["frobnicate"], "runner: unknown command 'frobnicate' (commands: submit, convert, run,"),
    ],
)
def test_mistakes_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(message), err


def test_an_environment_value_out_of_bounds_names_the_flag_and_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_CONCURRENCY", "100000")
    with pytest.raises(ConfigError, match=r"invalid --concurrency / RUNNER_CONCURRENCY: .*10000"):
        _settings(parse_args(["run"]))


def test_report_cuts_a_message_at_a_word_boundary_and_escapes_it() -> None:
    text = "The model `gpt-x` does not exist or you do not have access to it. " * 4
    short = _short(text, 60)
    assert short.endswith("…") and len(short) <= 60
    assert text.startswith(short[:-1]) and text[len(short) - 1] == " "  # cut where a word ends
    assert _short("a\x1b[2Jb") == "a\\x1b[2Jb"


def test_progress_every_is_a_setting_read_from_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_PROGRESS_EVERY", "0.3")
    assert _settings(parse_args(["run"])).progress_every == 0.3
    # A spec run judges the other settings later, with the spec's limits: a bad one does not hide this one.
    monkeypatch.setenv("RUNNER_CONCURRENCY", "many")
    assert _progress_every(parse_args(["run", "spec.toml"])) == 0.3


@pytest.mark.parametrize("value", ["often", "-1", "nan", "inf"])
def test_a_bad_progress_interval_names_its_variable(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_PROGRESS_EVERY", value)
    for read in (_settings, _progress_every):
        with pytest.raises(ConfigError, match=r"^invalid RUNNER_PROGRESS_EVERY: "):
            read(parse_args(["run"]))


@pytest.mark.anyio
async def test_the_prices_flag_wins_over_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each names a file that is not there: the error says which one the report tried to read.
    monkeypatch.setenv("RUNNER_PRICES", str(tmp_path / "from-env.toml"))
    with pytest.raises(RunnerError, match=r"from-env\.toml"):
        await app.report("job_x", db=str(tmp_path / "r.db"))
    with pytest.raises(RunnerError, match=r"from-flag\.toml"):
        await app.report("job_x", db=str(tmp_path / "r.db"), prices=tmp_path / "from-flag.toml")


def test_a_bad_variable_is_one_line_for_commands_without_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_PROGRESS_EVERY", "often")
    with pytest.raises(ConfigError, match=r"^invalid RUNNER_PROGRESS_EVERY: Input should be a valid number"):
        anyio.run(lambda: app.jobs(db=":memory:"))


def test_a_stop_signal_repeated_at_once_counts_once() -> None:
    from runner.interrupt import REPEAT_WINDOW, Repeats

    now = [100.0]
    repeats = Repeats(clock=lambda: now[0])
    assert repeats.counts(15)
    now[0] += 0.001
    assert not repeats.counts(15)  # the same SIGTERM again: GNU timeout's to the process group
    assert repeats.counts(2)  # another signal is a stop of its own
    now[0] += REPEAT_WINDOW
    assert repeats.counts(15)  # a second SIGTERM later: "stop now"
