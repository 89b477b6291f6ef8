"""The store's retry wrapper: one try when it succeeds or fails for good; transient failures ten tries in all."""

from __future__ import annotations

import pytest

from runner.store import backend
from runner.store.backend import retrying

pytestmark = pytest.mark.anyio


class Busy(Exception):
    pass


def _flaky(failures: int) -> tuple[list[int], object]:
    calls = [0]

    async def fn() -> int:
        calls[0] += 1
        if calls[0] <= failures:
            raise Busy
        return calls[0]

    return calls, fn


@pytest.fixture(autouse=True)
def no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "_RETRY_WAIT", lambda _state: 0.0)


async def test_a_success_or_a_lasting_error_is_one_try() -> None:
    calls, fn = _flaky(0)
    assert await retrying(lambda e: isinstance(e, Busy), fn) == 1  # type: ignore[arg-type]
    calls, fn = _flaky(5)
    with pytest.raises(Busy):
        await retrying(lambda e: False, fn)  # type: ignore[arg-type]
    assert calls == [1]


async def test_transient_errors_are_tried_ten_times_in_all() -> None:
    calls, fn = _flaky(2)
    assert await retrying(lambda e: isinstance(e, Busy), fn) == 3  # type: ignore[arg-type]
    calls, fn = _flaky(9)
    assert await retrying(lambda e: isinstance(e, Busy), fn) == 10  # type: ignore[arg-type]
    calls, fn = _flaky(10)
    with pytest.raises(Busy):
        await retrying(lambda e: isinstance(e, Busy), fn)  # type: ignore[arg-type]
    assert calls == [10]
