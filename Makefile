# Two commands set up and use everything: `make demo` and `make test`.
# Both create the virtual environment (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo nightly test bench pg clean bytecode

# A .venv made before the distribution was renamed (runner -> responses-runner) still holds the old one, which
# claims the same `runner` command and package: it goes first, so one distribution owns them.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip uninstall --quiet --yes runner 2>/dev/null || true
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# An editable install leaves the sources uncompiled, and with PYTHONDONTWRITEBYTECODE set (as on our CI machines)
# every `runner` process compiled its ~100 modules again: 0.1-0.13 s of CPU per command, ~1 CPU-minute of the
# test suite's ~550 CLI subprocesses. compileall only rewrites what changed; Python ignores a stale file.
bytecode: $(VENV)/.installed
	$(BIN)/python -m compileall -q runner runner_mock migrations

demo: $(VENV)/.installed bytecode
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh

nightly: $(VENV)/.installed bytecode
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/nightly.sh

test: $(VENV)/.installed bytecode
	$(BIN)/ruff check runner runner_mock tests migrations
	$(BIN)/ruff format --check runner runner_mock tests migrations
	$(BIN)/mypy runner runner_mock
	$(BIN)/lint-imports  # the import contracts in pyproject.toml
	$(BIN)/python -m pytest -q -n 4  # 4 workers on 2 cores keep both busy while tests wait on servers and signals

# A throwaway PostgreSQL 15 server for a developer: prints its URL, Ctrl-C stops it and deletes its data.
# (`make test` starts its own; `RUNNER_TEST_PG_URL=<url> make test` uses this one instead.)
pg: $(VENV)/.installed
	$(BIN)/python -m tests.pg

bench: $(VENV)/.installed bytecode
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info
