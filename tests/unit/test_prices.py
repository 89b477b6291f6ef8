from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from runner.prices import ModelPrice, PriceError, PriceTable, load_prices
from runner.usage import UsageCounts

REQUIRED_MODELS = (
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-4o",
    "gpt-4o-mini",
    "o3",
    "o4-mini",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
)


def test_builtin_table_is_dated_sourced_and_complete() -> None:
    table = load_prices()
    assert table.taken is not None
    dt.date.fromisoformat(table.taken)
    assert table.source
    assert table.user_file is None
    for model in REQUIRED_MODELS:
        p = table.models[model]
        assert 0 < p.input <= p.output
        assert p.cached_input is not None and 0 < p.cached_input <= p.input


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("gpt-4.1-mini", "gpt-4.1-mini"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),  # not gpt-4.1-mini, not gpt-4.1-nano
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("o4-mini-2025-04-16", "o4-mini"),
        ("o3", "o3"),
        ("gpt-5-nano-2025-08-07", "gpt-5-nano"),
        ("gpt-5-2025-08-07", "gpt-5"),
        ("gpt-5-chat-latest", None),  # a different model, not a dated gpt-5
        ("gpt-4.1x", None),
        ("o3-pro", None),
        ("GPT-4.1", None),
        ("", None),
        (None, None),
    ],
)
def test_longest_prefix_match_with_date_suffix(model: str | None, key: str | None) -> None:
    assert load_prices().key_for(model) == key


def test_longest_key_wins() -> None:
    table = PriceTable(
        models={
            "m": ModelPrice(input=1, output=1),
            "m-2025-01-01": ModelPrice(input=2, output=2),  # a snapshot priced on its own
        }
    )
    assert table.key_for("m-2025-01-01") == "m-2025-01-01"
    assert table.key_for("m-2025-01-01-extra") == "m"  # "m" followed by "-20": the snapshot key is not a prefix
    assert table.key_for("m-mini") is None  # only "-20..." after a key counts as a date
    assert table.key_for("m-2026-03-03") == "m"


def test_cost_by_hand_with_cached_and_reasoning_tokens() -> None:
    table = load_prices()
    # gpt-4.1-mini: input 0.40, cached 0.10, output 1.60 USD per 1M tokens
    usage = UsageCounts(
        input_tokens=120_000, cached_tokens=20_000, output_tokens=50_000, reasoning_tokens=30_000, total_tokens=170_000
    )
    expected = (100_000 * 0.40 + 20_000 * 0.10 + 50_000 * 1.60) / 1e6  # reasoning is inside output: not extra
    assert expected == pytest.approx(0.122)
    assert table.cost("gpt-4.1-mini-2025-04-14", usage) == pytest.approx(expected)
    # the undated name prices the same
    assert table.cost("gpt-4.1-mini", UsageCounts(120_000, 20_000, 50_000, 30_000, 170_000)) == pytest.approx(expected)


def test_cost_of_gpt5_by_hand() -> None:
    # gpt-5: input 1.25, cached 0.125, output 10.00
    usage = UsageCounts(input_tokens=1_000_000, cached_tokens=400_000, output_tokens=200_000)
    assert load_prices().cost("gpt-5", usage) == pytest.approx(0.6 * 1.25 + 0.4 * 0.125 + 0.2 * 10.0)


def test_unknown_model_is_none_never_zero() -> None:
    table = load_prices()
    assert table.cost("my-finetune", UsageCounts(input_tokens=10, output_tokens=10)) is None
    assert table.cost("my-finetune", UsageCounts()) is None
    assert table.cost(None, UsageCounts(input_tokens=1)) is None
    assert table.price("my-finetune") is None


def test_zero_usage_on_a_priced_model_is_zero() -> None:
    assert load_prices().cost("gpt-4o", UsageCounts()) == 0.0


def test_missing_cached_price_bills_cached_as_input() -> None:
    p = ModelPrice(input=2.0, output=4.0)
    assert p.cost(UsageCounts(input_tokens=1000, cached_tokens=400, output_tokens=10)) == pytest.approx(
        (1000 * 2.0 + 10 * 4.0) / 1e6
    )


def test_user_file_overrides_and_extends(tmp_path: Path) -> None:
    f = tmp_path / "prices.toml"
    f.write_text(
        'taken = "2027-01-15"\n'
        '[models."gpt-4.1-mini"]\ninput = 0.30\ncached_input = 0.05\noutput = 1.20\n'
        '[models."ft:gpt-4.1-mini:acme"]\ninput = 0.80\noutput = 3.20\n'
    )
    table = load_prices(f)
    assert table.taken == "2027-01-15"
    assert table.user_file == str(f)
    assert table.source  # kept from the built-in table
    assert table.models["gpt-4.1-mini"] == ModelPrice(input=0.30, cached_input=0.05, output=1.20)
    assert table.models["gpt-4o"] == load_prices().models["gpt-4o"]  # untouched entries stay
    usage = UsageCounts(input_tokens=1_000_000, cached_tokens=0, output_tokens=1_000_000)
    assert table.cost("gpt-4.1-mini-2025-04-14", usage) == pytest.approx(1.50)
    assert table.cost("ft:gpt-4.1-mini:acme", usage) == pytest.approx(4.00)


def test_user_file_without_date_keeps_the_builtin_date(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text("[models.x]\ninput = 1\noutput = 2\n")
    assert load_prices(f).taken == load_prices().taken


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[models.x]\ninput = 1\n", "[models.x] output: is required"),
        ('[models."gpt-4.1"]\ninput = "cheap"\noutput = 1\n', '[models."gpt-4.1"] input: must be a number'),
        ("[models.x]\ninput = -1\noutput = 1\n", "[models.x] input: must be at least 0"),
        ("[models.x]\ninput = 1\noutput = 1\ncache = 1\n", "[models.x] unknown key 'cache'"),
        ('currency = "EUR"\n', "unknown section or key 'currency'"),
        ("[models\n", "line 1: invalid TOML"),
    ],
)
def test_bad_user_file_names_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(PriceError) as e:
        load_prices(f)
    assert str(f) in str(e.value)
    assert expected in str(e.value)


def test_missing_user_file(tmp_path: Path) -> None:
    with pytest.raises(PriceError, match="no such file"):
        load_prices(tmp_path / "none.toml")
