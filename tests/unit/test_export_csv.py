"""The csv export's own record encoder writes exactly what `csv.writer` writes, for any text that does not
start a spreadsheet formula (those get a leading `'`: test_results_csv_formulas.py)."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from runner.export import csv_line

TRICKY = [
    "plain",
    "",
    None,
    0,
    1234567,
    "a,b",
    'He said "hi"',
    '"',
    "line\nbreak",
    "cr\rhere",
    "crlf\r\n",
    " leading and trailing ",
    "tab\there",
    "Naïve – ✓ 日本",
    "\x1b[2J escape",
    ",",
    '""',
]


def reference(values: list[Any]) -> bytes:
    buf = io.StringIO(newline="")
    csv.writer(buf).writerow(values)
    return buf.getvalue().encode()


@pytest.mark.parametrize("value", TRICKY)
def test_each_kind_of_field_matches_csv_writer(value: Any) -> None:
    row = ["id", value, "end"]
    assert csv_line(row) == reference(row)


def test_a_whole_row_matches_and_reads_back() -> None:
    assert csv_line(TRICKY) == reference(TRICKY)
    [back] = list(csv.reader(io.StringIO(csv_line(TRICKY).decode(), newline="")))
    assert back == ["" if v is None else str(v) for v in TRICKY]
