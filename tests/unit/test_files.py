"""atomic_writer: whole files or none, and temporary files of killed writers swept by the next writer."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from runner.errors import ConfigError
from runner.files import atomic_writer


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def parts(d: Path) -> set[str]:
    return {n for n in os.listdir(d) if n.endswith(".part")}


def test_the_file_appears_whole_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.jsonl"
    with atomic_writer(target) as f:
        f.write(b"one\n")
        assert not target.exists()  # readers never see it half written
        assert len(parts(target.parent)) == 1
    assert target.read_bytes() == b"one\n"
    assert parts(target.parent) == set()


def test_an_error_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_bytes(b"old\n")
    with pytest.raises(RuntimeError), atomic_writer(target) as f:
        f.write(b"new, half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old\n"
    assert parts(tmp_path) == set()


def test_leftovers_of_dead_writers_on_this_host_are_swept(tmp_path: Path) -> None:
    host = socket.gethostname()
    dead = f".out.jsonl.{host}:{dead_pid()}.abc123.part"
    alive = f".out.jsonl.{host}:{os.getppid()}.def456.part"  # a live process: may still be writing
    elsewhere = ".out.jsonl.other-host.example:1.ghi789.part"  # another machine's writer: not ours to judge
    unnamed = ".out.jsonl.jkl012.part"  # no owner in the name: left alone
    other_target = f".other.jsonl.{host}:{dead_pid()}.mno345.part"
    for name in (dead, alive, elsewhere, unnamed, other_target):
        (tmp_path / name).write_bytes(b"half")
    with atomic_writer(tmp_path / "out.jsonl") as f:
        f.write(b"whole\n")
    assert parts(tmp_path) == {alive, elsewhere, unnamed, other_target}
    assert (tmp_path / "out.jsonl").read_bytes() == b"whole\n"


def test_a_target_that_cannot_be_written_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    expected = r"cannot write .*a-file/out\.jsonl: (File exists|Not a directory)"
    with pytest.raises(ConfigError, match=expected), atomic_writer(blocker / "out.jsonl") as f:
        f.write(b"never")
    assert blocker.read_bytes() == b""


@pytest.mark.parametrize("via_link", [False, True], ids=["fifo", "link-to-fifo"])
def test_a_pipe_or_device_is_written_in_place_never_replaced(tmp_path: Path, via_link: bool) -> None:
    # `-o /dev/null` or `-o /dev/stdout` (a link to a pipe): renaming over them would replace the device itself.
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    target = fifo
    if via_link:
        target = tmp_path / "stdout"
        target.symlink_to(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    with atomic_writer(target) as f:
        f.write(b"line 1\n")
        f.write(b"line 2\n")
    reader.join(timeout=10)
    assert got == [b"line 1\nline 2\n"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert target.is_symlink() == via_link
    assert parts(tmp_path) == set()


def test_a_directory_target_is_refused_and_kept(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(ConfigError, match=r"cannot write .*out: it is a directory"), atomic_writer(tmp_path / "out"):
        pass
    assert (tmp_path / "out").is_dir()


def test_a_link_to_a_file_stays_a_link_and_its_file_gets_the_content(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "results.jsonl").write_bytes(b"old\n")
    link = tmp_path / "results.jsonl"
    link.symlink_to(data / "results.jsonl")
    with atomic_writer(link) as f:
        f.write(b"new\n")
    assert link.is_symlink() and link.read_bytes() == b"new\n"
    assert sorted(p.name for p in data.iterdir()) == ["results.jsonl"]


def test_a_link_to_an_open_descriptor_is_written_through_not_replaced(tmp_path: Path) -> None:
    # As /dev/stdout -> /proc/self/fd/1 with stdout sent to a file: renaming over the link replaced
    # /dev/stdout itself with a regular file (as root, for everyone). Played with a link of our own.
    out = tmp_path / "captured.txt"
    with out.open("wb") as held:
        link = tmp_path / "stdout"
        link.symlink_to(f"/proc/self/fd/{held.fileno()}")
        with atomic_writer(link) as f:
            f.write(b"exported\n")
        assert link.is_symlink() and os.readlink(link) == f"/proc/self/fd/{held.fileno()}"
    assert out.read_bytes() == b"exported\n"


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o444])
def test_a_replaced_file_keeps_its_mode_also_through_a_link(tmp_path: Path, mode: int) -> None:
    # mkstemp's file was given the umask's mode: a results file made private came back world-readable.
    target = tmp_path / "results.jsonl"
    target.write_bytes(b"old\n")
    target.chmod(mode)
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    for path in (target, link):
        with atomic_writer(path) as f:
            f.write(b"new\n")
        assert (stat.S_IMODE(target.stat().st_mode), target.read_bytes()) == (mode, b"new\n")
