# Sourced by demo.sh and nightly.sh: start the built-in mock Responses API on a free 127.0.0.1 port with
# the given flags, point OPENAI_BASE_URL at it with the mock's own key, and stop it when the script exits.
start_mock() {
  local log
  log=$(mktemp)
  runner mock-server --port 0 --api-key demo-key "$@" >"$log" 2>&1 &
  mock_pid=$!
  # Wait for it too, so nothing of the demo is still running when make returns.
  trap 'kill "$mock_pid" 2>/dev/null && wait "$mock_pid" 2>/dev/null; rm -f "'"$log"'"' EXIT
  for _ in $(seq 100); do grep -q listening "$log" && break; sleep 0.1; done
  OPENAI_BASE_URL=$(sed -n 's/^mock-server listening on //p' "$log")
  [ -n "$OPENAI_BASE_URL" ] || { cat "$log" >&2; echo "the mock server did not start" >&2; exit 1; }
  # Only the local mock is talked to, with its own key (never a real one).
  export OPENAI_BASE_URL OPENAI_API_KEY=demo-key
}
