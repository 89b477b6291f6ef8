"""The wheel ships every package of the source tree (the explicit list in pyproject.toml must keep up)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_directory_is_listed_for_the_wheel() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("runner", "runner_mock")
        for init in (ROOT / top).rglob("__init__.py")
    }
    # An editable install finds a missing one anyway; only a built wheel would lack it.
    assert found <= listed, sorted(found - listed)
