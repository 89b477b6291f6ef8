"""Run one runner CLI command in this process, then print its peak RSS in MB as the last line.

The peak is the kernel's high-water mark of this process's own memory (`VmHWM`), not `ru_maxrss`: Linux
carries `ru_maxrss` over from the process that started this one (a vfork shares the parent's memory until
the exec), so after the bench's in-process scenarios every command here showed the bench's own peak.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

from runner.cli import main


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # elsewhere: the best there is


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    sys.stdout.flush()
    print(peak_rss_mb())
