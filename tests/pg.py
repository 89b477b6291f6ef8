"""A throwaway PostgreSQL 15 server for the tests (and for a developer: `make pg`, i.e. `python -m tests.pg`).

The server runs from a temporary directory, listens on 127.0.0.1 only (no Unix socket) on a free port,
trusts every local connection and skips fsync: it holds nothing worth keeping and is deleted when stopped.
PostgreSQL refuses to run as root, so under root (CI) it runs as the system user `runnerpg`, created on
first use; anyone else runs it as themselves.

`RUNNER_TEST_PG_URL=postgresql://user@host:port/` points the tests at a server that is already running
(the one `make pg` prints) instead of starting one.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

PG_BIN = Path(os.environ.get("RUNNER_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "runnerpg"
# Speed over durability: the cluster is thrown away at the end of the session.
_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # One server for every xdist worker of a session (tests/conftest.py): room for four workers' pools.
    "max_connections": "400",
    "shared_buffers": "64MB",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run_as() -> str | None:
    """The user the server runs as: `runnerpg` under root (created if missing), else the caller."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        made = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            capture_output=True,
            text=True,
        )
        try:
            pwd.getpwnam(PG_USER)  # made here, or by a parallel test worker at the same moment
        except KeyError:
            raise RuntimeError(f"cannot create the user {PG_USER}: {made.stderr.strip()}") from None
    return PG_USER


class PgCluster:
    """One PostgreSQL server in a temporary directory: `start()`, `url`, `create_database()`, `stop()`."""

    def __init__(self, external_url: str | None = None) -> None:
        self.dir: Path | None = None
        self.port = 0
        self.external = external_url.rstrip("/") if external_url else None
        self.user = None if self.external else _run_as()
        self._lock = threading.Lock()

    def state(self) -> dict[str, Any]:
        """What another process needs to use (`attach`) or stop this running server."""
        return {"dir": str(self.dir), "port": self.port, "user": self.user}

    @classmethod
    def attach(cls, state: dict[str, Any]) -> PgCluster:
        """The server another process started (its `state()`): usable, and stoppable, from here."""
        cluster = cls()
        cluster.dir, cluster.port, cluster.user = Path(state["dir"]), state["port"], state["user"]
        return cluster

    @property
    def url(self) -> str:
        """The server's URL without a database name (`postgresql://postgres@127.0.0.1:PORT`)."""
        return self.external or f"postgresql://postgres@127.0.0.1:{self.port}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), user=self.user, capture_output=True, text=True, check=check, cwd=self.dir, timeout=120
        )

    def start(self) -> str:
        """Create the cluster and start the server; returns `url`. An external server is only used."""
        if self.external:
            return self.external
        if not (PG_BIN / "initdb").exists():
            raise RuntimeError(f"PostgreSQL 15 not found in {PG_BIN} (set RUNNER_TEST_PG_BIN)")
        self.dir = Path(tempfile.mkdtemp(prefix="runner-pg-"))
        if self.user is not None:
            shutil.chown(self.dir, self.user)
        data = self.dir / "data"
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        for attempt in range(5):  # another process may take the free port between our probe and the bind
            self.port = _free_port()
            opts = " ".join(f"-c {k}={v!r}" if v == "" else f"-c {k}={v}" for k, v in _SETTINGS.items())
            r = self._run(
                str(PG_BIN / "pg_ctl"),
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(data),
                "-l",
                str(self.dir / "server.log"),
                "-o",
                f"-p {self.port} {opts}",
                check=False,
            )
            if r.returncode == 0:
                return self.url
            if attempt == 4:
                log = (self.dir / "server.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"PostgreSQL did not start: {r.stderr.strip()}\n{log}")
        raise AssertionError("unreachable")

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement through psql and return what it printed (unaligned, tuples only)."""
        r = subprocess.run(
            [
                str(PG_BIN / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                f"{self.url}/{database}",
                "-c",
                statement,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr.strip()}")
        return r.stdout

    def create_database(self, template: str | None = None) -> str:
        """A fresh database, empty or a copy of `template` (a database name); returns its URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        # FILE_COPY copies the (tiny) template's files instead of WAL-logging every block: several times
        # faster for a small database, and durability does not matter here.
        copy = f" TEMPLATE {template}" if template else ""
        self.sql(f"CREATE DATABASE {name}{copy} STRATEGY FILE_COPY")
        return f"{self.url}/{name}"

    def drop_database(self, url: str) -> None:
        """Drop a database `create_database` made, whoever is still connected to it."""
        name = url.rsplit("/", 1)[1]
        self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        """Stop the server at once and delete its directory."""
        with self._lock:
            if self.dir is None:
                return
            if (self.dir / "data" / "postmaster.pid").exists():
                self._run(str(PG_BIN / "pg_ctl"), "stop", "-m", "immediate", "-D", str(self.dir / "data"), check=False)
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def main() -> None:
    """`make pg`: start a server, print its URL, stop it on Ctrl-C or SIGTERM."""
    cluster = PgCluster()
    url = cluster.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"PostgreSQL 15 listening: {url}/postgres", flush=True)
    print(f"  tests use it with: RUNNER_TEST_PG_URL={url} make test", flush=True)
    print("  Ctrl-C stops it and deletes its data.", flush=True)
    try:
        while not stop.wait(1):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
        print("stopped", file=sys.stderr)


if __name__ == "__main__":
    main()
