"""The live frame's layout: at any width every figure is shown whole, only the bar shrinks."""

from __future__ import annotations

import time

import pytest

from runner.display import Figures, duration, figures, flow, frame_lines, log_line
from runner.worker.types import Snapshot


def _snap(**kw: object) -> Snapshot:
    s = Snapshot(
        total=500_000,
        done=312_345,
        done_before=200_000,
        completed=110_000,
        incomplete=345,
        failed=2_000,
        in_flight=1_000,
        polling=250,
        retries=12_345,
        rate_limited=6_789,
        tokens=98_765_432,
        concurrency=700,
        max_concurrency=1_000,
        concurrency_reason="backing off after 429s",
        started=time.monotonic() - 900,
    )
    for k, v in kw.items():
        setattr(s, k, v)
    return s


@pytest.mark.parametrize("width", [50, 60, 80, 120, 200])
def test_every_figure_fits_whole_at_any_width(width: int) -> None:
    lines = frame_lines(figures(_snap(), rate=123.4), width)
    assert all(len(line) <= width for line in lines), lines
    text = "\n".join(lines)
    for piece in (
        "312,345/500,000 62% · ETA 25m 21s",
        "this run 112,345",
        "ok 110,345",
        "failed 2,000",
        "200,000 done before",
        "in flight 1,000",
        "polling 250",
        "123.4 req/s",
        "retries 12,345",
        "429s 6,789",
        "concurrency 700/1000 (backing off after 429s)",
    ):
        assert piece in text, (piece, lines)
    assert "━" in lines[0]


def test_the_bar_goes_first_the_figures_never() -> None:
    lines = frame_lines(figures(_snap(), rate=123.4), 40)
    assert "━" not in "".join(lines) and "─" not in "".join(lines)
    assert lines[0] == "312,345/500,000 62% · ETA 25m 21s"


def test_concurrency_without_a_known_maximum_shows_now_over_now() -> None:
    f = figures(_snap(max_concurrency=0, concurrency_reason=None, concurrency=64), rate=1.0)
    assert "concurrency 64/64" in "\n".join(frame_lines(f, 80))


def test_stopping_says_how_long_and_how_many_and_the_last_frame_drops_live_figures() -> None:
    s = _snap(stopping=True, grace_deadline=time.monotonic() + 29.5, in_flight=12)
    text = " ".join(frame_lines(figures(s, rate=1.0), 80))
    assert "stopping: waiting up to 30 s for 12 requests in flight (Ctrl-C again to stop now)" in text
    final = "\n".join(frame_lines(figures(s, rate=1.0, final=True, next_steps=["next: runner report J"]), 80))
    assert "stopping" not in final and "in flight" not in final and "polling" not in final
    assert "stopped after" in final and "next: runner report J" in final


def test_progress_line_for_logs_has_the_same_figures() -> None:
    line = log_line(figures(_snap(), rate=10.0))
    assert line.startswith("progress done=312345/500000 this_run=112345 done_before=200000 ")
    assert "concurrency=700/1000" in line and 'concurrency_reason="backing off after 429s"' in line
    assert "eta_s=18766" in line


def test_text_from_outside_in_a_notice_is_escaped() -> None:
    f = figures(_snap(notice="server asked to wait \x1b[2J1e9 s"), rate=1.0)
    text = "\n".join(frame_lines(f, 80))
    assert "\x1b" not in text and "\\x1b[2J1e9" in text


def test_flow_and_duration() -> None:
    assert flow(["aaa", "bbb", "ccc"], 9) == ["aaa · bbb", "ccc"]
    assert flow(["a-very-long-part"], 5) == ["a-very-long-part"]  # never cut, even when too wide
    assert [duration(x) for x in (0.4, 59, 61, 3600 * 2 + 600)] == ["0 s", "59 s", "1m 01s", "2h 10m"]
    assert isinstance(figures(Snapshot(), rate=0.0), Figures)
