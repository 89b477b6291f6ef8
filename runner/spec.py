"""TOML job specs: one file names the input, the body defaults and overrides, limits, outputs and a failure policy.

    [job]       name, input (a path or a glob), store (default: runner.db beside the spec), background, lenient,
                lane (sync, flex or batch), reuse, cache_keys
    [defaults]  merged into each request body where the line lacks the key (the line wins)
    [overrides] forced onto each request body (the override wins)
    [limits]    concurrency, processes, rpm, tpm, max_attempts, timeout, repair, max_cost
    [output]    results, errors, report, report_html (with {date}, {job}, {job_id}, {input}), format
    [policy]    max_failure_rate

Every relative path in a spec (input, store and outputs) is relative to the spec file's directory, so a cron
entry works from any working directory: the same spec finds the same store, and so the same day's job. A
glob that matches several files makes one job per file: each file keeps its own idempotent fingerprint, and
a new file in the folder does not change the jobs of the old ones.

Over 400 lines on purpose: a spec is one user-facing format, and each key is declared, checked and
explained (in its error message) here, in one place.
"""

from __future__ import annotations

import copy
import datetime as dt
import glob
import hashlib
import os
import re
import string
import tomllib
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from runner.config import DEFAULT_DB, MAX_PROCESSES, MAX_REPAIR, name_problem
from runner.errors import ConfigError
from runner.files import is_store_file
from runner.validate import check_partial_body

__all__ = [
    "PLACEHOLDERS",
    "JobSection",
    "JobSpec",
    "LimitsSection",
    "OutputKind",
    "OutputSection",
    "PolicySection",
    "SpecError",
    "apply_defaults_and_overrides",
    "describe_validation_error",
    "load_spec",
    "read_toml",
]

PLACEHOLDERS: Final = ("date", "job", "job_id", "input")
OutputKind = Literal["results", "errors", "report", "report_html"]
ExportFormat = Literal["batch", "jsonl-flat", "csv", "parquet"]
_BATCH_KEYS: Final = ("custom_id", "method", "url", "body")  # any of these makes a line a batch line
_GLOB_CHARS: Final = frozenset("*?[")
# Bump when apply_line's result for the same input and tables changes: it is part of the job's fingerprint.
_APPLY_VERSION: Final = b"runner-spec-apply-1"


class SpecError(ConfigError):
    """A job spec is invalid."""


# -- sections ------------------------------------------------------------------------------------------


class _Section(BaseModel):
    # strict: TOML already has real types, so "32" for an integer is a mistake worth naming, not coercing.
    # TOML also spells `inf` and `nan`: refused here, naming the key (the run said only "invalid settings").
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class JobSection(_Section):
    """[job]: what to queue."""

    name: str | None = None
    input: str
    store: str | None = None  # the job store; a path relative to the spec (default: runner.db beside it)
    background: bool = False
    lenient: bool = False
    lane: Literal["sync", "flex", "batch"] | None = None  # how the requests travel (`--lane` wins)
    reuse: bool = False  # as `runner submit --reuse`: lines answered before in the store are not sent again
    cache_keys: bool = True  # false: as `runner submit --no-cache-keys` (no prompt-cache grouping)

    @field_validator("name", "input", "store")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("name")
    @classmethod
    def _showable(cls, v: str | None) -> str | None:
        if v is not None and (problem := name_problem(v)) is not None:
            raise ValueError(problem)
        return v


class LimitsSection(_Section):
    """[limits]: how hard to push the API. Unset values fall back to flags, environment and built-in defaults."""

    concurrency: Annotated[int, Field(ge=1)] | None = None
    processes: Annotated[int, Field(ge=1, le=MAX_PROCESSES)] | None = None  # as `runner run --processes`
    rpm: Annotated[int, Field(ge=1)] | None = None
    tpm: Annotated[int, Field(ge=1)] | None = None
    max_attempts: Annotated[int, Field(ge=1)] | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None
    repair: Annotated[int, Field(ge=0, le=MAX_REPAIR)] | None = None
    max_cost: Annotated[float, Field(gt=0)] | None = None  # USD, as `runner run --max-cost`

    def settings_update(self) -> dict[str, Any]:
        """The limits that are set, keyed like `runner.config.Settings` fields (for `model_copy(update=...)`)."""
        return self.model_dump(exclude_none=True)


def _check_template(template: str) -> str:
    for name in _placeholders(template):
        if name not in PLACEHOLDERS:
            raise ValueError(f"unknown placeholder {{{name}}}; known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    return template


# Where a spec's results go when its [output] names no `results`: a nightly run whose answers went nowhere
# would look done and be useless. {input} keeps the jobs of a glob apart.
DEFAULT_RESULTS: Final = "out/{job}-{input}-{date}.jsonl"


class OutputSection(_Section):
    """[output]: where results go (default DEFAULT_RESULTS, beside the spec). Unset errors/report are not written."""

    results: str | None = None
    errors: str | None = None
    report: str | None = None
    report_html: str | None = None  # the HTML report (`runner report --html`)
    format: ExportFormat = "batch"

    @field_validator("results", "errors", "report", "report_html")
    @classmethod
    def _templates(cls, v: str | None) -> str | None:
        return None if v is None else _check_template(v)


class PolicySection(_Section):
    """[policy]: when a run counts as failed."""

    max_failure_rate: Annotated[float, Field(ge=0, le=1)] = 0.0

    def exceeded(self, failed: int, total: int) -> bool:
        """Whether `failed` of `total` requests is more than the policy allows (exit 1)."""
        if failed <= 0:
            return False
        return total <= 0 or failed / total > self.max_failure_rate


class JobSpec(_Section):
    """A whole spec file. Build with `load_spec(path)`, which also records where the file lives."""

    job: JobSection
    defaults: dict[str, Any] = Field(default_factory=dict)
    overrides: dict[str, Any] = Field(default_factory=dict)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    output: OutputSection = Field(default_factory=OutputSection)
    policy: PolicySection = Field(default_factory=PolicySection)

    _path: Path = PrivateAttr(default=Path("spec.toml"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Path) -> JobSpec:
        """Validate parsed TOML; `path` is the spec file (used for messages and relative paths)."""
        try:
            spec = cls.model_validate(dict(data))
        except ValidationError as e:
            raise SpecError(describe_validation_error(path, e, cls.model_fields)) from None
        spec._path = path
        spec._check_body_tables()
        return spec

    def _check_body_tables(self) -> None:
        """A bad [defaults] or [overrides] value is named once, against the spec key, not on every line.

        The tables are checked with the line validator's own rules, minus required fields (a table is only
        part of a body). Under `[job] lenient`, what --lenient allows (unknown enum values, misspelled and
        Chat Completions keys) is left to the per-line warnings.
        """
        problems = [
            f"{self._path}: [{table}] {issue.field}: {issue.reason}"
            for table, values in (("defaults", self.defaults), ("overrides", self.overrides))
            for issue in check_partial_body(values)
            if not (issue.soft and self.job.lenient)
        ]
        if problems:
            raise SpecError("\n".join(problems))

    @property
    def path(self) -> Path:
        """The spec file."""
        return self._path

    @property
    def base_dir(self) -> Path:
        """The directory relative paths in the spec start from."""
        return self._path.parent

    @property
    def name(self) -> str:
        """The job name: [job] name, or the spec file's stem."""
        return self.job.name or self._path.stem

    @property
    def store_path(self) -> Path:
        """The job store this spec names (absolute): [job] store, or runner.db beside the spec."""
        return Path(os.path.abspath(self.resolve(self.job.store or DEFAULT_DB)))

    @property
    def store_db(self) -> str:
        """The job store as `--db` takes it: a URL (`postgresql://...`) as written, else `store_path`.

        A URL read as a path relative to the spec made an SQLite file under `postgresql:/user:password@host/`
        beside it, and printed that path, password and all."""
        store = self.job.store
        return store if store is not None and "://" in store else str(self.store_path)

    def resolve(self, p: str) -> Path:
        """A path from the spec, relative to the spec's directory unless absolute (`~` expands)."""
        q = Path(p).expanduser()
        return q if q.is_absolute() else self.base_dir / q

    def input_files(self) -> list[Path]:
        """The input files, sorted; a glob may match several (one job each). SpecError when nothing matches."""
        pattern = self.job.input
        target = self.resolve(pattern)
        if not _GLOB_CHARS.intersection(pattern):
            if not target.is_file():
                raise SpecError(f"{self._path}: [job] input: no such file: {target}")
            return [target]
        # root_dir, not a joined pattern: glob characters in the spec's own directory name stay literal.
        matches = glob.glob(str(Path(pattern).expanduser()), root_dir=self.base_dir, recursive=True)
        files = sorted(f for f in (self.resolve(m) for m in matches) if f.is_file())
        if not files:
            raise SpecError(f"{self._path}: [job] input: {pattern!r} matches no file (looked for {target})")
        if len(files) > 1:
            for kind in ("results", "errors", "report", "report_html"):
                template = getattr(self.output, kind)
                if template is not None and not {"input", "job_id"} & set(_placeholders(template)):
                    raise SpecError(
                        f"{self._path}: [output] {kind}: [job] input matches {len(files)} files, so the name needs"
                        " {input} or {job_id}, or each job's output would overwrite the previous one"
                    )
            self._check_distinct_outputs(files)
        return files

    def _check_distinct_outputs(self, files: list[Path]) -> None:
        """SpecError when two files of a glob would write the same output: {input} is a file's stem, the
        same for `mon/x.jsonl` and `tue/x.jsonl`, and the second job's export replaced the first's."""
        kinds: tuple[OutputKind, ...] = ("results", "errors", "report", "report_html")
        for kind in kinds:
            seen: dict[Path, Path] = {}
            for i, f in enumerate(files):
                # Every job has its own id, so a name with {job_id} never collides.
                path = self.output_path(kind, job_id=f"job_{i}", source=f)
                if path is None:
                    break
                if path in seen:
                    raise SpecError(
                        f"{self._path}: [output] {kind}: {seen[path]} and {f} would both write {path}; put"
                        " {job_id} in the name, or give the input files different names"
                    )
                seen[path] = f

    def check_outputs(
        self,
        *,
        job_id: str,
        date: dt.date | None = None,
        source: Path | None = None,
        store_file: Path | None = None,
    ) -> None:
        """SpecError when an output of this job cannot be written: the path is a directory, a file stands where
        a directory above it must be, it is the job store (`store_file`), or two outputs name one file (the
        report written over the results: exit 0, the answers gone from it). Checked before the run, not found
        after it was paid for."""
        kinds: tuple[OutputKind, ...] = ("results", "errors", "report", "report_html")
        taken: dict[Path, OutputKind] = {}
        for kind in kinds:
            path = self.output_path(kind, job_id=job_id, date=date, source=source)
            if path is None:
                continue
            if (other := taken.get(Path(os.path.realpath(path)))) is not None:
                raise SpecError(
                    f"{self._path}: [output] {kind}: {path} is [output] {other} too; give each its own file"
                )
            taken[Path(os.path.realpath(path))] = kind
            if is_store_file(path, store_file):
                raise SpecError(f"{self._path}: [output] {kind}: {path} is the job store; give another path")
            if path.is_dir():
                raise SpecError(f"{self._path}: [output] {kind}: {path} is a directory")
            for parent in path.parents:
                if parent.exists():
                    if not parent.is_dir():
                        raise SpecError(f"{self._path}: [output] {kind}: {parent} is not a directory")
                    break

    def output_path(
        self, kind: OutputKind, *, job_id: str, date: dt.date | None = None, source: Path | None = None
    ) -> Path | None:
        """Where output `kind` goes for this job, placeholders filled in; None when the spec sets none (results
        always go somewhere: DEFAULT_RESULTS when unset).

        {date} is `date` (default: today, local time) as YYYY-MM-DD, {job} the spec name, {job_id} the job's
        id and {input} the stem of `source` (the input file; required when the template uses it).
        """
        template: str | None = getattr(self.output, kind)
        if template is None and kind == "results":
            template = DEFAULT_RESULTS
        if template is None:
            return None
        values = {
            "date": (date or dt.date.today()).isoformat(),
            "job": self.name,
            "job_id": job_id,
            "input": source.stem if source is not None else None,
        }
        for field in _placeholders(template):
            if field not in values:
                raise SpecError(f"{self._path}: [output] {kind}: unknown placeholder {{{field}}}")
            if values[field] is None:
                raise SpecError(f"{self._path}: [output] {kind}: {{{field}}} needs the input file")
        return self.resolve(template.format_map(values))

    def apply(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """`apply_defaults_and_overrides` with this spec's tables."""
        return apply_defaults_and_overrides(body, self.defaults, self.overrides)

    def apply_line(self, line: Any) -> Any:
        """A parsed input line with the tables applied to its body (a batch line's `body`, or a bare body).

        Anything else (not an object, a batch line whose body is not an object) comes back unchanged, so
        the validator reports it as the user wrote it.
        """
        if not isinstance(line, dict):
            return line
        if any(k in line for k in _BATCH_KEYS):
            body = line.get("body")
            if not isinstance(body, dict):
                return line
            return {**line, "body": self.apply(body)}
        return self.apply(line)

    def tables_digest(self) -> str:
        """A hash of what `apply_line` does: part of a spec job's fingerprint, so changed tables make a new job."""
        h = hashlib.sha256(_APPLY_VERSION)
        h.update(orjson.dumps({"defaults": self.defaults, "overrides": self.overrides}, option=orjson.OPT_SORT_KEYS))
        return h.hexdigest()


# -- loading -------------------------------------------------------------------------------------------


def _placeholders(template: str) -> Iterator[str]:
    """The field names of a str.format template (`{{`/`}}` are literal braces)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"bad braces in {template!r}: {e}") from None
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if spec or conversion:
            raise ValueError(f"placeholder {{{field}}} takes no format spec or conversion")
        yield field


_TYPE_NAMES: Final = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a table",
    "model_type": "a table",
}
_BOUNDS: Final = {
    "greater_than": "greater than",
    "greater_than_equal": "at least",
    "less_than": "less than",
    "less_than_equal": "at most",
}
_TOML_POS = re.compile(r"^(?P<msg>.*?) \(at line (?P<line>\d+), column (?P<col>\d+)\)$")


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if value is True or value is False:
        return str(value).lower()
    return repr(value)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(part: str) -> str:
    return part if _BARE_KEY.match(part) else '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _where(loc: tuple[int | str, ...], tables: Collection[str]) -> tuple[str, str]:
    """("[table] ", "key") for an error location, written as TOML would name it."""
    parts = [str(p) for p in loc]
    if len(parts) == 1 and parts[0] in tables:
        return "", f"[{_toml_key(parts[0])}]"
    if len(parts) >= 2:
        return f"[{'.'.join(_toml_key(p) for p in parts[:-1])}] ", parts[-1]
    return "", parts[0] if parts else ""


def describe_validation_error(path: Path, e: ValidationError, tables: Collection[str] = ()) -> str:
    """One line per problem, each naming the file, the table and the key; `tables` are the top-level tables."""
    lines: list[str] = []
    for err in e.errors(include_url=False):
        section, key = _where(tuple(err["loc"]), tables)
        kind = err["type"]
        if kind == "extra_forbidden":
            what = f"unknown key {key!r}" if section else f"unknown section or key {key!r}"
            lines.append(f"{path}: {section}{what}")
            continue
        if kind == "missing":
            reason = "is required"
        elif kind in _TYPE_NAMES:
            reason = f"must be {_TYPE_NAMES[kind]} (got {_show(err['input'])})"
        elif kind in _BOUNDS:
            bound = next(iter((err.get("ctx") or {}).values()), "?")
            bound = f"{bound:g}" if isinstance(bound, float) else bound  # 1.0 -> 1
            reason = f"must be {_BOUNDS[kind]} {bound} (got {_show(err['input'])})"
        elif kind == "literal_error":
            expected = (err.get("ctx") or {}).get("expected", "")
            reason = f"must be one of {expected} (got {_show(err['input'])})"
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            msg = msg[:1].lower() + msg[1:]
            reason = f"{msg} (got {_show(err['input'])})"
        lines.append(f"{path}: {section}{key}: {reason}")
    return "\n".join(lines)


def read_toml(path: Path, error: type[ConfigError] = ConfigError) -> dict[str, Any]:
    """Parse a TOML file; an unreadable file or a syntax error raises `error` naming the file and the line."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: is not valid UTF-8 (byte {e.start + 1})") from None
    except tomllib.TOMLDecodeError as e:
        m = _TOML_POS.match(str(e))
        if m is None:
            raise error(f"{path}: invalid TOML: {e}") from None
        raise error(f"{path}:line {m['line']}: invalid TOML: {m['msg']} (column {m['col']})") from None


def load_spec(path: Path) -> JobSpec:
    """Read and check a spec file; SpecError names the file and each bad key (or the line of a syntax error)."""
    return JobSpec.from_dict(read_toml(path, SpecError), path)


# -- merging -------------------------------------------------------------------------------------------


def _fill(body: dict[str, Any], defaults: Mapping[str, Any]) -> None:
    for key, value in defaults.items():
        if key not in body:
            body[key] = copy.deepcopy(value)
        elif isinstance(value, Mapping) and isinstance(body[key], dict):
            body[key] = dict(body[key])  # never write into the caller's nested dicts
            _fill(body[key], value)


def _force(body: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        current = body.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            body[key] = dict(current)
            _force(body[key], value)
        else:
            body[key] = copy.deepcopy(value)


def apply_defaults_and_overrides(
    body: Mapping[str, Any], defaults: Mapping[str, Any], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """A new body: `defaults` fill keys the body lacks, then `overrides` replace the body's values.

    Tables merge key by key at every depth; anything else (lists included) is replaced whole. A key whose
    value is JSON null is present: a default does not replace it. The input is not modified.
    """
    out = dict(body)
    _fill(out, defaults)
    _force(out, overrides)
    return out
