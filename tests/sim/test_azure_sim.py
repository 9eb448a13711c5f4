"""The Azure OpenAI simulator judged by the official openai SDK's Azure client and raw HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from pydantic import BaseModel

from smartflow.sim.azure import AzureOpenAISimulator
from smartflow.sim.base import Fault

API_KEY = "azure-sim-test-key"
API_VERSION = "2024-10-21"
# A 1x1 transparent PNG.
PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6"
    + "kgAAAABJRU5ErkJggg=="
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
        },
    },
]


class City(BaseModel):
    name: str
    population: int


@pytest.fixture
async def sim() -> AsyncIterator[AzureOpenAISimulator]:
    simulator = AzureOpenAISimulator(api_keys=[API_KEY])
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def client(sim: AzureOpenAISimulator) -> AsyncIterator[openai.AsyncAzureOpenAI]:
    sdk = openai.AsyncAzureOpenAI(
        azure_endpoint=sim.base_url, api_version=API_VERSION, api_key=API_KEY, max_retries=0
    )
    yield sdk
    await sdk.close()


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def post_raw(
    url: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=orjson.dumps(body), headers=headers) as response:
            return response.status, await response.json()


async def test_deployment_chat_with_filter_results(
    sim: AzureOpenAISimulator, client: openai.AsyncAzureOpenAI
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="chat-prod", messages=user("Good morning")
    )
    completion = raw.parse()
    assert completion.model == "gpt-4.1-mini-2025-04-14"
    assert completion.choices[0].message.content == (
        "Hello from gpt-4.1-mini-2025-04-14. You said: Good morning"
    )
    extra = completion.model_extra or {}
    assert extra["prompt_filter_results"][0]["content_filter_results"]["hate"]["filtered"] is False
    choice_extra = completion.choices[0].model_extra or {}
    assert choice_extra["content_filter_results"]["violence"]["severity"] == "safe"
    assert raw.headers["apim-request-id"]
    assert raw.headers["x-ms-region"] == "eastus2"
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) > 0
    received = sim.requests[-1]
    assert received.path == "/openai/deployments/chat-prod/chat/completions"
    assert received.query == {"api-version": API_VERSION}
    assert received.headers["api-key"].startswith("sha256:")


async def test_stream_opens_with_empty_choices(client: openai.AsyncAzureOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o", messages=user("hi"), stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices == []
    assert "prompt_filter_results" in (chunks[0].model_extra or {})
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from gpt-4o-2024-08-06. You said: hi"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert all(chunk.obfuscation is None for chunk in chunks)


async def test_stream_helper_tolerates_preamble(client: openai.AsyncAzureOpenAI) -> None:
    async with client.chat.completions.stream(
        model="gpt-4o", messages=user("call tools in parallel"), tools=TOOLS
    ) as stream:
        final = await stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [call.function.name for call in calls] == ["get_weather", "get_time"]
    assert final.choices[0].finish_reason == "tool_calls"


async def test_one_tool_call(client: openai.AsyncAzureOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o", messages=user("weather in Oslo?"), tools=TOOLS
    )
    calls = completion.choices[0].message.tool_calls or []
    assert len(calls) == 1
    assert json.loads(calls[0].function.arguments) == {"city": "sample"}


async def test_images_and_structured_output(client: openai.AsyncAzureOpenAI) -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_BASE64}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/dog.jpg"}},
    ]
    described = await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": content}]
    )
    assert (described.choices[0].message.content or "").endswith("I see 2 image(s).")
    parsed = await client.chat.completions.parse(
        model="gpt-4o", messages=user("A city"), response_format=City
    )
    assert parsed.choices[0].message.parsed == City(name="sample", population=1)


async def test_embeddings_on_deployment(
    sim: AzureOpenAISimulator, client: openai.AsyncAzureOpenAI
) -> None:
    result = await client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert len(result.data[0].embedding) == 1536
    assert sim.requests[-1].path == "/openai/deployments/text-embedding-3-small/embeddings"


async def test_v1_path_with_plain_client(sim: AzureOpenAISimulator) -> None:
    sdk = openai.AsyncOpenAI(base_url=sim.base_url + "/openai/v1", api_key=API_KEY, max_retries=0)
    completion = await sdk.chat.completions.create(model="chat-prod", messages=user("v1"))
    assert completion.model == "gpt-4.1-mini-2025-04-14"
    assert sim.requests[-1].headers["authorization"].startswith("sha256:")
    models = await sdk.models.list()
    assert "chat-prod" in [model.id for model in models.data]
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.chat.completions.create(model="missing-deployment", messages=user("v1"))
    assert (caught.value.body or {})["code"] == "DeploymentNotFound"  # type: ignore[index]
    await sdk.close()


async def test_missing_api_key(sim: AzureOpenAISimulator) -> None:
    url = f"{sim.base_url}/openai/deployments/gpt-4o/chat/completions?api-version={API_VERSION}"
    status, body = await post_raw(url, {"messages": user("x")}, {})
    assert status == 401
    assert body["error"]["code"] == "401"
    assert "Access denied" in body["error"]["message"]


async def test_missing_api_version(sim: AzureOpenAISimulator) -> None:
    url = f"{sim.base_url}/openai/deployments/gpt-4o/chat/completions"
    status, body = await post_raw(url, {"messages": user("x")}, {"api-key": API_KEY})
    assert status == 404
    assert body == {"error": {"code": "404", "message": "Resource not found"}}


async def test_unsupported_api_version(sim: AzureOpenAISimulator) -> None:
    sdk = openai.AsyncAzureOpenAI(
        azure_endpoint=sim.base_url, api_version="2020-01-01", api_key=API_KEY, max_retries=0
    )
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(model="gpt-4o", messages=user("x"))
    assert caught.value.body == {"code": "BadRequest", "message": "API version not supported"}
    await sdk.close()


async def test_unknown_deployment(client: openai.AsyncAzureOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="no-such-deployment", messages=user("x"))
    assert caught.value.code == "DeploymentNotFound"


async def test_reasoning_rules(sim: AzureOpenAISimulator, client: openai.AsyncAzureOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="o3-mini", messages=user("x"), temperature=0.2)
    assert caught.value.code == "unsupported_value"
    assert caught.value.param == "temperature"
    recent = openai.AsyncAzureOpenAI(
        azure_endpoint=sim.base_url,
        api_version="2025-01-01-preview",
        api_key=API_KEY,
        max_retries=0,
    )
    completion = await recent.chat.completions.create(model="o3-mini", messages=user("x"))
    assert completion.usage is not None
    assert completion.usage.completion_tokens_details is not None
    assert (completion.usage.completion_tokens_details.reasoning_tokens or 0) > 0
    await recent.close()


async def test_reasoning_needs_recent_api_version(client: openai.AsyncAzureOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="o3-mini", messages=user("x"))
    assert "2024-12-01-preview" in caught.value.message


async def test_unknown_field_rejection_option(sim: AzureOpenAISimulator) -> None:
    url = f"{sim.base_url}/openai/deployments/gpt-4o/chat/completions?api-version={API_VERSION}"
    body = {"messages": user("x"), "vendor_option": 1}
    status, _ = await post_raw(url, body, {"api-key": API_KEY})
    assert status == 200
    sim.reject_unknown_fields = True
    status, payload = await post_raw(url, body, {"api-key": API_KEY})
    assert status == 400
    assert payload["error"]["message"] == "Unrecognized request argument supplied: vendor_option"


async def test_rate_limit_fault(sim: AzureOpenAISimulator, client: openai.AsyncAzureOpenAI) -> None:
    sim.faults.append(Fault(status=429, retry_after=2))
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="gpt-4o", messages=user("x"))
    assert caught.value.response.headers["retry-after"] == "2"
    assert caught.value.response.headers["retry-after-ms"] == "2000"
    assert caught.value.code == "429"
    assert "retry after" in caught.value.message


async def test_server_error_fault(
    sim: AzureOpenAISimulator, client: openai.AsyncAzureOpenAI
) -> None:
    sim.faults.append(Fault(status=500, model="gpt-4o"))
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="gpt-4o", messages=user("x"))
    assert caught.value.code == "InternalServerError"


async def test_disconnect_fault(sim: AzureOpenAISimulator, client: openai.AsyncAzureOpenAI) -> None:
    sim.faults.append(Fault(disconnect_after=3))
    stream = await client.chat.completions.create(model="gpt-4o", messages=user("x"), stream=True)
    with pytest.raises(openai.APIConnectionError):
        async for _ in stream:
            pass


async def test_error_event_fault(
    sim: AzureOpenAISimulator, client: openai.AsyncAzureOpenAI
) -> None:
    sim.faults.append(Fault(error_after=2))
    stream = await client.chat.completions.create(model="gpt-4o", messages=user("x"), stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
