"""A spec's [defaults] and [overrides] are checked once, against the spec key, with the line validator's rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.spec import SpecError, load_spec


def spec(tmp_path: Path, tables: str, *, lenient: bool = False) -> Path:
    p = tmp_path / "nightly.toml"
    p.write_text(f'[job]\ninput = "in.jsonl"\nlenient = {str(lenient).lower()}\n{tables}')
    return p


def test_bad_values_and_keys_are_named_against_the_table_and_key(tmp_path: Path) -> None:
    p = spec(
        tmp_path,
        '[defaults]\ntemprature = 0.2\n[defaults.reasoning]\neffort = "hgih"\n'
        '[overrides]\nmax_output_tokens = 0\nstream = true\n[overrides.text.format]\nname = "partial"\n',
    )
    with pytest.raises(SpecError) as e:
        load_spec(p)
    assert str(e.value).splitlines() == [
        f"{p}: [defaults] temprature: unknown field; did you mean 'temperature'?",
        f"{p}: [defaults] reasoning.effort: must be one of 'none', 'minimal', 'low', 'medium', 'high', 'xhigh',"
        " 'max' (got 'hgih')",
        f"{p}: [overrides] max_output_tokens: must be at least 1 (got 0)",
        f"{p}: [overrides] stream: streaming is not supported by runner; remove it or set it to false",
    ]


def test_lenient_leaves_what_lenient_allows_to_the_lines(tmp_path: Path) -> None:
    p = spec(tmp_path, '[defaults]\nservice_tier = "turbo"\nmax_tokens = 5\n[overrides]\ntop_p = 2\n', lenient=True)
    with pytest.raises(SpecError) as e:
        load_spec(p)
    assert str(e.value) == f"{p}: [overrides] top_p: must be between 0 and 1 (got 2)"


def test_good_tables_load(tmp_path: Path) -> None:
    p = spec(tmp_path, '[defaults]\nmodel = "m"\nmetadata = { suite = "x" }\n[overrides]\nmax_output_tokens = 400\n')
    assert load_spec(p).overrides == {"max_output_tokens": 400}
