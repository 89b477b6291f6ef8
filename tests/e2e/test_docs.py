"""The README's commands as a user would copy them, run against the mock server on 127.0.0.1.

Each test takes a fenced block out of README.md, replaces only the server's address (and names a key the
mock requires), and runs it: the Azure and self-hosted shell blocks through bash with the installed
`runner` command, the Python API block with this interpreter. A README edit that breaks a command fails here.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runner import DISTRIBUTION, __version__
from tests.conftest import ROOT, Cli, read_jsonl, write_jobfile

pytestmark = pytest.mark.e2e

README = ROOT / "README.md"
KEY = "sk-docs-test-key"
AZURE_BASE_URL = "https://RESOURCE.openai.azure.com/openai/v1"
SELF_HOSTED_BASE_URL = "http://localhost:8000/v1"
PYTHON_API_BASE_URL = "http://127.0.0.1:8787/v1"


def readme_block(heading: str, lang: str) -> str:
    """The first ```lang block in the README section headed `## heading`."""
    text = README.read_text(encoding="utf-8")
    section = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section is not None, f"README.md has no section '## {heading}'"
    block = re.search(rf"^```{lang}\n(.*?)^```$", section.group(1), re.M | re.S)
    assert block is not None, f"README.md section '## {heading}' has no ```{lang} block"
    return block.group(1)


def user_env(**extra: str) -> dict[str, str]:
    """A user's shell: the installed `runner` on PATH, none of the developer's RUNNER_*/OPENAI_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "OPENAI_", "AZURE_"))}
    bindir = Path(sys.executable).parent
    assert shutil.which("runner", path=str(bindir)), f"no installed `runner` command in {bindir}"
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_sh(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def lines_without_model(path: Path, n: int) -> Path:
    """Batch lines whose bodies name no model, so the documented `submit --model` fills it in."""
    with path.open("w") as f:
        for i in range(1, n + 1):
            body = {"input": f"Summarise item {i} in one line."}
            f.write(json.dumps({"custom_id": f"d-{i:03d}", "method": "POST", "url": "/v1/responses", "body": body}))
            f.write("\n")
    return path


def submitted_model(block: str) -> str:
    found = re.search(r"runner submit \S+ --model (\S+)", block)
    assert found is not None, "the block no longer shows `runner submit FILE --model NAME`"
    return found.group(1)


def assert_all_answered(results: Path, n: int, model: str) -> None:
    rows: list[dict[str, Any]] = read_jsonl(results)
    assert len(rows) == n
    assert {r["response"]["status_code"] for r in rows} == {200}
    assert {r["response"]["body"]["model"] for r in rows} == {model}  # the deployment / served model name


def test_azure_commands_run_as_written(mock_factory: Any, tmp_path: Path) -> None:
    block = readme_block("Azure OpenAI", "sh")
    assert AZURE_BASE_URL in block and "--auth-style api-key" in block
    mock = mock_factory("--api-key", KEY)
    # The mock serves /v1 only, so the whole base URL is swapped for now. Once it answers under any prefix
    # ending in /v1 (as Azure's /openai/v1 does), swap only "https://RESOURCE.openai.azure.com" for mock.root.
    script = block.replace(AZURE_BASE_URL, mock.base_url)
    lines_without_model(tmp_path / "requests.jsonl", 12)

    # The mock answers 401 to a request without the key, so every line answered means the key travelled.
    r = run_sh(script, tmp_path, user_env(AZURE_OPENAI_API_KEY=KEY))
    assert r.returncode == 0, r.stderr
    assert_all_answered(tmp_path / "results.jsonl", 12, submitted_model(block))
    assert mock.stats()["faults"].get("401", 0) == 0


@pytest.mark.parametrize("auth", ["no key", "raw key"])
def test_self_hosted_commands_run_as_written(auth: str, mock_factory: Any, tmp_path: Path) -> None:
    block = readme_block("Self-hosted servers (vLLM, llama.cpp, LiteLLM)", "sh")
    assert SELF_HOSTED_BASE_URL in block
    if auth == "no key":  # a server started without a key: the runner must not demand one
        mock = mock_factory()
        env = user_env()
    else:  # a proxy that wants `Authorization: KEY`, as the section says
        mock = mock_factory("--api-key", KEY)
        env = user_env(OPENAI_API_KEY=KEY, RUNNER_AUTH_STYLE="raw")
    lines_without_model(tmp_path / "requests.jsonl", 10)

    r = run_sh(block.replace(SELF_HOSTED_BASE_URL, mock.base_url), tmp_path, env)
    assert r.returncode == 0, r.stderr
    assert_all_answered(tmp_path / "results.jsonl", 10, submitted_model(block))
    assert not (tmp_path / "errors.jsonl").exists() or (tmp_path / "errors.jsonl").read_text() == ""


def test_python_api_example_runs(mock_factory: Any, tmp_path: Path) -> None:
    code = readme_block("Python API", "python")
    assert PYTHON_API_BASE_URL in code
    mock = mock_factory("--api-key", KEY)
    (tmp_path / "example.py").write_text(code.replace(PYTHON_API_BASE_URL, mock.base_url))
    (tmp_path / "jobs").mkdir()
    shutil.copy(ROOT / "jobs" / "example.jsonl", tmp_path / "jobs" / "example.jsonl")
    n = sum(1 for line in (ROOT / "jobs" / "example.jsonl").read_text().splitlines() if line.strip())

    def run(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "example.py"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=user_env(**env),
            timeout=120,
        )

    # Without a key it stops before sending anything (it used to send every line and fail each with 401).
    r = run()
    assert r.returncode != 0
    assert "OPENAI_API_KEY is not set" in r.stderr
    assert mock.stats()["creates"] == 0 and mock.stats()["faults"].get("401", 0) == 0
    assert not (tmp_path / "results.csv").exists()

    r = run(OPENAI_API_KEY=KEY)
    assert r.returncode == 0, r.stderr
    with (tmp_path / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n
    # Every line answered; the example file caps a few answers with max_output_tokens, so some are incomplete.
    assert {row["status"] for row in rows} <= {"completed", "incomplete"}
    assert "failed 0" in r.stdout  # the printed report
    assert mock.stats()["creates"] == n


def test_install_hints_name_our_distribution(cli: Cli, tmp_path: Path) -> None:
    hint = f"pip install '{DISTRIBUTION}[parquet]'"
    assert DISTRIBUTION == "responses-runner"  # "runner" on PyPI is an unrelated 2013 package

    r = cli("export", "--help")
    assert r.returncode == 0
    assert hint in " ".join(r.stdout.split())  # argparse wraps the help text

    # The message a user without pyarrow gets: an import of pyarrow that fails, as when it is not installed.
    shim = tmp_path / "no-pyarrow"
    shim.mkdir()
    (shim / "pyarrow.py").write_text("raise ImportError('pyarrow is not installed')\n")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 3))
    r = cli("export", job, "-o", "out.parquet", "--format", "parquet", extra_env={"PYTHONPATH": str(shim)})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"runner: --format parquet needs pyarrow, which is optional: {hint}"]
    assert not list(tmp_path.glob("*.parquet*"))


def test_version_is_the_installed_distributions(cli: Cli) -> None:
    from importlib.metadata import version

    assert version(DISTRIBUTION) == __version__
    r = cli("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"runner {__version__}"
