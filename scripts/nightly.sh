#!/usr/bin/env bash
# The nightly job, offline: the built-in mock Responses API on 127.0.0.1, then one command that submits
# jobs/nightly.toml (or resumes today's job), runs it, exports to out/ and prints the report.
set -euo pipefail

# The store is the one jobs/nightly.toml names (runner.db at the top of the repo), unless RUNNER_DB is set.
source "$(dirname "$0")/_mock.sh"
start_mock --latency 0.15 --p429 0.03

set +e
runner run jobs/nightly.toml
code=$?
set -e
echo "== exit code $code (0 ok, 1 failures above the spec's threshold, 2 bad spec or input, 3 billing stop, 5 doomed job)"
exit "$code"
