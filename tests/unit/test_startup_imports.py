"""What a command loads before it starts: read-only commands do not pay for the HTTP stack or the flow they
do not run (start-up time is felt in every cron line and `watch runner status`).

Each command runs as `runner` does (runner.__main__), in a subprocess, on a real SQLite store; the names of the
modules it loaded are written to a file when it exits.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, write_jobfile

# Runs `runner ARGS...` as runner.__main__ does, then writes sys.modules and the cyclic collector's state (on,
# objects frozen) to the file named first.
PROBE = """
import json, sys
from runner import interrupt
out, sys.argv = sys.argv[1], ["runner", *sys.argv[2:]]

def exit_now(code):
    import gc
    with open(out, "w") as f:
        json.dump({"modules": sorted(sys.modules), "gc": [gc.isenabled(), gc.get_freeze_count()]}, f)
    sys.exit(code)

interrupt.exit_now = exit_now
from runner.__main__ import main
main()
"""

# Loaded only to send requests, read or write other formats than a store's rows, or use PostgreSQL.
NEVER_READ_ONLY = (
    "aiohttp",
    "httpx",
    "asyncpg",
    "alembic",
    "pyarrow",
    "sqlalchemy.dialects.postgresql",
    "runner.client",
    "runner.worker.pool",
    "runner.worker.send",
    "runner.lanes.batch",
    "runner.ingest",
    "runner.convert",
    "runner.estimate",
    "runner.budget",
    "runner.prices",
    "runner.report",
    "runner.htmlreport",
    "runner.spec",
    "runner.processes",
    "runner.validate",
)


def loaded(cli: Cli, *args: str) -> set[str]:
    return set(probe(cli, *args)["modules"])


def probe(cli: Cli, *args: str) -> dict[str, Any]:
    out = cli.db.parent / "modules.json"
    out.unlink(missing_ok=True)
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli.environ(),
        cwd=cli.db.parent,
    )
    assert r.returncode == 0, r.stderr
    seen: dict[str, Any] = json.loads(out.read_text())
    return seen


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """A store holding one job, made once."""
    cli = Cli(tmp_path_factory.mktemp("startup") / "runner.db")
    cli.submit(write_jobfile(cli.db.parent / "first.jsonl", 3))
    return cli


@pytest.mark.parametrize("command", ["status", "jobs", "export"])
def test_a_read_only_command_loads_neither_the_http_stack_nor_the_flow_it_does_not_run(
    store: Cli, command: str
) -> None:
    modules = loaded(store, command)
    assert "runner.store" in modules  # the probe saw the command run
    assert sorted(m for m in NEVER_READ_ONLY if m in modules) == []
    if command != "export":
        assert "runner.export" not in modules


def test_submit_to_a_store_loads_no_http_stack(store: Cli) -> None:
    modules = loaded(store, "submit", str(write_jobfile(store.db.parent / "second.jsonl", 4)))
    assert "runner.ingest" in modules
    http = ("aiohttp", "httpx", "runner.client", "sqlalchemy.dialects.postgresql")
    assert sorted(m for m in http if m in modules) == []


def test_version_loads_no_command(store: Cli) -> None:
    modules = loaded(store, "--version")
    assert not {m for m in modules if m.startswith(("runner.cli", "runner.app", "runner.store", "sqlalchemy"))}


def test_a_new_store_is_made_without_loading_alembic(tmp_path: Path) -> None:
    # A new SQLite store is made from tables.py at the head revision (runner/store/migrate.py): replaying the
    # migrations, and loading Alembic to do it, was 0.2-0.3 s of every first command.
    new = Cli(tmp_path / "new.db")
    modules = loaded(new, "submit", str(write_jobfile(tmp_path / "in.jsonl", 2)))
    assert "runner.ingest" in modules and new.db.exists()
    assert sorted(m for m in modules if m.split(".")[0] == "alembic") == []


def test_a_command_runs_with_the_collector_on_and_its_start_up_objects_frozen(store: Cli) -> None:
    # What the CLI loaded lives as long as the process: frozen, the collector never scans it again (a fifth
    # of `runner status`'s CPU went to that), and everything made after it is collected as always.
    enabled, frozen = probe(store, "status")["gc"]
    assert enabled is True
    assert frozen > 20_000  # the modules' objects: ~70,000 here
