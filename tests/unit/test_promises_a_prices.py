"""A user's price file (`--prices`, RUNNER_PRICES) is untrusted input: the README refuses infinities and NaN
everywhere. TOML spells them `inf`, `nan`, or a number too big for a float (1e400): each used to be taken
as a price, and `runner report` then showed `cost: $nan` and wrote `"usd": NaN`, which is not JSON."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.prices import PriceError, load_prices


@pytest.mark.parametrize(
    ("line", "got"),
    [
        ("input = inf", "inf"),
        ("input = +inf", "inf"),
        ("input = 1e400", "inf"),
        ("input = nan", "nan"),
        ("input = 1e300", "1e+300"),  # finite, but a sum of costs overflows to inf
    ],
)
def test_a_price_that_is_not_a_sensible_finite_number_is_named(tmp_path: Path, line: str, got: str) -> None:
    f = tmp_path / "p.toml"
    f.write_text(f'[models."m"]\n{line}\noutput = 1\n')
    with pytest.raises(PriceError) as info:
        load_prices(f)
    message = str(info.value)
    assert message.startswith(f"{f}: [models.m] input: must be ") and message.endswith(f"(got {got})"), message
    assert "\n" not in message


def test_the_dearest_real_prices_still_load(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text('[models."o1-pro"]\ninput = 150.0\noutput = 600\ncached_input = 0\n')
    assert load_prices(f).models["o1-pro"].output == 600
