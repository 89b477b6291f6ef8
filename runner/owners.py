"""Who holds work: names for this process, and whether the process behind a name is still alive.

A lease or a staging job names its owner as `host:pid[:suffix]`. The host is this machine's host id:
`RUNNER_HOST_ID` when set (validated with the other settings before any command runs), else the hostname.
On the same host id a dead pid means the work is abandoned now, without waiting for a lease to run out;
on other hosts only expiry tells.
"""

from __future__ import annotations

import os
import re
import socket
import uuid

from runner.config import HOST_ID_PATTERN, env_name

_HOST_ID_ENV = env_name("host_id") or ""
_VALID_HOST_ID = re.compile(HOST_ID_PATTERN)


def host_id() -> str:
    """This machine's name in lease owners: the host id setting, or the hostname."""
    given = os.environ.get(_HOST_ID_ENV, "")
    # The CLI refuses a bad value before any command runs; a library caller's bad value falls back.
    if given and len(given) <= 64 and _VALID_HOST_ID.match(given):
        return given
    return socket.gethostname()


def process_name() -> str:
    """host:pid of this process."""
    return f"{host_id()}:{os.getpid()}"


def new_owner() -> str:
    """A lease owner name unique to this run: host, pid and a random suffix."""
    return f"{process_name()}:{uuid.uuid4().hex[:6]}"


def split_owner(owner: str) -> tuple[str, int | None]:
    """The host id and pid an owner name holds (pid None when it is not a number)."""
    host, _, rest = owner.partition(":")
    pid = rest.split(":", 1)[0]
    return host, int(pid) if pid.isdigit() else None


def owner_is_dead(owner: str | None) -> bool:
    """True only when `owner` names a process on this host id that no longer exists."""
    if not owner:
        return True
    host, pid = split_owner(owner)
    if host != host_id() or pid is None:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
