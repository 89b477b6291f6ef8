"""runner: a batch job runner for the OpenAI Responses API.

JSONL in, results with usage out; resumable after any crash. The Python API lives in `runner.app`.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
