"""The Anthropic simulator judged by the official anthropic SDK and by raw HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
from pydantic import BaseModel

from smartflow.sim.anthropic import AnthropicSimulator
from smartflow.sim.base import Fault
from smartflow.sim.script import count_tokens

API_KEY = "sk-ant-sim-test-key"
# A 1x1 transparent PNG.
PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6"
    + "kgAAAABJRU5ErkJggg=="
)
WEATHER = {
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
TIME = {
    "name": "get_time",
    "input_schema": {"type": "object", "properties": {"timezone": {"type": "string"}}},
}


class City(BaseModel):
    name: str
    population: int


@pytest.fixture
async def sim() -> AsyncIterator[AnthropicSimulator]:
    simulator = AnthropicSimulator(api_keys=[API_KEY])
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def client(sim: AnthropicSimulator) -> AsyncIterator[anthropic.AsyncAnthropic]:
    sdk = anthropic.AsyncAnthropic(base_url=sim.base_url, api_key=API_KEY, max_retries=0)
    yield sdk
    await sdk.close()


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def raw_stream(
    sim: AnthropicSimulator, body: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """POST a streamed request and return (event name, data) pairs."""
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            sim.base_url + "/v1/messages",
            data=orjson.dumps({**body, "stream": True}),
            headers=headers,
        ) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            text = await response.text()
    events = []
    for block in text.strip().split("\n\n"):
        name_line, data_line = block.split("\n")
        events.append(
            (name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: ")))
        )
    return events


# --- text ---------------------------------------------------------------------------------


async def test_text_message_parses(client: anthropic.AsyncAnthropic) -> None:
    raw = await client.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=200, system="Be brief.", messages=user("Good morning")
    )
    message = await raw.parse()
    assert message.model == "claude-sonnet-4-5-20250929"
    assert message.id.startswith("msg_")
    assert message.stop_reason == "end_turn"
    text = message.content[0]
    assert text.type == "text"
    assert text.text == "Hello from claude-sonnet-4-5-20250929. You said: Good morning"
    assert message.usage.output_tokens == count_tokens(text.text)
    assert message.usage.input_tokens == count_tokens("Be brief.") + count_tokens("Good morning")
    assert message.usage.cache_read_input_tokens == 0
    assert raw.headers["request-id"].startswith("req_")
    assert int(raw.headers["anthropic-ratelimit-requests-remaining"]) > 0
    assert raw.headers["anthropic-ratelimit-tokens-reset"].endswith("Z")


async def test_stream_event_order(sim: AnthropicSimulator) -> None:
    events = await raw_stream(
        sim, {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": user("hello there")}
    )
    names = [name for name, _ in events]
    assert all(name == data["type"] for name, data in events)
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    deltas = [data["delta"]["text"] for name, data in events if name == "content_block_delta"]
    assert len(deltas) > 1
    message_delta = events[-2][1]
    assert message_delta["delta"]["stop_reason"] == "end_turn"
    assert message_delta["usage"]["output_tokens"] == count_tokens("".join(deltas))
    assert message_delta["usage"]["input_tokens"] == start["usage"]["input_tokens"]


async def test_stream_helper_matches_whole_message(client: anthropic.AsyncAnthropic) -> None:
    whole = await client.messages.create(
        model="claude-haiku-4-5", max_tokens=100, messages=user("stream me")
    )
    async with client.messages.stream(
        model="claude-haiku-4-5", max_tokens=100, messages=user("stream me")
    ) as stream:
        pieces = [piece async for piece in stream.text_stream]
        final = await stream.get_final_message()
    assert len(pieces) > 1
    assert "".join(pieces) == whole.content[0].text  # type: ignore[union-attr]
    assert [block.model_dump(exclude={"parsed_output"}) for block in final.content] == [
        block.model_dump() for block in whole.content
    ]
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.stop_reason == "end_turn"


# --- tools --------------------------------------------------------------------------------


async def test_one_tool_call(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=200,
        messages=user("What is the weather in Rome?"),
        tools=[WEATHER, TIME],
    )
    assert message.stop_reason == "tool_use"
    assert len(message.content) == 1
    block = message.content[0]
    assert block.type == "tool_use"
    assert block.name == "get_weather"
    assert block.input == {"city": "sample"}
    assert block.id.startswith("toolu_")


async def test_parallel_tool_calls_stream(client: anthropic.AsyncAnthropic) -> None:
    async with client.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=200,
        messages=user("call both tools in parallel"),
        tools=[WEATHER, TIME],
    ) as stream:
        json_deltas = 0
        async for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                json_deltas += 1
        final = await stream.get_final_message()
    assert json_deltas > 4
    assert [block.type for block in final.content] == ["tool_use", "tool_use"]
    assert [block.input for block in final.content] == [  # type: ignore[union-attr]
        {"city": "sample"},
        {"timezone": "sample"},
    ]
    assert final.stop_reason == "tool_use"


async def test_disable_parallel_tool_use(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=200,
        messages=user("call both tools in parallel"),
        tools=[WEATHER, TIME],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
    )
    assert len(message.content) == 1


async def test_tool_result_round_trip(client: anthropic.AsyncAnthropic) -> None:
    messages = [
        *user("weather?"),
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "rainy"}],
        },
    ]
    message = await client.messages.create(
        model="claude-sonnet-4-5", max_tokens=100, messages=messages, tools=[WEATHER]
    )
    assert message.content[0].text == "Tool results received: rainy"  # type: ignore[union-attr]


# --- images, structured output, thinking --------------------------------------------------


async def test_image_base64_and_url(client: anthropic.AsyncAnthropic) -> None:
    content = [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": PNG_BASE64},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {"type": "text", "text": "Describe"},
    ]
    message = await client.messages.create(
        model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": content}]
    )
    assert message.content[0].text.endswith("I see 2 image(s).")  # type: ignore[union-attr]


async def test_structured_output(client: anthropic.AsyncAnthropic) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "size": {"type": "integer"}},
    }
    message = await client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=100,
        messages=user("A city"),
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    assert json.loads(message.content[0].text) == {"name": "sample", "size": 1}  # type: ignore[union-attr]
    parsed = await client.messages.parse(
        model="claude-sonnet-4-5", max_tokens=100, messages=user("A city"), output_format=City
    )
    assert parsed.parsed_output == City(name="sample", population=1)


async def test_thinking_stream(client: anthropic.AsyncAnthropic) -> None:
    async with client.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=4000,
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=user("think first"),
    ) as stream:
        kinds = {event.delta.type async for event in stream if event.type == "content_block_delta"}
        final = await stream.get_final_message()
    assert {"thinking_delta", "signature_delta", "text_delta"} <= kinds
    thinking, text = final.content
    assert thinking.type == "thinking"
    assert thinking.thinking.startswith("The user wrote: think first")
    assert thinking.signature
    assert text.type == "text"
    details = final.usage.output_tokens_details
    assert details is not None and details.thinking_tokens > 0
    assert final.usage.output_tokens == details.thinking_tokens + count_tokens(text.text)


async def test_adaptive_thinking_omitted_display(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model="claude-opus-4-7",
        max_tokens=1000,
        thinking={"type": "adaptive"},
        messages=user("hello"),
    )
    assert message.content[0].type == "thinking"
    assert message.content[0].thinking == ""
    assert message.content[0].signature


async def test_count_tokens_matches_usage(client: anthropic.AsyncAnthropic) -> None:
    arguments: dict[str, Any] = {
        "model": "claude-haiku-4-5",
        "messages": user("count these words please"),
        "system": "You are terse.",
        "tools": [WEATHER],
    }
    counted = await client.messages.count_tokens(**arguments)
    message = await client.messages.create(max_tokens=50, **arguments)
    assert counted.input_tokens == message.usage.input_tokens


async def test_models_list_and_retrieve(client: anthropic.AsyncAnthropic) -> None:
    page = await client.models.list()
    ids = [model.id for model in page.data]
    assert "claude-sonnet-4-5-20250929" in ids
    assert "claude-sonnet-4-5" not in ids
    model = await client.models.retrieve("claude-haiku-4-5")
    assert model.id == "claude-haiku-4-5-20251001"
    assert model.display_name == "Claude Haiku 4.5"


# --- validation ---------------------------------------------------------------------------


async def test_unknown_model(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        await client.messages.create(model="claude-unknown", max_tokens=10, messages=user("x"))
    assert caught.value.type == "not_found_error"
    assert caught.value.api_message == "model: claude-unknown"


async def test_missing_max_tokens(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=anthropic.omit,  # type: ignore[arg-type]
            messages=user("x"),
            timeout=30,
        )
    assert caught.value.api_message == "max_tokens: Field required"
    assert caught.value.type == "invalid_request_error"


BAD_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    (
        "claude-sonnet-4-5",
        {"temperature": 1.5},
        "temperature: Input should be less than or equal to 1",
    ),
    ("claude-sonnet-4-5", {"top_p": -0.1}, "top_p: Input should be greater than or equal to 0"),
    ("claude-sonnet-4-5", {"top_k": 0}, "top_k: Input should be greater than or equal to 1"),
    (
        "claude-sonnet-4-5",
        {"temperature": 0.5, "top_p": 0.9},
        "`temperature` and `top_p` cannot both",
    ),
    (
        "claude-haiku-4-5",
        {"temperature": 0.5, "top_p": 0.9},
        "`temperature` and `top_p` cannot both",
    ),
    ("claude-opus-4-7", {"temperature": 0.2}, "`temperature` is deprecated for this model"),
    ("claude-sonnet-4-5", {"max_tokens": 100_000}, "max_tokens: 100000 > 64000"),
    (
        "claude-sonnet-4-5",
        {"thinking": {"type": "enabled", "budget_tokens": 512}},
        "budget_tokens: Input should be greater than or equal to 1024",
    ),
    (
        "claude-sonnet-4-5",
        {"thinking": {"type": "enabled", "budget_tokens": 2048}},
        "`max_tokens` must be greater than `thinking.budget_tokens`",
    ),
    (
        "claude-sonnet-4-5",
        {
            "max_tokens": 4000,
            "temperature": 0.5,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        },
        "`temperature` may only be set to 1",
    ),
    (
        "claude-sonnet-4-5",
        {
            "max_tokens": 4000,
            "tool_choice": {"type": "any"},
            "tools": [WEATHER],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        },
        "tool_choice forces tool use",
    ),
    (
        "claude-opus-4-7",
        {"max_tokens": 4000, "thinking": {"type": "enabled", "budget_tokens": 1024}},
        "thinking.type.enabled is not supported",
    ),
    (
        "claude-sonnet-4-5",
        {"messages": [{"role": "assistant", "content": "hi"}]},
        'first message must use the "user" role',
    ),
    (
        "claude-sonnet-4-5",
        {"messages": [{"role": "system", "content": "hi"}]},
        "messages.0.role: Input should be 'user' or 'assistant'",
    ),
    (
        "claude-sonnet-4-5",
        {"messages": [{"role": "user", "content": ""}]},
        "messages.0: all messages must have non-empty content",
    ),
    (
        "claude-sonnet-4-6",
        {"messages": [*user("hi"), {"role": "assistant", "content": "Sure"}]},
        "does not support assistant message prefill",
    ),
    (
        "claude-sonnet-4-5",
        {"tools": [{"name": "bad name", "input_schema": {"type": "object"}}]},
        "tools.0.custom.name: String should match pattern",
    ),
    (
        "claude-sonnet-4-5",
        {
            "messages": [
                *user("a"),
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {}}
                    ],
                },
                *user("b"),
            ],
            "tools": [WEATHER],
        },
        "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_9",
    ),
    (
        "claude-sonnet-4-5",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "toolu_5", "content": "x"}],
                }
            ]
        },
        "unexpected `tool_use_id` found in `tool_result` blocks: toolu_5",
    ),
    (
        "claude-sonnet-4-5",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/bmp",
                                "data": PNG_BASE64,
                            },
                        }
                    ],
                }
            ]
        },
        "messages.0.content.0.source.base64.media_type",
    ),
]


@pytest.mark.parametrize(("model", "options", "message"), BAD_REQUESTS)
async def test_invalid_requests(
    sim: AnthropicSimulator, model: str, options: dict[str, Any], message: str
) -> None:
    body = {"model": model, "max_tokens": 1024, "messages": user("hello"), **options}
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            sim.base_url + "/v1/messages", data=orjson.dumps(body), headers=headers
        ) as response:
            status = response.status
            payload = await response.json()
    assert status == 400
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "invalid_request_error"
    assert message in payload["error"]["message"]
    assert payload["request_id"].startswith("req_")


async def test_sampling_rules_per_model(client: anthropic.AsyncAnthropic) -> None:
    both = {"temperature": 0.5, "top_p": 0.9}
    message = await client.messages.create(
        model="claude-opus-4-6", max_tokens=50, messages=user("x"), extra_body=both
    )
    assert message.stop_reason == "end_turn"
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.create(
            model="claude-sonnet-4-5", max_tokens=50, messages=user("x"), extra_body=both
        )


async def test_prefill_allowed_on_older_model(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=50,
        messages=[*user("hi"), {"role": "assistant", "content": "Sure"}],
    )
    assert message.content[0].type == "text"


async def test_missing_headers(sim: AnthropicSimulator) -> None:
    body = orjson.dumps({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": user("x")})
    async with aiohttp.ClientSession() as http:
        async with http.post(
            sim.base_url + "/v1/messages", data=body, headers={"anthropic-version": "2023-06-01"}
        ) as response:
            assert response.status == 401
            payload = await response.json()
        assert payload["error"] == {
            "type": "authentication_error",
            "message": "x-api-key header is required",
        }
        async with http.post(
            sim.base_url + "/v1/messages", data=body, headers={"x-api-key": API_KEY}
        ) as response:
            assert response.status == 400
            payload = await response.json()
        assert "anthropic-version" in payload["error"]["message"]


async def test_wrong_key(sim: AnthropicSimulator) -> None:
    sdk = anthropic.AsyncAnthropic(base_url=sim.base_url, api_key="sk-ant-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        await sdk.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=user("x"))
    await sdk.close()


# --- faults -------------------------------------------------------------------------------

ERROR_CLASSES = [
    (400, anthropic.BadRequestError, "invalid_request_error"),
    (401, anthropic.AuthenticationError, "authentication_error"),
    (403, anthropic.PermissionDeniedError, "permission_error"),
    (404, anthropic.NotFoundError, "not_found_error"),
    (413, anthropic.ContentTooLargeError, "request_too_large"),
    (429, anthropic.RateLimitError, "rate_limit_error"),
    (500, anthropic.InternalServerError, "api_error"),
    (529, anthropic.OverloadedError, "overloaded_error"),
]


@pytest.mark.parametrize(("status", "error_class", "error_type"), ERROR_CLASSES)
async def test_fault_status_raises_sdk_error(
    sim: AnthropicSimulator,
    client: anthropic.AsyncAnthropic,
    status: int,
    error_class: type[Exception],
    error_type: str,
) -> None:
    sim.faults.append(Fault(status=status, message="injected"))
    with pytest.raises(error_class) as caught:
        await client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=user("x"))
    assert isinstance(caught.value, anthropic.APIStatusError)
    assert caught.value.status_code == status
    assert caught.value.type == error_type
    assert caught.value.request_id is not None


async def test_rate_limit_retry_after(
    sim: AnthropicSimulator, client: anthropic.AsyncAnthropic
) -> None:
    sim.faults.append(Fault(status=429, retry_after=12))
    with pytest.raises(anthropic.RateLimitError) as caught:
        await client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=user("x"))
    assert caught.value.response.headers["retry-after"] == "12"


async def test_error_after_fault_raises_in_stream(
    sim: AnthropicSimulator, client: anthropic.AsyncAnthropic
) -> None:
    sim.faults.append(Fault(error_after=3))
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=100, messages=user("x")
        ) as stream:
            async for event in stream:
                seen.append(event.type)
    assert seen[0] == "message_start"
    assert caught.value.type == "overloaded_error"


async def test_disconnect_fault(sim: AnthropicSimulator, client: anthropic.AsyncAnthropic) -> None:
    sim.faults.append(Fault(disconnect_after=2))
    with pytest.raises(anthropic.APIConnectionError):
        async with client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=100, messages=user("x")
        ) as stream:
            await stream.get_final_message()
    sim.faults.append(Fault(disconnect_after=0))
    with pytest.raises(anthropic.APIConnectionError):
        await client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=user("x"))


async def test_latency_and_chunk_delay(
    sim: AnthropicSimulator, client: anthropic.AsyncAnthropic
) -> None:
    sim.faults.append(Fault(latency=0.2, chunk_delay=0.01))
    started = time.monotonic()
    async with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=100, messages=user("x")
    ) as stream:
        await stream.get_final_message()
    assert time.monotonic() - started >= 0.2 + 0.01 * 5
