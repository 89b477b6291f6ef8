"""The project's own test servers (each a standalone script), and how a test starts and stops one."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def started(script: Path, urls: int = 1) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """Run `script --port 0` until the block ends; yields the process and the `urls` it printed ("listening on URL"
    lines, in order). Stopped with SIGTERM, killed if it lingers."""
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    said = [proc.stdout.readline().strip() for _ in range(urls)]
    assert all(" on " in line for line in said) and said[0].startswith("listening on "), said
    try:
        yield proc, [line.split(" on ", 1)[1] for line in said]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
