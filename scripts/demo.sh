#!/usr/bin/env bash
# The main job, offline: start the built-in mock Responses API on 127.0.0.1, queue jobs/example.jsonl
# in the default SQLite file, run it with a progress display, print counts and usage, export the results.
set -euo pipefail

export RUNNER_DB="${RUNNER_DB:-runner.db}"
log=$(mktemp)
# A little realism: 150 ms latency, 5 % of requests answered 429 with Retry-After, 2 % 503.
runner mock-server --port 0 --api-key demo-key --latency 0.15 --p429 0.05 --p5xx 0.02 >"$log" 2>&1 &
mock=$!
trap 'kill "$mock" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q listening "$log" && break; sleep 0.1; done
base_url=$(sed -n 's/^mock-server listening on //p' "$log")
[ -n "$base_url" ] || { cat "$log" >&2; echo "demo: the mock server did not start" >&2; exit 1; }

# The demo talks only to the local mock, with the mock's own key (never a real one).
export OPENAI_BASE_URL="$base_url" OPENAI_API_KEY=demo-key

job=$(runner submit jobs/example.jsonl | tail -n 1)
echo "== job $job (store: $RUNNER_DB, API: $OPENAI_BASE_URL)"
runner run "$job" --concurrency 32
echo "== status"
runner status "$job"
mkdir -p out
runner export "$job" -o "out/$job.jsonl"
echo "== first result line of out/$job.jsonl"
head -c 600 "out/$job.jsonl"; echo
