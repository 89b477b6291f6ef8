"""The lanes' pieces: a capacity 429 is typed by its code, bodies get the flex tier, waits grow; the flags."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest

from runner.cli.options import settings
from runner.cli.parser import parse_args
from runner.client import classify
from runner.errors import CapacityError, ConfigError, TransientApiError
from runner.lanes.flex import CAPACITY_MAX_WAIT, FlexLane
from runner.spec import load_spec


def _reply(status: int, code: str, message: str = "m") -> httpx.Response:
    body = {"error": {"message": message, "type": "x", "code": code}}
    return httpx.Response(status, content=orjson.dumps(body), request=httpx.Request("POST", "http://h/v1/responses"))


def test_capacity_429_is_typed_by_its_code_not_its_message() -> None:
    with pytest.raises(CapacityError):
        classify(_reply(429, "resource_unavailable", "anything at all"))
    with pytest.raises(TransientApiError) as e:
        classify(_reply(429, "rate_limit_exceeded", "Resource Unavailable"))  # the words alone do not count
    assert not isinstance(e.value, CapacityError)


def test_flex_tier_is_added_unless_the_line_has_its_own() -> None:
    lane = FlexLane(None)
    body, left = lane.prepare(1, '{"model": "m", "input": "x"}')
    assert orjson.loads(body)["service_tier"] == "flex" and left is None
    body, _ = lane.prepare(2, '{"model": "m", "input": "x", "service_tier": "auto"}')
    assert orjson.loads(body)["service_tier"] == "auto"


def test_fallback_deadline_counts_from_the_first_flex_send() -> None:
    now = [100.0]
    lane = FlexLane(60.0, clock=lambda: now[0])
    _, left = lane.prepare(1, '{"model": "m", "input": "x"}')
    assert left == 60.0
    now[0] = 140.0
    _, left = lane.prepare(1, '{"model": "m", "input": "x"}')
    assert left == 20.0
    now[0] = 161.0
    body, left = lane.prepare(1, '{"model": "m", "input": "x"}')
    assert orjson.loads(body)["service_tier"] == "default" and left is None and lane.fallbacks == 1


def test_capacity_waits_grow_and_are_capped() -> None:
    lane = FlexLane(None)
    waits = [lane.capacity_wait(7, None) for _ in range(12)]
    assert waits[0] < waits[1] < waits[2] < waits[3]
    assert max(waits) <= CAPACITY_MAX_WAIT * 1.25
    assert lane.capacity_wait(8, 200.0) == 200.0  # a Retry-After is a minimum


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--lane", "slow"], "runner run: argument --lane: invalid choice: 'slow'"),
        (
            ["run", "--flex-fallback", "soon"],
            "runner run: argument --flex-fallback: 'soon' is not a duration (for example 90s, 15m, 1h)",
        ),
        (
            ["run", "--flex-fallback", "0s"],
            "runner run: argument --flex-fallback: must be above 0 and at most 86,400 s",
        ),
        (
            ["run", "--batch-max-lines", "60000"],
            "runner run: argument --batch-max-lines: must be a whole number from 1 to 50,000 (got 60000)",
        ),
    ],
)
def test_lane_flags_refuse_bad_values_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(message), err


def test_lane_settings_come_from_flags_or_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    ns = parse_args(["run", "--lane", "flex", "--flex-fallback", "15m", "--batch-max-lines", "500"])
    s = settings(ns)
    assert (s.lane, s.flex_fallback, s.batch_max_lines) == ("flex", 900.0, 500)
    monkeypatch.setenv("RUNNER_LANE", "batch")
    monkeypatch.setenv("RUNNER_FLEX_FALLBACK", "90s")
    s = settings(parse_args(["run"]))
    assert (s.lane, s.flex_fallback) == ("batch", 90.0)
    monkeypatch.setenv("RUNNER_FLEX_FALLBACK", "later")
    with pytest.raises(
        ConfigError, match=r"^invalid --flex-fallback / RUNNER_FLEX_FALLBACK: .*'later' is not a duration"
    ):
        settings(parse_args(["run"]))


def test_a_spec_names_its_lane(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"model": "m", "input": "x"}\n')
    spec = tmp_path / "nightly.toml"
    spec.write_text('[job]\ninput = "in.jsonl"\nlane = "batch"\n')
    assert load_spec(spec).job.lane == "batch"
    spec.write_text('[job]\ninput = "in.jsonl"\nlane = "cheap"\n')
    with pytest.raises(ConfigError, match=r"lane"):
        load_spec(spec)
