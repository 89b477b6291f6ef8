#!/usr/bin/env bash
# The nightly job, offline: the built-in mock Responses API on 127.0.0.1, then one command that submits
# jobs/nightly.toml (or resumes today's job), runs it, exports to out/ and prints the report.
set -euo pipefail

export RUNNER_DB="${RUNNER_DB:-runner.db}"
log=$(mktemp)
runner mock-server --port 0 --api-key demo-key --latency 0.15 --p429 0.03 >"$log" 2>&1 &
mock=$!
trap 'kill "$mock" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q listening "$log" && break; sleep 0.1; done
base_url=$(sed -n 's/^mock-server listening on //p' "$log")
[ -n "$base_url" ] || { cat "$log" >&2; echo "nightly: the mock server did not start" >&2; exit 1; }
export OPENAI_BASE_URL="$base_url" OPENAI_API_KEY=demo-key

set +e
runner run jobs/nightly.toml
code=$?
set -e
echo "== exit code $code (0 ok, 1 failures above the spec's threshold, 2 bad spec or input, 3 billing stop)"
exit "$code"
