"""Shared fixtures: a clean environment, the mock server as a real process on 127.0.0.1, the CLI as a subprocess."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.pg import PgCluster

ROOT = Path(__file__).resolve().parent.parent

# A suite started in the background of a script (`cmd &` without job control) inherits SIGINT ignored, and so
# would every runner the tests start: the Ctrl-C tests then saw their runner finish untouched (three failures in
# a fresh clone started with `nohup ... &`). Users press Ctrl-C in a terminal, where SIGINT is not ignored: give
# the tests and their subprocesses the same (a Python handler is reset to the default at exec).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The store backends the `store_db` tests run on. `RUNNER_TEST_BACKENDS=sqlite` keeps a quick local run on
# SQLite alone; by default (and in CI) every such test runs on both.
# `RUNNER_TEST_PG_URL` (read here, before the per-test environment is cleaned) uses a running server instead.
PG_URL = os.environ.get("RUNNER_TEST_PG_URL")
BACKENDS = [b.strip() for b in os.environ.get("RUNNER_TEST_BACKENDS", "sqlite,postgresql").split(",") if b.strip()]


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio: SQLAlchemy's async engine and aiohttp run on asyncio only."""
    return "asyncio"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RUNNER_* or OPENAI_* setting of the developer's leaks into a test."""
    for k in list(os.environ):
        if k.startswith(("RUNNER_", "OPENAI_")):
            monkeypatch.delenv(k, raising=False)


# Where a test's time goes, longest first: the end-to-end tests (CLI subprocesses against a mock server), then
# the store tests, then the unit tests.
_SLOW_FIRST = ("e2e", "integration")


def _slowness(item: pytest.Item) -> int:
    part = item.nodeid.split("/")[1] if item.nodeid.startswith("tests/") else ""
    return _SLOW_FIRST.index(part) if part in _SLOW_FIRST else len(_SLOW_FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `pg` (PostgreSQL only) are deselected, not skipped, when RUNNER_TEST_BACKENDS leaves it out.

    The slow tests run first, so that under `-n` (xdist sending one test at a time: `--maxschedchunk=1` in
    pyproject.toml) the workers end together on short unit tests. In file order, xdist's first chunk gave one
    worker 83 end-to-end tests, about half the suite's time, and the others sat idle for the last minutes.
    The kill tests (which time kills and signals) are spread among the other end-to-end tests rather than run
    all at once, so that two of them seldom share the two cores.
    """
    if "postgresql" not in BACKENDS:
        kept = [i for i in items if i.get_closest_marker("pg") is None]
        if len(kept) != len(items):
            config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("pg") is not None])
            items[:] = kept
    items.sort(key=_slowness)  # stable: file order within each group
    kill = [i for i in items if i.get_closest_marker("kill") is not None]
    if not kill:
        return
    rest = [i for i in items if i.get_closest_marker("kill") is None]
    e2e = sum(1 for i in rest if _slowness(i) == 0)
    step = max(1, e2e // len(kill))  # a kill test, then `step` other end-to-end tests, and so on
    spread: list[pytest.Item] = []
    for n, item in enumerate(kill):
        spread.append(item)
        spread.extend(rest[n * step : (n + 1) * step])
    items[:] = spread + rest[len(kill) * step :]


# One PostgreSQL server (and one migrated template) for the whole session, shared by every xdist worker: the
# first worker that needs it starts it under a file lock, the others attach to it, and the controller stops it
# when the session ends (also when a worker died). Each test still gets a database of its own.
_PG_SHARE = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller, or a run without xdist
        config.stash[_PG_SHARE] = Path(tempfile.mkdtemp(prefix="runner-pg-share-"))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist (controller side): tell each worker where the shared server's state lives."""
    node.workerinput["runner_pg_share"] = str(node.config.stash[_PG_SHARE])


def pytest_unconfigure(config: pytest.Config) -> None:
    share = config.stash.get(_PG_SHARE, None)
    if share is None:
        return
    state = share / "cluster.json"
    if state.exists():
        PgCluster.attach(json.loads(state.read_text())["cluster"]).stop()
    shutil.rmtree(share, ignore_errors=True)


def _pg_share(config: pytest.Config) -> Path:
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    return Path(workerinput["runner_pg_share"]) if workerinput is not None else config.stash[_PG_SHARE]


@contextmanager
def _shared_pg_state(config: pytest.Config) -> Iterator[dict[str, Any]]:
    """The shared server's state, read and written back under an exclusive lock across workers."""
    share = _pg_share(config)
    with (share / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = share / "cluster.json"
        state: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        yield state
        path.write_text(json.dumps(state))


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest) -> PgCluster:
    """The session's throwaway PostgreSQL server (tests/pg.py), started by the first test that needs it."""
    if PG_URL:
        return PgCluster(PG_URL)
    with _shared_pg_state(request.config) as state:
        if "cluster" not in state:
            cluster = PgCluster()
            cluster.start()
            state["cluster"] = cluster.state()
        return PgCluster.attach(state["cluster"])


@pytest.fixture
def pg_url(pg_server: PgCluster) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (its URL), dropped afterwards."""
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)


@pytest.fixture(scope="session")
def pg_template(request: pytest.FixtureRequest, pg_server: PgCluster) -> str:
    """The name of a database migrated once per session (for every worker): stores are copied from it (no
    Alembic per test)."""
    import anyio

    from runner.store import Store

    async def migrate(url: str) -> None:
        await (await Store.open(url)).aclose()

    if PG_URL:  # an external server outlives the session: a template of this session's own
        url = pg_server.create_database()
        anyio.run(migrate, url)
        return url.rsplit("/", 1)[1]
    with _shared_pg_state(request.config) as state:
        if "template" not in state:
            url = pg_server.create_database()
            anyio.run(migrate, url)
            state["template"] = url.rsplit("/", 1)[1]
        name: str = state["template"]
        return name


@pytest.fixture
def pg_store_url(pg_server: PgCluster, pg_template: str) -> Iterator[str]:
    """A fresh PostgreSQL store for one test (its URL): a copy of the migrated template, dropped afterwards."""
    url = pg_server.create_database(pg_template)
    yield url
    pg_server.drop_database(url)


@pytest.fixture(params=BACKENDS)
def store_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The `--db` of a new store on each backend: a file path for SQLite (made by the first open), the URL of
    a fresh, already migrated database for PostgreSQL (`pg_url` gives an empty one).

    The test id names the backend (`test_x[postgresql]`), so a failure says which one failed.
    """
    if request.param == "sqlite":
        return str(tmp_path / "runner.db")
    url: str = request.getfixturevalue("pg_store_url")
    return url


@dataclass
class MockServer:
    """A running `runner mock-server` process."""

    proc: subprocess.Popen[str]
    base_url: str

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("/v1")

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.root}/_mock/stats", timeout=10) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data

    def configure(self, **knobs: Any) -> dict[str, Any]:
        req = urllib.request.Request(
            f"{self.root}/_mock/config",
            data=json.dumps(knobs).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_mock(*args: str) -> MockServer:
    """Start the mock server on a free loopback port and wait for its listening line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner_mock", "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        raise RuntimeError(f"mock server did not start: {line!r}")
    return MockServer(proc, line.strip().split("listening on ", 1)[1])


@pytest.fixture
def mock_factory() -> Iterator[Any]:
    """Start mock servers with given flags; all are stopped at the end of the test."""
    started: list[MockServer] = []

    def make(*args: str) -> MockServer:
        m = start_mock(*args)
        started.append(m)
        return m

    yield make
    for m in started:
        m.stop()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; whatever is still alive at the end is killed and reaped."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.communicate()


@dataclass
class Cli:
    """Runs `python -m runner` against one store and one API."""

    db: Path
    env: dict[str, str] = field(default_factory=dict)
    url: str | None = None  # a PostgreSQL store's URL: RUNNER_DB then names it, and `db` is only the work dir

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "OPENAI_"))}
        env.update({"RUNNER_DB": self.url or str(self.db), "PYTHONUNBUFFERED": "1"})
        env.update(self.env)
        env.update(extra or {})
        return env

    def __call__(
        self, *args: str, timeout: float = 120, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runner", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.environ(extra_env),
            cwd=self.db.parent,
        )

    def popen(self, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "runner", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.environ(extra_env),
            cwd=self.db.parent,
        )

    def submit(self, path: Path, *flags: str) -> str:
        r = self("submit", str(path), *flags)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip().splitlines()[-1]

    def status(self, job_id: str) -> dict[str, Any]:
        r = self("status", job_id, "--json")
        assert r.returncode == 0, r.stderr
        data: dict[str, Any] = json.loads(r.stdout)
        return data


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "runner.db")


def write_jobfile(path: Path, n: int, *, bare: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """A JSONL file of `n` distinct requests (custom ids c-00001 ...)."""
    with path.open("w") as f:
        for i in range(1, n + 1):
            body: dict[str, Any] = {"model": "gpt-test", "input": f"Say something about item number {i}."}
            if i % 3 == 0:
                body["instructions"] = "Be brief."
            if i % 5 == 0:
                body["reasoning"] = {"effort": "low"}
            body.update(extra or {})
            line: dict[str, Any] = (
                body if bare else {"custom_id": f"c-{i:05d}", "method": "POST", "url": "/v1/responses", "body": body}
            )
            f.write(json.dumps(line) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def run_args(mock: MockServer, *extra: Sequence[str] | str) -> list[str]:
    return ["--base-url", mock.base_url, *[str(x) for x in extra]]
