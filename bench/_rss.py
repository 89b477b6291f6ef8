"""Run one runner CLI command in this process, then print its peak RSS in MB as the last line."""

from __future__ import annotations

import resource
import sys

from runner.cli import main

if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    sys.stdout.flush()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
