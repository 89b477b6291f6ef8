from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from runner.errors import ConfigError
from runner.spec import JobSpec, OutputSection, SpecError, apply_defaults_and_overrides, load_spec

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
    assert spec.job.background is False and spec.job.lenient is False and spec.job.reuse is True
    assert spec.defaults["model"] == "gpt-4.1-mini"
    assert spec.overrides == {"max_output_tokens": 400}
    assert spec.limits.settings_update() == {
        "concurrency": 32,
        "rpm": 3000,
        "tpm": 300000,
        "max_attempts": 6,
        "timeout": 600.0,
        "max_cost": 5.0,
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
    # No [output]: the results still go somewhere, beside the spec, named after the job, input and date.
    day = dt.date(2026, 12, 1)
    got = spec.output_path("results", job_id="j", date=day, source=tmp_path / "items.jsonl")
    assert got == tmp_path / "out" / "my-job-items-2026-12-01.jsonl"
    assert spec.output_path("errors", job_id="j") is None and spec.output_path("report", job_id="j") is None
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


# -- applying the tables line by line -------------------------------------------------------------------


def batch(cid: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": cid, "method": "POST", "url": "/v1/responses", "body": body}


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


def test_apply_line_fills_batch_and_bare_bodies_and_leaves_the_rest(spec_with_tables: JobSpec) -> None:
    line = batch("a", {"input": "one", "max_output_tokens": 5})
    out = spec_with_tables.apply_line(line)
    assert out == batch(
        "a", {"input": "one", "max_output_tokens": 400, "model": "gpt-4.1-mini", "reasoning": {"effort": "low"}}
    )
    assert line["body"] == {"input": "one", "max_output_tokens": 5}  # the parsed line is not modified
    bare = {"input": "bare", "model": "gpt-5", "reasoning": {"summary": "auto"}}
    assert spec_with_tables.apply_line(bare) == {
        "input": "bare",
        "model": "gpt-5",
        "reasoning": {"summary": "auto", "effort": "low"},
        "max_output_tokens": 400,
    }
    # Not an object, or a batch line whose body is not one: unchanged, for the validator to name.
    assert spec_with_tables.apply_line([1, 2]) == [1, 2]
    assert spec_with_tables.apply_line({"custom_id": "d", "body": "nope"}) == {"custom_id": "d", "body": "nope"}


def test_tables_digest_changes_with_the_tables_only(tmp_path: Path, spec_with_tables: JobSpec) -> None:
    same = load_spec(
        write_spec(
            tmp_path,
            '[job]\nname = "other"\ninput = "x.jsonl"\n'
            + '[defaults]\nreasoning = { effort = "low" }\nmodel = "gpt-4.1-mini"\n'
            + "[overrides]\nmax_output_tokens = 400\n",
            "same.toml",
        )
    )
    assert same.tables_digest() == spec_with_tables.tables_digest()  # key order does not matter
    other = load_spec(write_spec(tmp_path, MINIMAL + "[overrides]\nmax_output_tokens = 401\n", "b.toml"))
    assert other.tables_digest() != spec_with_tables.tables_digest()


# -- the store a spec names ------------------------------------------------------------------------------


def test_store_defaults_to_runner_db_beside_the_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "jobs").mkdir()
    write_spec(tmp_path / "jobs", MINIMAL)
    monkeypatch.chdir(tmp_path)
    spec = load_spec(Path("jobs/spec.toml"))  # a relative spec path still gives an absolute store
    assert spec.store_path == tmp_path / "jobs" / "runner.db"


def test_store_is_relative_to_the_spec(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, '[job]\ninput = "in.jsonl"\nstore = "../stores/eval.db"\n'))
    assert spec.store_path == tmp_path.parent / "stores" / "eval.db"
    spec = load_spec(write_spec(tmp_path, '[job]\ninput = "in.jsonl"\nstore = "/var/tmp/x.db"\n'))
    assert spec.store_path == Path("/var/tmp/x.db")


def test_blank_store_is_named(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"\[job\] store: must not be empty"):
        load_spec(write_spec(tmp_path, '[job]\ninput = "in.jsonl"\nstore = " "\n'))
