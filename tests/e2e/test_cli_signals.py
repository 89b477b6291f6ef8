"""A SIGINT or SIGTERM at any moment of start-up (imports, store open, migrations) ends with one line,
`runner: interrupted`, and exit 130 / 143: never a traceback."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Cli, write_jobfile

pytestmark = [pytest.mark.e2e, pytest.mark.kill]


def _python_start(cli: Cli) -> float:
    """How long the interpreter takes to reach runner's first line here (site, .pth files), worst of three.

    Before that moment the runner's code has not run, so a signal gets the interpreter's own treatment; the
    delays below count from it.
    """
    worst = 0.0
    for _ in range(3):
        t = time.monotonic()
        subprocess.run([sys.executable, "-c", "import runner.interrupt"], env=cli.environ(), check=True)
        worst = max(worst, time.monotonic() - t)
    return worst


def _clean_end(p: subprocess.Popen[str], sig: int) -> str:
    try:
        _, err = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail(f"still running 20 s after {signal.Signals(sig).name}")
    assert "Traceback" not in err and "Error" not in err, err
    return err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_start_up_ends_with_one_line(
    cli: Cli, tmp_path: Path, procs: list[subprocess.Popen[str]], sig: int
) -> None:
    # A fresh store each time, so that the later signals land in its creation and migrations (only submit
    # and spec runs create a store).
    jobfile = write_jobfile(tmp_path / "in.jsonl", 20)
    start = _python_start(cli)
    seen: list[str] = []
    for n, delay in enumerate((0.05, 0.2, 0.5, 1.0)):
        db = tmp_path / f"s{n}.db"
        p = cli.popen("submit", str(jobfile), extra_env={"RUNNER_DB": str(db)})
        procs.append(p)
        time.sleep(1.5 * start + delay)
        p.send_signal(sig)
        err = _clean_end(p, sig)
        seen.append(f"{delay}: {p.returncode} {err.strip()!r}")
        if p.returncode == 0:
            continue  # it finished (the file was queued) before the signal came: nothing to say
        assert p.returncode == 128 + sig, seen
        assert err.strip().splitlines()[-1] == "runner: interrupted", seen
    print("\n".join(seen))
    assert any(s.split()[1] == str(128 + sig) for s in seen), seen


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_right_at_spawn_never_gives_a_traceback(cli: Cli, procs: list[subprocess.Popen[str]], sig: int) -> None:
    p = cli.popen("jobs")
    procs.append(p)
    p.send_signal(sig)
    err = _clean_end(p, sig)
    # Either the interpreter had not started yet (the signal's own ending, which a shell also shows as
    # 128 + signal), or the runner caught it.
    if p.returncode == -sig:
        assert err == ""
    else:
        assert (p.returncode, err.strip()) == (128 + sig, "runner: interrupted")
