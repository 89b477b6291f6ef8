"""Writing files whole or not at all: a temporary name in the same directory, fsync, then rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def file_mode() -> int:
    """The mode a plainly created file gets under this process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_writer(target: Path) -> Iterator[IO[bytes]]:
    """A binary file that appears at `target` only when the block ends without an error.

    A process killed half way leaves the previous file (or none) in place, never half a file; the
    temporary `.NAME.*.part` it may leave behind is invisible to readers of `target`.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.chmod(tmp, file_mode())  # mkstemp makes the file private; ours should look like any other file
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
