"""Named SQL blocks: a backend's hot statements live in a `.sql` file, each under a `-- name: NAME` line.

The file is read once (per process) from the package, so the statements are plain SQL a reviewer (or psql)
can read, not f-strings; `blocks("postgres", "hot.sql")["claim"]` is the text of the `claim` block.
Lines before the first name, blank lines and `--` comment lines inside a block are dropped.
"""

from __future__ import annotations

import functools
import re
from importlib.resources import files

__all__ = ["blocks", "parse"]

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$")


def parse(text: str) -> dict[str, str]:
    """NAME -> SQL of each `-- name: NAME` block of `text` (ValueError on a name given twice)."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        m = _NAME.match(line.strip())
        if m:
            if m[1] in out:
                raise ValueError(f"SQL block {m[1]!r} is defined twice")
            current = out[m[1]] = []
        elif current is not None and line.strip() and not line.lstrip().startswith("--"):
            current.append(line.rstrip())
    return {name: "\n".join(lines) for name, lines in out.items()}


@functools.cache
def blocks(package: str, filename: str) -> dict[str, str]:
    """The named blocks of `filename` in the store's sub-package `package` (read once)."""
    return parse(files(f"runner.store.{package}").joinpath(filename).read_text(encoding="utf-8"))
