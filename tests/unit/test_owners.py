"""Lease owner names: the host id that tests and containers set, and the same-host dead-pid shortcut."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from runner.owners import host_id, new_owner, owner_is_dead, split_owner


def _dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def test_the_host_id_setting_names_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    assert host_id() == socket.gethostname()
    monkeypatch.setenv("RUNNER_HOST_ID", "host-a.eu_1")
    owner = new_owner()
    assert split_owner(owner) == ("host-a.eu_1", os.getpid())
    monkeypatch.setenv("RUNNER_HOST_ID", "bad:id")  # the CLI refuses it first; a library caller falls back
    assert host_id() == socket.gethostname()


def test_a_dead_pid_frees_work_only_under_the_same_host_id(monkeypatch: pytest.MonkeyPatch) -> None:
    pid = _dead_pid()
    monkeypatch.setenv("RUNNER_HOST_ID", "host-a")
    assert owner_is_dead(f"host-a:{pid}:abcdef")
    assert not owner_is_dead(f"host-b:{pid}:abcdef")  # another machine's pid means nothing here
    assert not owner_is_dead(f"{socket.gethostname()}:{pid}:abcdef")  # nor the hostname, once an id is set
    assert not owner_is_dead(f"host-a:{os.getpid()}:abcdef")
