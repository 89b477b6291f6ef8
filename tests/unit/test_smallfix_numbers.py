"""Infinite and NaN numbers are refused as such, in flags and in job specs, naming the flag or the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.cli.parser import parse_args
from runner.spec import SpecError, load_spec


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--max-cost", "1e999"], "argument --max-cost: must be a finite number greater than 0 (got 1e999)"),
        (["run", "--max-cost=-inf"], "argument --max-cost: must be a finite number greater than 0 (got -inf)"),
        (["run", "--tpm", "NaN"], "argument --tpm: must be a finite number greater than 0 (got NaN)"),
        (["cancel", "J", "--timeout", "inf"], "argument --timeout: must be a finite number above 0 to 86,400"),
    ],
)
def test_an_infinite_flag_is_named_as_such(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.parametrize(
    ("table", "line", "said"),
    [
        ("limits", "max_cost = inf", "[limits] max_cost: input should be a finite number (got inf)"),
        ("limits", "timeout = nan", "[limits] timeout: input should be a finite number (got nan)"),
        ("policy", "max_failure_rate = -inf", "[policy] max_failure_rate: input should be a finite number"),
    ],
)
def test_an_infinite_spec_value_names_its_key(tmp_path: Path, table: str, line: str, said: str) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text(f'[job]\ninput = "in.jsonl"\n[{table}]\n{line}\n')
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    assert str(e.value).startswith(f"{spec}: {said}")
