#!/usr/bin/env bash
# The main job, offline: start the built-in mock Responses API on 127.0.0.1, queue jobs/example.jsonl
# in the default SQLite file, run it with a progress display, print counts and usage, export the results.
set -euo pipefail

export RUNNER_DB="${RUNNER_DB:-runner.db}"
source "$(dirname "$0")/_mock.sh"
start_mock --latency 0.15 --p429 0.05 --p5xx 0.02

job=$(runner submit jobs/example.jsonl | tail -n 1)
echo "== job $job (store: $RUNNER_DB, API: $OPENAI_BASE_URL)"
runner run "$job" --concurrency 32
echo "== status"
runner status "$job"
mkdir -p out
runner export "$job" -o "out/$job.jsonl"
echo "== first result line of out/$job.jsonl"
head -c 600 "out/$job.jsonl"; echo
