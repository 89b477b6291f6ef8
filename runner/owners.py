"""Who holds work: names for this process, and whether the process behind a name is still alive.

A lease or a staging job names its owner as `host:pid[:suffix]`. On the same host a dead pid means the
work is abandoned now, without waiting for a lease to run out; on other hosts only expiry tells.
"""

from __future__ import annotations

import os
import socket
import uuid


def process_name() -> str:
    """host:pid of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def new_owner() -> str:
    """A lease owner name unique to this run: host, pid and a random suffix."""
    return f"{process_name()}:{uuid.uuid4().hex[:6]}"


def owner_is_dead(owner: str | None) -> bool:
    """True only when `owner` names a process on this host that no longer exists."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
