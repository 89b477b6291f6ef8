"""The run machinery: everything that takes claimed requests to the API and writes back what it answers.

- `pool`: `Run`, the worker pool (claim loop, concurrency slots, lease renewal, stopping).
- `send`: one request's round trip (pacing, the send, the reply handed on).
- `poller`: background responses, polled until final.
- `writeback`: group commit of outcomes and response ids.
- `outcomes`: what the API answered (a reply or an error) as the store's `Outcome`.
- `cancel`: `runner cancel`'s cancels of running background responses.
- `types`: `RunOptions`, `Snapshot`, `RunResult`, `StopReason`.

Deliberately empty: `runner.app` and the display import `types` at start-up, and importing the package
must not load the HTTP stack the other modules need.
"""
