"""The csv export's guard against spreadsheet formulas: which texts get a leading `'`, and which stay as they are."""

from __future__ import annotations

import csv
import io

import pytest

from runner.export import csv_line, spreadsheet_text

CASES = [
    ("=1+1", "'=1+1"),
    ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
    ("+SUM(1,2)", "'+SUM(1,2)"),
    ("-2+3", "'-2+3"),
    ("- a markdown list item", "'- a markdown list item"),  # Excel shows #NAME? for it, unquoted
    ("@SUM(A1)", "'@SUM(A1)"),
    ("\t=1", "'\t=1"),
    ("\r=1", "'\r=1"),
    ("-", "'-"),
    # Plain numbers are data: a spreadsheet reads them as numbers and runs nothing.
    ("-42", "-42"),
    ("+7", "+7"),
    ("-12.5", "-12.5"),
    ("-.5", "-.5"),
    ("+1.5e3", "+1.5e3"),
    ("-1E-3", "-1E-3"),
    ("-1e", "'-1e"),
    ("-1,5", "'-1,5"),
    # Text that does not start a formula is left alone.
    ("", ""),
    ("a=1", "a=1"),
    (" =1", " =1"),
    ("'=1", "'=1"),
    ("\n=1", "\n=1"),
    ("echo: hello", "echo: hello"),
]


@pytest.mark.parametrize(("text", "written"), CASES)
def test_a_formula_start_gets_a_quote_and_nothing_else_changes(text: str, written: str) -> None:
    assert spreadsheet_text(text) == written
    [back] = list(csv.reader(io.StringIO(csv_line(["id", text, 3, None]).decode(), newline="")))
    assert back == ["id", written, "3", ""]
