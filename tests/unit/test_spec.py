from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from runner.errors import ConfigError
from runner.ingest import read_lines
from runner.schema import validate_line
from runner.spec import JobSpec, OutputSection, SpecError, apply_defaults_and_overrides, load_spec, materialize

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "jobs" / "nightly.toml"


def write_spec(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


MINIMAL = '[job]\ninput = "in.jsonl"\n'


# -- parsing -------------------------------------------------------------------------------------------


def test_example_spec_parses_and_points_at_the_example_input() -> None:
    spec = load_spec(EXAMPLE)
    assert spec.name == "nightly-eval"
    assert spec.job.background is False and spec.job.lenient is False
    assert spec.defaults["model"] == "gpt-4.1-mini"
    assert spec.overrides == {"max_output_tokens": 400}
    assert spec.limits.settings_update() == {
        "concurrency": 32,
        "rpm": 3000,
        "tpm": 300000,
        "max_attempts": 6,
        "timeout": 600.0,
    }
    assert spec.output.format == "batch"
    assert spec.policy.max_failure_rate == 0.01
    [src] = spec.input_files()
    assert src.resolve() == (ROOT / "jobs" / "example.jsonl").resolve()
    results = spec.output_path("results", job_id="job_1", date=dt.date(2026, 11, 2))
    assert results is not None
    assert results.resolve() == (ROOT / "out" / "nightly-eval-2026-11-02.jsonl").resolve()


def test_minimal_spec_has_defaults(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, MINIMAL, "my-job.toml"))
    assert spec.name == "my-job"  # the file's stem
    assert spec.defaults == {} and spec.overrides == {}
    assert spec.limits.settings_update() == {}
    assert spec.output.results is None
    assert spec.output_path("results", job_id="j") is None
    assert spec.output.format == "batch"
    assert spec.policy.max_failure_rate == 0.0
    assert spec.policy.exceeded(1, 1000)  # default policy: any failure fails the run
    assert not spec.policy.exceeded(0, 1000)


def test_failure_policy_threshold(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, MINIMAL + "[policy]\nmax_failure_rate = 0.01\n"))
    assert not spec.policy.exceeded(10, 1000)
    assert spec.policy.exceeded(11, 1000)


def test_unknown_key_is_named_with_file_and_section(tmp_path: Path) -> None:
    p = write_spec(tmp_path, MINIMAL + "[limits]\nconcurency = 3\n")
    with pytest.raises(SpecError) as e:
        load_spec(p)
    assert str(e.value) == f"{p}: [limits] unknown key 'concurency'"
    assert isinstance(e.value, ConfigError)


def test_unknown_section_is_named(tmp_path: Path) -> None:
    p = write_spec(tmp_path, MINIMAL + "[limit]\nconcurrency = 3\n")
    with pytest.raises(SpecError, match=r"unknown section or key 'limit'"):
        load_spec(p)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('[limits]\nconcurrency = "lots"\n', "[limits] concurrency: must be an integer (got 'lots')"),
        ("[limits]\nconcurrency = 0\n", "[limits] concurrency: must be at least 1 (got 0)"),
        ("[limits]\ntimeout = true\n", "[limits] timeout: must be a number (got true)"),
        ("[policy]\nmax_failure_rate = 1.5\n", "[policy] max_failure_rate: must be at most 1 (got 1.5)"),
        (
            '[output]\nformat = "xml"\n',
            "[output] format: must be one of 'batch', 'jsonl-flat', 'csv' or 'parquet' (got 'xml')",
        ),
        ('[output]\nresults = "out/{jobname}.jsonl"\n', "[output] results: unknown placeholder {jobname}"),
        ("defaults = 3\n", "[defaults]: must be a table (got 3)"),
    ],
)
def test_wrong_types_name_the_key_and_the_expected_type(tmp_path: Path, extra: str, expected: str) -> None:
    # top-level keys must come before the first table header in TOML
    text = extra + MINIMAL if not extra.startswith("[") else MINIMAL + extra
    p = write_spec(tmp_path, text)
    with pytest.raises(SpecError) as e:
        load_spec(p)
    assert str(e.value).startswith(f"{p}: {expected}")


def test_wrong_type_in_job_section(tmp_path: Path) -> None:
    p = write_spec(tmp_path, '[job]\ninput = "x"\nbackground = "yes"\n')
    with pytest.raises(SpecError) as e:
        load_spec(p)
    assert str(e.value) == f"{p}: [job] background: must be true or false (got 'yes')"


def test_missing_job_section_and_input(tmp_path: Path) -> None:
    p = write_spec(tmp_path, "[limits]\nconcurrency = 2\n")
    with pytest.raises(SpecError, match=r": \[job\]: is required"):
        load_spec(p)
    p = write_spec(tmp_path, '[job]\nname = "x"\n')
    with pytest.raises(SpecError, match=r": \[job\] input: is required"):
        load_spec(p)


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    p = write_spec(tmp_path, MINIMAL + '[limits]\nrpm = "x"\ntpm = -1\nfoo = 1\n')
    with pytest.raises(SpecError) as e:
        load_spec(p)
    lines = str(e.value).splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{p}: [limits] ") for line in lines)


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    p = write_spec(tmp_path, '[job]\ninput = "in.jsonl"\n\n[limits]\nconcurrency = = 3\n')
    with pytest.raises(SpecError) as e:
        load_spec(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:line 5: invalid TOML: ")
    assert "column" in msg


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"nope\.toml: no such file"):
        load_spec(tmp_path / "nope.toml")


# -- inputs and outputs --------------------------------------------------------------------------------


def test_input_relative_to_the_spec_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "in.jsonl").write_text("{}\n")
    spec = load_spec(write_spec(tmp_path / "specs", MINIMAL))
    monkeypatch.chdir("/")
    assert spec.input_files() == [tmp_path / "specs" / "in.jsonl"]


def test_missing_input_file_is_named(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, MINIMAL))
    with pytest.raises(SpecError, match=r"\[job\] input: no such file: .*in\.jsonl"):
        spec.input_files()


def test_glob_resolution_sorted_files_only(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    for name in ("b.jsonl", "a.jsonl", "c.txt"):
        (d / name).write_text("{}\n")
    (d / "dir.jsonl").mkdir()  # a directory that matches is not an input
    spec = load_spec(
        write_spec(tmp_path, '[job]\ninput = "data/*.jsonl"\n[output]\nresults = "out/{job}-{input}.jsonl"\n')
    )
    assert spec.input_files() == [d / "a.jsonl", d / "b.jsonl"]
    assert spec.output_path("results", job_id="j", source=d / "a.jsonl") == tmp_path / "out" / "spec-a.jsonl"


def test_glob_matching_nothing_is_an_error(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, '[job]\ninput = "data/*.jsonl"\n'))
    with pytest.raises(SpecError, match=r"'data/\*\.jsonl' matches no file"):
        spec.input_files()


def test_glob_of_several_files_needs_a_distinct_output_name(tmp_path: Path) -> None:
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_text("{}\n")
    spec = load_spec(write_spec(tmp_path, '[job]\ninput = "*.jsonl"\n[output]\nresults = "out/{job}.jsonl"\n'))
    with pytest.raises(SpecError, match=r"\[output\] results: .*matches 2 files"):
        spec.input_files()


def test_placeholders(tmp_path: Path) -> None:
    spec = load_spec(
        write_spec(
            tmp_path,
            '[job]\nname = "nightly"\ninput = "in.jsonl"\n[output]\n'
            'results = "/abs/{job}/{date}/{job_id}.jsonl"\nreport = "r-{{literal}}-{date}.json"\n',
        )
    )
    day = dt.date(2026, 1, 31)
    assert spec.output_path("results", job_id="job_9", date=day) == Path("/abs/nightly/2026-01-31/job_9.jsonl")
    assert spec.output_path("report", job_id="job_9", date=day) == tmp_path / "r-{literal}-2026-01-31.json"
    assert spec.output_path("errors", job_id="job_9", date=day) is None
    today = spec.output_path("results", job_id="j")
    assert today is not None and dt.date.today().isoformat() in str(today)


def test_input_placeholder_needs_the_source(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, MINIMAL + '[output]\nresults = "{input}.jsonl"\n'))
    with pytest.raises(SpecError, match=r"\{input\} needs the input file"):
        spec.output_path("results", job_id="j")


def test_unknown_placeholder_at_expansion_is_named(tmp_path: Path) -> None:
    # load_spec rejects it already; a spec built another way is still checked when expanding
    spec = JobSpec.model_construct(
        job=load_spec(write_spec(tmp_path, MINIMAL)).job, output=OutputSection.model_construct(results="x-{when}.jsonl")
    )
    with pytest.raises(SpecError, match=r"unknown placeholder \{when\}"):
        spec.output_path("results", job_id="j")


def test_bad_braces_in_template(tmp_path: Path) -> None:
    p = write_spec(tmp_path, MINIMAL + '[output]\nresults = "out/{job.jsonl"\n')
    with pytest.raises(SpecError, match=r"\[output\] results: bad braces"):
        load_spec(p)


# -- merge rules ---------------------------------------------------------------------------------------


def test_defaults_fill_missing_keys_and_line_values_win() -> None:
    body = {"model": "gpt-5", "input": "hi"}
    out = apply_defaults_and_overrides(body, {"model": "gpt-4.1-mini", "instructions": "Be brief."}, {})
    assert out == {"model": "gpt-5", "input": "hi", "instructions": "Be brief."}


def test_overrides_win_over_the_line() -> None:
    out = apply_defaults_and_overrides({"input": "hi", "max_output_tokens": 50}, {}, {"max_output_tokens": 400})
    assert out["max_output_tokens"] == 400


def test_nested_tables_merge_at_every_depth() -> None:
    body = {"input": "x", "reasoning": {"summary": "auto"}, "text": {"format": {"type": "text"}, "verbosity": "high"}}
    defaults = {"reasoning": {"effort": "low", "summary": "concise"}, "text": {"format": {"type": "json_object"}}}
    overrides = {"text": {"verbosity": "low", "format": {"strict": True}}}
    out = apply_defaults_and_overrides(body, defaults, overrides)
    assert out["reasoning"] == {"summary": "auto", "effort": "low"}  # default filled, line's summary kept
    assert out["text"] == {"format": {"type": "text", "strict": True}, "verbosity": "low"}


def test_lists_are_replaced_not_merged() -> None:
    body = {"input": "x", "include": ["a"], "tools": [{"type": "web_search"}]}
    out = apply_defaults_and_overrides(body, {"include": ["b", "c"]}, {"tools": [{"type": "file_search"}]})
    assert out["include"] == ["a"]  # the line's list wins over the default's
    assert out["tools"] == [{"type": "file_search"}]  # the override's list replaces the line's


def test_override_table_replaces_a_non_table_value_and_null_is_a_value() -> None:
    body = {"input": "x", "metadata": None, "temperature": None}
    out = apply_defaults_and_overrides(body, {"temperature": 0.5}, {"metadata": {"k": "v"}})
    assert out["metadata"] == {"k": "v"}
    assert out["temperature"] is None  # present (null) is not missing


def test_merge_does_not_modify_inputs() -> None:
    body = {"input": "x", "reasoning": {"summary": "auto"}}
    defaults = {"reasoning": {"effort": "low"}, "include": ["a"]}
    overrides = {"reasoning": {"summary": "concise"}}
    snapshot = json.dumps([body, defaults, overrides])
    out = apply_defaults_and_overrides(body, defaults, overrides)
    out["include"].append("b")
    out["reasoning"]["x"] = 1
    assert json.dumps([body, defaults, overrides]) == snapshot


# -- materialize ---------------------------------------------------------------------------------------


def batch(cid: str, body: dict[str, Any]) -> str:
    return json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/responses", "body": body})


@pytest.fixture
def spec_with_tables(tmp_path: Path) -> JobSpec:
    return load_spec(
        write_spec(
            tmp_path,
            MINIMAL
            + '[defaults]\nmodel = "gpt-4.1-mini"\nreasoning = { effort = "low" }\n'
            + "[overrides]\nmax_output_tokens = 400\n",
        )
    )


def test_materialize_applies_tables_and_keeps_bad_lines_and_numbering(
    tmp_path: Path, spec_with_tables: JobSpec
) -> None:
    src = tmp_path / "in.jsonl"
    lines = [
        batch("a", {"input": "one", "max_output_tokens": 5}),  # 1
        "",  # 2: blank stays blank
        '{"custom_id": "b", "body": {"input": "two"',  # 3: not JSON, unchanged
        json.dumps({"input": "bare", "model": "gpt-5", "reasoning": {"summary": "auto"}}),  # 4: bare body
        "[1, 2]",  # 5: JSON, not an object: unchanged
        batch("c", {"input": "three"}) + "\r",  # 6: CRLF
        '{"custom_id": "d", "body": "nope"}',  # 7: batch line whose body is not an object: unchanged
    ]
    src.write_bytes(("\n".join(lines) + "\n").encode())
    dst = materialize(spec_with_tables, src, tmp_path / "work")
    out = dst.read_text().split("\n")
    assert out[-1] == ""  # ends with a newline
    out = out[:-1]
    assert len(out) == len(lines)
    assert json.loads(out[0])["body"] == {
        "input": "one",
        "max_output_tokens": 400,
        "model": "gpt-4.1-mini",
        "reasoning": {"effort": "low"},
    }
    assert json.loads(out[0])["custom_id"] == "a"
    assert out[1] == ""
    assert out[2] == lines[2]
    assert json.loads(out[3]) == {
        "input": "bare",
        "model": "gpt-5",
        "reasoning": {"summary": "auto", "effort": "low"},
        "max_output_tokens": 400,
    }
    assert out[4] == "[1, 2]"
    assert json.loads(out[5])["body"]["max_output_tokens"] == 400
    assert out[6] == lines[6]
    # the validator sees the same line numbers it would have seen in the source
    assert [n for n, _ in read_lines(dst)] == [n for n, _ in read_lines(src)] == [1, 3, 4, 5, 6, 7]
    problems = {n for n, raw in read_lines(dst) if not _valid(raw, n)}
    assert problems == {3, 5, 7}


def _valid(raw: bytes, n: int) -> bool:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return not validate_line(obj, n).errors


def test_materialize_keeps_invalid_utf8_bytes(tmp_path: Path, spec_with_tables: JobSpec) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'\xef\xbb\xbf{"input": "a"}\n{"input": "\xff"}\n')
    out = materialize(spec_with_tables, src, tmp_path / "w").read_bytes().split(b"\n")
    assert orjson.loads(out[0])["model"] == "gpt-4.1-mini"  # the BOM did not hide the first line
    assert out[1] == b'{"input": "\xff"}'


def test_materialize_is_deterministic_and_reused(tmp_path: Path, spec_with_tables: JobSpec) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(batch(f"c{i}", {"input": f"q{i}"}) for i in range(50)) + "\n")
    first = materialize(spec_with_tables, src, tmp_path / "w1")
    second = materialize(spec_with_tables, src, tmp_path / "w2")
    assert first.name == second.name
    assert first.read_bytes() == second.read_bytes()
    mtime = first.stat().st_mtime_ns
    assert materialize(spec_with_tables, src, tmp_path / "w1") == first
    assert first.stat().st_mtime_ns == mtime  # an existing file of that name is reused as it is
    assert not [p for p in (tmp_path / "w1").iterdir() if p.name.endswith(".part")]


def test_materialize_name_changes_with_input_or_tables(tmp_path: Path, spec_with_tables: JobSpec) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(batch("a", {"input": "x"}) + "\n")
    base = materialize(spec_with_tables, src, tmp_path / "w").name
    other_spec = load_spec(write_spec(tmp_path, MINIMAL + "[overrides]\nmax_output_tokens = 401\n", "b.toml"))
    assert materialize(other_spec, src, tmp_path / "w").name != base
    src.write_text(batch("a", {"input": "y"}) + "\n")
    assert materialize(spec_with_tables, src, tmp_path / "w").name != base
    assert base.startswith("in.") and base.endswith(".jsonl")


def test_materialize_streams_a_large_file(tmp_path: Path, spec_with_tables: JobSpec) -> None:
    src = tmp_path / "big.jsonl"
    with src.open("w") as f:
        for i in range(20_000):
            f.write(batch(f"c{i}", {"input": f"q{i}"}) + "\n")
    dst = materialize(spec_with_tables, src, tmp_path / "w")
    with dst.open() as f:
        n = sum(1 for _ in f)
    assert n == 20_000
    assert os.path.getsize(dst) > os.path.getsize(src)
