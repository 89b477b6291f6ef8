"""README "The doomed-job stop": a 404 from POST /responses stops the whole job (the base URL is wrong), but
"a 404 that names a missing thing, such as `model_not_found` for one line's model, fails only that line".
Azure OpenAI (`--auth-style api-key`) names a missing deployment, its model name, `DeploymentNotFound`: one
line with a wrong model used to stop every run of the job with exit 5 and "check --base-url"."""

from __future__ import annotations

import httpx
import pytest

from runner.client import ApiClient
from runner.config import AuthStyle
from runner.errors import DoomedJobError, PermanentApiError

BASE = "https://example-resource.openai.azure.com/openai/v1"


def _client(status: int, body: object) -> ApiClient:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers={"x-request-id": "req_1"})

    return ApiClient(BASE, "k", auth_style=AuthStyle.API_KEY, transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("code", ["DeploymentNotFound", "model_not_found", "previous_response_not_found"])
@pytest.mark.anyio
async def test_a_404_that_names_a_missing_thing_fails_only_that_line(code: str) -> None:
    body = {"error": {"code": code, "message": "The API deployment for this resource does not exist."}}
    async with _client(404, body) as c:
        with pytest.raises(PermanentApiError) as info:
            await c.create(b'{"model": "gpt-4.1-typo", "input": "x"}')
    assert type(info.value) is PermanentApiError and info.value.code == code


@pytest.mark.parametrize("body", [{"error": {"code": None, "message": "Invalid URL"}}, {"detail": "Not Found"}])
@pytest.mark.anyio
async def test_a_404_of_the_endpoint_itself_still_dooms_the_job(body: object) -> None:
    async with _client(404, body) as c:
        with pytest.raises(DoomedJobError):
            await c.create(b'{"model": "m", "input": "x"}')
