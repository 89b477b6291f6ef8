"""`classify_reply` on HTTP that foreign servers send: redirects of a create, statuses that are not HTTP."""

from __future__ import annotations

import httpx
import pytest

from runner.client import MAX_SHOWN_LOCATION, classify_reply
from runner.errors import DoomedJobError, PermanentApiError

CREATE = httpx.URL("http://127.0.0.1:8787/v1/responses")


def _where() -> str:
    return "POST http://127.0.0.1:8787/v1/responses"


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("https://u:pw@gw.example/v1/responses?token=s3cret#f", "redirect to https://gw.example/v1/responses;"),
        ("/openai/v1/responses", "redirect to http://127.0.0.1:8787/openai/v1/responses;"),
        ("http://[::1", "(a redirect) instead of an answer;"),
        (None, "(a redirect) instead of an answer;"),
    ],
)
def test_a_redirected_create_dooms_the_job_and_shows_where_without_secrets(location: str | None, shown: str) -> None:
    headers = {"location": location} if location is not None else {}
    with pytest.raises(DoomedJobError) as info:
        classify_reply(307, headers, b"", where=_where, create_url=CREATE)
    message = str(info.value)
    assert message.startswith(f"POST {CREATE}: 307 {shown}")
    assert "s3cret" not in message and "pw" not in message
    assert "set --base-url" in message


def test_a_huge_location_is_cut() -> None:
    with pytest.raises(DoomedJobError) as info:
        classify_reply(308, {"location": "/" + "x" * 100_000}, b"", where=_where, create_url=CREATE)
    assert len(str(info.value)) < MAX_SHOWN_LOCATION + 200


def test_a_redirected_poll_fails_only_its_request() -> None:
    with pytest.raises(PermanentApiError):
        classify_reply(302, {"location": "/elsewhere"}, b"", where=lambda: "GET http://h/v1/responses/r")


@pytest.mark.parametrize("status", [0, 99, 600, 999])
def test_a_status_outside_http_is_an_unreadable_reply_not_a_5xx(status: int) -> None:
    with pytest.raises(PermanentApiError) as info:
        classify_reply(status, {}, b'{"error": {"message": "odd", "code": "odd"}}', where=_where, create_url=CREATE)
    assert (info.value.code, info.value.status) == ("invalid_reply_head", status)
