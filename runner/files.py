"""Writing files whole or not at all: a temporary name in the same directory, fsync, then rename.

A target that exists and is not a regular file (`/dev/null`, `/dev/stdout`, a named pipe) is written in
place instead: renaming over it would replace the device or pipe itself (as root, /dev/null for everyone).
So is a link that leads through /dev or an open descriptor (/dev/stdout sent to a file); any other link keeps
pointing where it did, and the file it names is the one written whole.

Every output, stdout included, is written through a `WholeWriter`: each write takes all its bytes or raises.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

from runner.errors import ConfigError
from runner.owners import owner_is_dead, process_name

# A file system that takes no more data: a write, flush or fsync of an output file fails this way (the store's
# own failures come as store errors, never as OSError).
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def refused_write(e: OSError, targets: str) -> ConfigError | None:
    """The one line for an output the file system would not take (a full disk, a quota, a size limit), naming
    `targets`; None for any other error. A full disk read `OSError: [Errno 28] No space left on device`, exit 1."""
    if e.errno not in _FULL:
        return None
    return ConfigError(f"cannot write {targets}: {e.strerror or e}")


class WholeWriter(io.BufferedWriter):
    """A buffered binary file whose `write` takes all of `data` or raises, and whose errors name it.

    A raw file's write returns a short count when the disk fills (or a pipe's reader leaves) part way through:
    stdout is one under PYTHONUNBUFFERED=1, and a caller that ignored the count (every `write` here does) left a
    truncated export behind, exit 0. An OSError gets `shown` as its filename, so the command's last line can
    say which output failed (`cannot write stdout: ...`).
    """

    def __init__(self, raw: io.RawIOBase, shown: str, buffer_size: int = io.DEFAULT_BUFFER_SIZE) -> None:
        super().__init__(raw, buffer_size)
        self.shown = shown

    def write(self, data: ReadableBuffer) -> int:
        try:
            n = super().write(data)
            size = len(data) if type(data) is bytes else memoryview(data).nbytes
            while n < size:  # a blocking BufferedWriter raises first; a short count must still not pass
                more = super().write(memoryview(data).cast("B")[n:])
                if more <= 0:
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
                n += more
        except OSError as e:
            self._name(e)
            raise
        return n

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as e:
            self._name(e)
            raise

    def _name(self, e: OSError) -> None:
        if e.filename is None:
            e.filename = self.shown


def whole_stdout() -> None:
    """Make sys.stdout write through a WholeWriter (as it was: encoding, errors, line buffering), for the `runner`
    command. Under PYTHONUNBUFFERED=1 stdout's bytes went to a raw file, whose short writes were lost silently."""
    out = sys.stdout
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a file (a test's capture): nothing written here reaches a disk or a pipe of ours
    out.flush()
    buffer = WholeWriter(io.FileIO(fd, "wb", closefd=False), "stdout")
    # Unbuffered stdout stays prompt: a line goes out when it is written, as it did.
    prompt = bool(out.line_buffering) or bool(getattr(out, "write_through", False))
    sys.stdout = io.TextIOWrapper(buffer, encoding=out.encoding, errors=out.errors, line_buffering=prompt)


def file_mode() -> int:
    """The mode a plainly created file gets under this process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _sweep_dead_parts(target: Path) -> None:
    """Remove temporary files that killed writers of `target` left behind (their owner process is gone)."""
    prefix, suffix = f".{target.name}.", ".part"
    try:
        names = [n for n in os.listdir(target.parent) if n.startswith(prefix) and n.endswith(suffix)]
    except OSError:
        return
    for name in names:
        owner, dot, _ = name[len(prefix) : -len(suffix)].rpartition(".")
        # Only files named by this host's writers; a live writer's file, or one from elsewhere, stays.
        if dot and ":" in owner and owner_is_dead(owner):
            (target.parent / name).unlink(missing_ok=True)


def _in_place(target: Path) -> Iterator[IO[bytes]]:
    """A device or pipe, opened and written as it is: nothing to rename, nothing to fsync."""
    try:
        raw = io.FileIO(target, "wb")
    except OSError as e:
        raise ConfigError(f"cannot write {target}: {e.strerror or e}") from None
    with WholeWriter(raw, str(target), 1 << 20) as f:
        yield f


def _leads_through_descriptor(link: Path) -> bool:
    """Whether a chain of links passes /dev or an open descriptor (/proc/PID/fd/N), whose own link leads to
    whatever the descriptor is (realpath then names that file, so each hop is looked at)."""
    p = Path(os.path.abspath(link))
    for _ in range(40):  # the kernel's own limit on links followed
        parts = p.parts
        if parts[1:2] == ("dev",) or (len(parts) > 3 and parts[1] == "proc" and parts[-2] == "fd"):
            return True
        if not p.is_symlink():
            return False
        p = Path(os.path.abspath(p.parent / os.readlink(p)))
    return True


# SQLite's own files beside a store's database: replacing one corrupts the store as surely as the database.
_STORE_SIDECARS = ("", "-wal", "-shm", "-journal")


def refuse_store_file(target: Path, store_file: Path | None) -> None:
    """ConfigError when writing `target` would replace the job store's file (or SQLite's files beside it).

    An export is renamed over its target: `runner export -o runner.db` (a slip of tab completion) replaced
    the store with the export, and every job in it was gone.
    """
    if is_store_file(target, store_file):
        raise ConfigError(f"cannot write {target}: it is the job store; give another path")


def is_store_file(target: Path, store_file: Path | None) -> bool:
    """Whether `target` is the job store's file (`store_file`), or one of SQLite's files beside it."""
    if store_file is None:
        return False
    try:
        real = Path(os.path.realpath(target))
        return real in {Path(f"{store_file}{s}") for s in _STORE_SIDECARS} or (
            real.exists() and store_file.exists() and real.samefile(store_file)
        )
    except OSError:
        return False  # the write itself says what is wrong with the path


@contextmanager
def atomic_writer(target: Path) -> Iterator[IO[bytes]]:
    """A binary file that appears at `target` only when the block ends without an error.

    A process killed half way leaves the previous file (or none) in place, never half a file. The
    temporary `.NAME.HOST:PID.*.part` it may leave behind is invisible to readers of `target`, and the next
    writer of `target` on this host removes it once that process is gone.
    """
    try:
        mode = os.stat(target).st_mode
    except OSError:
        mode = None  # absent (or unreadable: the write below says why)
    if mode is not None and stat.S_ISDIR(mode):
        raise ConfigError(f"cannot write {target}: it is a directory")
    if mode is not None and not stat.S_ISREG(mode):
        yield from _in_place(target)
        return
    if target.is_symlink():
        real = Path(os.path.realpath(target))
        if _leads_through_descriptor(target):
            # /dev/stdout with stdout sent to a file: the link leads to a regular file, and renaming over the
            # link replaced /dev/stdout itself (as root, for everyone). The descriptor is written as it is.
            yield from _in_place(target)
            return
        # A user's link (results.jsonl -> /data/results.jsonl) stays a link: its file gets the new content.
        target = real
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _sweep_dead_parts(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{process_name()}.", suffix=".part", dir=target.parent)
    except OSError as e:
        # A path the user gave that cannot be written: their input, not a runner failure. A parent that is a
        # file fails mkdir with "File exists", which named the wrong problem.
        why = os.strerror(errno.ENOTDIR) if isinstance(e, FileExistsError) else e.strerror or str(e)
        raise ConfigError(f"cannot write {target}: {why}") from None
    # mkstemp makes the file private; ours should look like any other file, or like the one it replaces: a
    # results file made private (chmod 600) came back world-readable from the next export.
    os.chmod(tmp, file_mode() if mode is None else stat.S_IMODE(mode))
    try:
        with WholeWriter(io.FileIO(fd, "wb"), str(target), 1 << 20) as f:
            yield f  # an error from the body is the caller's to name: it may come from another file it writes
            try:
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:
                raise _refused_here(e, target) from None
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _refused_here(e: OSError, target: Path) -> Exception:
    """A failed flush of `target` itself: a full disk or quota named with the file (it read `OSError: [Errno 28]
    No space left on device`, exit 1, naming no file); any other error as it is."""
    return refused_write(e, str(target)) or e
