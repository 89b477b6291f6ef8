"""runner: a batch job runner for the OpenAI Responses API.

JSONL in, results with usage out; resumable after any crash. The Python API lives in `runner.app`.
"""

from __future__ import annotations

__version__ = "0.1.0"
VERSION_LINE = f"runner {__version__}"  # what `runner --version` prints
# The name to `pip install`: "runner" on PyPI is an unrelated project, so the distribution has its own name
# while the import package and the command stay `runner`. pyproject.toml's [project] name must match.
DISTRIBUTION = "responses-runner"
__all__ = ["DISTRIBUTION", "VERSION_LINE", "__version__"]
