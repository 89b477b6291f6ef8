"""A reused line reads as well as a sent one, through the CLI on both backends: the structured-output verdict and
parsed value in every flat format, and after the job its answer came from is deleted, the same exports byte for
byte, the same saved tokens, one stored copy of each answer, and the answer still reused by a later submit."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import anyio
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from runner import app
from runner.export import FORMATS
from runner.store import Store
from runner.store.tables import requests
from tests.conftest import Cli, run_args
from tests.e2e.test_outputs import LINES, write_lines

pytestmark = pytest.mark.e2e

ANSWERED = [c for c in LINES if c != "cut"]  # "cut" ends incomplete: never reused, sent by every job


def use(cli: Cli, store_db: str) -> None:
    if "://" in store_db:  # PostgreSQL: the same commands against a fresh database
        cli.url = store_db


def exports(db: str, job: str, tmp: Path) -> dict[str, bytes]:
    """Every export format of a job, in-process (the commands under test run as the CLI)."""

    async def go() -> dict[str, bytes]:
        out = {}
        for fmt in FORMATS:
            path = tmp / f"{job}.{fmt}"
            await app.export(job, str(path), fmt=fmt, db=db)
            out[fmt] = path.read_bytes()
        return out

    tmp.mkdir(exist_ok=True)
    return anyio.run(go)


def cli_exports(cli: Cli, job: str, tmp: Path) -> dict[str, bytes]:
    out = {}
    for fmt in ("jsonl-flat", "csv", "parquet"):
        path = tmp / f"{job}.{fmt}"
        r = cli("export", job, "--format", fmt, "-o", str(path))
        assert r.returncode == 0, r.stderr
        out[fmt] = path.read_bytes()
    return out


def checks(files: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """custom_id -> (output_check, parsed, reused) as each flat format spells them, parsed back to one form."""
    flat = {x["custom_id"]: x for x in map(json.loads, files["jsonl-flat"].splitlines())}
    table = {x["custom_id"]: x for x in csv.DictReader(io.StringIO(files["csv"].decode()))}
    parquet = {x["custom_id"]: x for x in pq.read_table(io.BytesIO(files["parquet"])).to_pylist()}
    return {
        "jsonl-flat": {c: (x["output_check"], x["parsed"], x["reused"]) for c, x in flat.items()},
        "csv": {
            c: (x["output_check"] or None, json.loads(x["parsed"]) if x["parsed"] else None, x["reused"] == "true")
            for c, x in table.items()
        },
        "parquet": {
            c: (x["output_check"], json.loads(x["parsed"]) if x["parsed"] else None, x["reused"])
            for c, x in parquet.items()
        },
    }


def report(cli: Cli, job: str) -> dict[str, Any]:
    r = cli("report", job, "--json")
    assert r.returncode == 0, r.stderr
    data: dict[str, Any] = json.loads(r.stdout)
    return data


def submit_reusing(cli: Cli, src: Path) -> str:
    r = cli("submit", str(src), "--reuse", "--new")
    assert r.returncode == 0, r.stderr
    assert f"queued 1 requests from {src}; {len(ANSWERED)} answered from the store (reused)" in r.stderr
    return r.stdout.split()[-1]


# What the first job's answers were checked to be (tests/e2e/test_outputs.py runs it the same way).
VERDICTS = {
    "valid": ("valid", {"answer": 42, "tags": ["a"]}),
    "not-json": ("invalid_json", None),
    "mismatch": ("schema_mismatch", {"answer": 1, "tags": ["a", 7]}),
    "repaired": ("valid", {"answer": 42}),
    "object": ("valid", {"ok": True}),
    "plain": (None, None),
}


def test_a_reused_line_exports_the_verdict_and_parsed_value_of_its_answer(
    cli: Cli, mock_factory: Any, tmp_path: Path, store_db: str
) -> None:
    use(cli, store_db)
    mock = mock_factory()
    src = write_lines(tmp_path / "in.jsonl")
    first = cli.submit(src)
    assert cli("run", first, *run_args(mock, "--repair", "2", "--quiet")).returncode == 0
    again = submit_reusing(cli, src)

    got = checks(cli_exports(cli, again, tmp_path))
    for fmt in ("jsonl-flat", "csv", "parquet"):
        assert {c: got[fmt][c] for c in ANSWERED} == {c: (*v, True) for c, v in VERDICTS.items()}, fmt

    # The report counts the verdicts of the answers the job holds; the repairs were the first job's spending.
    now = report(cli, again)["output_checks"]
    assert {k: now[k] for k in ("valid", "invalid_json", "schema_mismatch", "repairs")} == {
        "valid": 3,
        "invalid_json": 1,
        "schema_mismatch": 1,
        "repairs": 0,
    }
    assert now["rejected_usage"]["total_tokens"] == 0


async def _stored_bodies(db: str, job_ids: list[str]) -> int:
    async def go(conn: AsyncConnection) -> int:
        stmt = select(func.count()).where(requests.c.job_id.in_(job_ids), requests.c.response_body.is_not(None))
        return int((await conn.execute(stmt)).scalar_one())

    async with await Store.open(db, "existing") as store:
        return await store.read(go)


def saved(db: str, job: str) -> tuple[int, Any, Any]:
    """Lines reused, tokens reused, and what they saved (summed in row order, which the backend picks)."""
    r = anyio.run(lambda: app.report(job, db=db)).reused
    return r.requests, r.usage, pytest.approx(r.saved_usd, rel=1e-9)


def source(db: str, job: str, custom_id: str) -> tuple[str, str] | None:
    return anyio.run(lambda: app.show(job, custom_id, db=db)).reused_source


def test_deleting_the_job_an_answer_came_from_moves_it_to_one_reusing_line(
    cli: Cli, mock_factory: Any, tmp_path: Path, store_db: str
) -> None:
    use(cli, store_db)
    db = store_db if "://" in store_db else str(cli.db)
    mock = mock_factory()
    src = write_lines(tmp_path / "in.jsonl")
    first = cli.submit(src)
    assert cli("run", first, *run_args(mock, "--repair", "2", "--quiet")).returncode == 0
    tue, wed = submit_reusing(cli, src), submit_reusing(cli, src)
    assert cli("run", *run_args(mock, "--quiet")).returncode == 0
    before = {j: exports(db, j, tmp_path / "before") for j in (tue, wed)}
    paid = saved(db, tue)
    assert paid[0] == len(ANSWERED) and paid[2].expected > 0 and saved(db, wed) == paid

    r = cli("delete", first, "--yes")
    assert r.returncode == 0, r.stderr
    assert {j: exports(db, j, tmp_path / "after") for j in (tue, wed)} == before
    assert saved(db, tue) == saved(db, wed) == paid
    # Each answer is stored once, in one of the two reusing jobs, not copied into both ("cut" was sent by each).
    assert anyio.run(_stored_bodies, db, [tue, wed]) == len(ANSWERED) + 2

    # The line holding an answer now is an original: a third submit reuses from it, and saves as much.
    thu = submit_reusing(cli, src)
    assert source(db, thu, "valid") == (tue, "valid") and saved(db, thu) == paid
    now, then = checks(exports(db, thu, tmp_path / "thu")), checks(before[tue])
    assert all({c: now[f][c] for c in ANSWERED} == {c: then[f][c] for c in ANSWERED} for f in now)

    # And again when that job goes too: the answers move on to Wednesday's lines, Thursday's follow them.
    thu_before = exports(db, thu, tmp_path / "thu")
    r = cli("delete", tue, "--yes")
    assert r.returncode == 0, r.stderr
    assert exports(db, wed, tmp_path / "gone") == before[wed]
    assert exports(db, thu, tmp_path / "gone") == thu_before
    assert anyio.run(_stored_bodies, db, [wed, thu]) == len(ANSWERED) + 1
    assert saved(db, wed) == saved(db, thu) == paid
    assert source(db, thu, "valid") == (wed, "valid")
