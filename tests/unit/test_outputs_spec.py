"""A spec's `repair` ([limits]) and `report_html` ([output]): read, bounded, and resolved beside the spec."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from runner.spec import SpecError, load_spec


def spec_file(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "spec.toml"
    p.write_text('[job]\ninput = "in.jsonl"\n' + text)
    return p


def test_repair_and_report_html_are_read(tmp_path: Path) -> None:
    spec = load_spec(spec_file(tmp_path, '[limits]\nrepair = 2\n[output]\nreport_html = "out/{job}-{date}.html"\n'))
    assert spec.limits.settings_update() == {"repair": 2}  # becomes the run's Settings.repair
    page = spec.output_path("report_html", job_id="j", date=dt.date(2026, 12, 2))
    assert page == tmp_path / "out" / "spec-2026-12-02.html"
    assert load_spec(spec_file(tmp_path, "")).output_path("report_html", job_id="j") is None  # not asked: none


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[limits]\nrepair = 11\n", "[limits] repair: must be at most 10"),
        ("[limits]\nrepair = -1\n", "[limits] repair: must be at least 0"),
        ('[output]\nreport_html = "{day}.html"\n', "[output] report_html: unknown placeholder {day}"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SpecError) as e:
        load_spec(spec_file(tmp_path, text))
    assert message in str(e.value)
