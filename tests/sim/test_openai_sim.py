"""The OpenAI simulator judged by the official openai SDK and by raw HTTP."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from pydantic import BaseModel

from smartflow.sim.base import Fault
from smartflow.sim.openai import OpenAISimulator
from smartflow.sim.script import count_tokens

API_KEY = "sk-sim-test-key"
# A 1x1 transparent PNG.
PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6"
    + "kgAAAABJRU5ErkJggg=="
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
    },
}


class City(BaseModel):
    name: str
    population: int


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    simulator = OpenAISimulator()
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def client(sim: OpenAISimulator) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=sim.base_url + "/v1", api_key=API_KEY, max_retries=0)
    yield sdk
    await sdk.close()


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def collect(stream: Any) -> list[Any]:
    return [chunk async for chunk in stream]


# --- plain text ---------------------------------------------------------------------------


async def test_text_completion_parses(client: openai.AsyncOpenAI) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=user("Good morning")
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini-2024-07-18"
    assert completion.choices[0].message.content == (
        "Hello from gpt-4o-mini-2024-07-18. You said: Good morning"
    )
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert raw.headers["x-request-id"].startswith("req_")
    assert int(raw.headers["openai-processing-ms"]) >= 0
    assert int(raw.headers["x-ratelimit-remaining-requests"]) < int(
        raw.headers["x-ratelimit-limit-requests"]
    )
    assert raw.headers["x-ratelimit-reset-tokens"].endswith("s")


async def test_stream_text_with_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=user("Tell me something"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = await collect(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from gpt-4o-2024-08-06. You said: Tell me something"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert len({chunk.id for chunk in chunks}) == 1


async def test_stream_wire_format(sim: OpenAISimulator) -> None:
    body = {
        "model": "gpt-4o",
        "messages": user("hi"),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(
            sim.base_url + "/v1/chat/completions",
            data=orjson.dumps(body),
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            text = await response.text()
    events = [event for event in text.split("\n\n") if event]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event[6:]) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert all("usage" in chunk for chunk in chunks)
    assert all("obfuscation" in chunk for chunk in chunks)


async def test_obfuscation_can_be_turned_off(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=user("hi"),
        stream=True,
        stream_options={"include_obfuscation": False},
    )
    chunks = await collect(stream)
    assert all(chunk.obfuscation is None for chunk in chunks)


async def test_two_choices(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(model="gpt-4o", messages=user("x"), n=2)
    assert [choice.index for choice in completion.choices] == [0, 1]
    assert completion.usage is not None
    text = completion.choices[0].message.content or ""
    assert completion.usage.completion_tokens == 2 * count_tokens(text)


async def test_stop_and_length_finish(client: openai.AsyncOpenAI) -> None:
    stopped = await client.chat.completions.create(
        model="gpt-4o", messages=user("abc"), stop=["You said"]
    )
    assert stopped.choices[0].message.content == "Hello from gpt-4o-2024-08-06. "
    assert stopped.choices[0].finish_reason == "stop"
    cut = await client.chat.completions.create(
        model="gpt-4o", messages=user("abc"), max_completion_tokens=2
    )
    assert cut.choices[0].message.content == "Hello from"
    assert cut.choices[0].finish_reason == "length"


async def test_logprobs(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o", messages=user("hi"), logprobs=True, top_logprobs=3
    )
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert (
        "".join(entry.token for entry in logprobs.content) == completion.choices[0].message.content
    )
    assert all(len(entry.top_logprobs) == 3 for entry in logprobs.content)


# --- tools --------------------------------------------------------------------------------


async def test_one_tool_call(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o", messages=user("What is the weather in Paris?"), tools=[WEATHER, TIME]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert len(calls) == 1
    assert calls[0].type == "function"
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "sample"}


async def test_parallel_tool_calls_stream(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=user("Call both tools in parallel"),
        tools=[WEATHER, TIME],
        stream=True,
    )
    fragments: dict[int, list[Any]] = {}
    finish = None
    async for chunk in stream:
        choice = chunk.choices[0]
        for call in choice.delta.tool_calls or []:
            fragments.setdefault(call.index, []).append(call)
        finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert sorted(fragments) == [0, 1]
    for index, name in ((0, "get_weather"), (1, "get_time")):
        first, *rest = fragments[index]
        assert first.id and first.type == "function"
        assert first.function.name == name
        assert len(rest) > 1
        assert all(piece.id is None and piece.function.name is None for piece in rest)
        arguments = "".join(piece.function.arguments or "" for piece in fragments[index])
        assert isinstance(json.loads(arguments), dict)


async def test_stream_helper_accumulates_tool_calls(client: openai.AsyncOpenAI) -> None:
    async with client.chat.completions.stream(
        model="gpt-4o", messages=user("call tools in parallel"), tools=[WEATHER, TIME]
    ) as stream:
        final = await stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [call.function.name for call in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[1].function.arguments) == {"timezone": "sample"}


async def test_parallel_tool_calls_false(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o",
        messages=user("call tools in parallel"),
        tools=[WEATHER, TIME],
        parallel_tool_calls=False,
    )
    assert len(completion.choices[0].message.tool_calls or []) == 1


async def test_forced_function_finishes_with_stop(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o",
        messages=user("hello"),
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert [call.function.name for call in choice.message.tool_calls or []] == ["get_time"]


async def test_tool_result_round_trip(client: openai.AsyncOpenAI) -> None:
    messages = [
        *user("weather in Paris?"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    completion = await client.chat.completions.create(
        model="gpt-4o", messages=messages, tools=[WEATHER]
    )
    assert completion.choices[0].message.content == "Tool results received: sunny"


# --- images and structured output ---------------------------------------------------------


async def test_image_base64_and_url(client: openai.AsyncOpenAI) -> None:
    content = [
        {"type": "text", "text": "Describe these"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_BASE64}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
    ]
    completion = await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": content}]
    )
    assert completion.choices[0].message.content is not None
    assert completion.choices[0].message.content.endswith("I see 2 image(s).")


async def test_json_mode(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o",
        messages=user("Reply in json please"),
        response_format={"type": "json_object"},
    )
    assert json.loads(completion.choices[0].message.content or "") == {
        "answer": "Reply in json please"
    }


async def test_structured_output_parse(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.parse(
        model="gpt-4o", messages=user("Largest city?"), response_format=City
    )
    parsed = completion.choices[0].message.parsed
    assert parsed == City(name="sample", population=1)


# --- reasoning models ---------------------------------------------------------------------


async def test_reasoning_usage(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-5-mini", messages=user("hi"), reasoning_effort="high"
    )
    usage = completion.usage
    assert usage is not None and usage.completion_tokens_details is not None
    reasoning = usage.completion_tokens_details.reasoning_tokens
    assert reasoning is not None and reasoning > 0
    assert usage.completion_tokens > reasoning


@pytest.mark.parametrize(
    ("model", "options", "param", "code"),
    [
        ("o3-mini", {"temperature": 0.5}, "temperature", "unsupported_value"),
        ("gpt-5", {"max_tokens": 10}, "max_tokens", "unsupported_parameter"),
        ("gpt-5-mini", {"top_p": 0.9}, "top_p", "unsupported_parameter"),
        ("o4-mini", {"presence_penalty": 0.5}, "presence_penalty", "unsupported_parameter"),
        ("gpt-5", {"logprobs": True}, "logprobs", "unsupported_parameter"),
        ("o3", {"stop": ["x"]}, "stop", "unsupported_parameter"),
        ("o3-mini", {"reasoning_effort": "minimal"}, "reasoning_effort", "unsupported_value"),
        ("gpt-4o", {"reasoning_effort": "low"}, "reasoning_effort", "unsupported_parameter"),
    ],
)
async def test_reasoning_restrictions(
    client: openai.AsyncOpenAI, model: str, options: dict[str, Any], param: str, code: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=model, messages=user("x"), **options)
    assert caught.value.param == param
    assert caught.value.code == code


async def test_reasoning_accepts_default_temperature(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="o3-mini", messages=user("x"), temperature=1, max_completion_tokens=500
    )
    assert completion.choices[0].finish_reason == "stop"


# --- validation ---------------------------------------------------------------------------


async def test_unknown_model(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="gpt-nonexistent", messages=user("x"))
    assert caught.value.code == "model_not_found"


BAD_REQUESTS: list[tuple[dict[str, Any], str, str | None]] = [
    ({"temperature": 2.5}, "temperature", "decimal_above_max_value"),
    ({"temperature": "hot"}, "temperature", "invalid_type"),
    ({"top_p": 1.5}, "top_p", "decimal_above_max_value"),
    ({"n": 0}, "n", "integer_below_min_value"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "array_above_max_length"),
    ({"presence_penalty": -3}, "presence_penalty", "decimal_below_min_value"),
    ({"frequency_penalty": 2.1}, "frequency_penalty", "decimal_above_max_value"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "integer_above_max_value"),
    ({"top_logprobs": 2}, "top_logprobs", "invalid_value"),
    ({"messages": []}, "messages", "empty_array"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "invalid_value"),
    ({"messages": [{"content": "x"}]}, "messages[0].role", "missing_required_parameter"),
    (
        {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
        "tools[0].function.name",
        "invalid_value",
    ),
    (
        {"tools": [{"type": "function", "function": {"name": "x" * 65}}]},
        "tools[0].function.name",
        "string_above_max_length",
    ),
    ({"tool_choice": "required"}, "tool_choice", None),
    ({"response_format": {"type": "json_object"}}, "messages", None),
    ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
    (
        {"messages": [{"role": "tool", "tool_call_id": "call_9", "content": "x"}]},
        "messages.[0].role",
        None,
    ),
]


@pytest.mark.parametrize(("options", "param", "code"), BAD_REQUESTS)
async def test_invalid_requests(
    client: openai.AsyncOpenAI, options: dict[str, Any], param: str, code: str | None
) -> None:
    arguments = {"model": "gpt-4o", "messages": user("hello"), **options}
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(**arguments)
    assert caught.value.param == param
    assert caught.value.code == code
    assert caught.value.type == "invalid_request_error"


async def test_unanswered_tool_call_rejected(client: openai.AsyncOpenAI) -> None:
    call = {
        "id": "call_7",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
    }
    messages = [
        *user("weather?"),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        *user("and?"),
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="gpt-4o", messages=messages, tools=[WEATHER])
    assert "call_7" in caught.value.message


async def test_image_rejected_without_vision(client: openai.AsyncOpenAI) -> None:
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="gpt-3.5-turbo", messages=[{"role": "user", "content": content}]
        )
    assert caught.value.param == "messages[0].content[0].type"


async def test_missing_and_wrong_key(sim: OpenAISimulator) -> None:
    sim.api_keys = frozenset({API_KEY})
    wrong = openai.AsyncOpenAI(
        base_url=sim.base_url + "/v1", api_key="sk-wrong-0000", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as caught:
        await wrong.chat.completions.create(model="gpt-4o", messages=user("x"))
    assert caught.value.code == "invalid_api_key"
    await wrong.close()
    async with aiohttp.ClientSession() as http:
        async with http.post(sim.base_url + "/v1/chat/completions", json={}) as response:
            assert response.status == 401
            body = await response.json()
    assert body["error"]["type"] == "invalid_request_error"
    assert "API key" in body["error"]["message"]


async def test_unknown_fields_accepted_and_counted(
    sim: OpenAISimulator, client: openai.AsyncOpenAI
) -> None:
    await client.chat.completions.create(
        model="gpt-4o", messages=user("x"), extra_body={"vendor_option": {"level": 2}}
    )
    assert sim.unknown_fields["vendor_option"] == 1
    assert sim.requests[-1].body["vendor_option"] == {"level": 2}


async def test_extra_response_field_added(sim: OpenAISimulator, client: openai.AsyncOpenAI) -> None:
    sim.extra_response_fields["x_upstream"] = "added"
    completion = await client.chat.completions.create(model="gpt-4o", messages=user("x"))
    assert completion.model_extra == {"x_upstream": "added"}
    stream = await client.chat.completions.create(model="gpt-4o", messages=user("x"), stream=True)
    chunks = await collect(stream)
    assert all((chunk.model_extra or {}).get("x_upstream") == "added" for chunk in chunks)


# --- faults -------------------------------------------------------------------------------

ERROR_CLASSES = [
    (400, openai.BadRequestError),
    (401, openai.AuthenticationError),
    (403, openai.PermissionDeniedError),
    (404, openai.NotFoundError),
    (409, openai.ConflictError),
    (422, openai.UnprocessableEntityError),
    (429, openai.RateLimitError),
    (500, openai.InternalServerError),
    (503, openai.InternalServerError),
]


@pytest.mark.parametrize(("status", "error_class"), ERROR_CLASSES)
async def test_fault_status_raises_sdk_error(
    sim: OpenAISimulator, client: openai.AsyncOpenAI, status: int, error_class: type[Exception]
) -> None:
    sim.faults.append(Fault(status=status, message="injected"))
    with pytest.raises(error_class) as caught:
        await client.chat.completions.create(model="gpt-4o", messages=user("x"))
    assert isinstance(caught.value, openai.APIStatusError)
    assert caught.value.status_code == status
    assert caught.value.message.endswith("injected")


async def test_rate_limit_retry_after(sim: OpenAISimulator, client: openai.AsyncOpenAI) -> None:
    async with aiohttp.ClientSession() as http:
        fault = {"status": 429, "retry_after": 7}
        async with http.post(sim.base_url + "/__sim/faults", json=fault) as response:
            assert response.status == 200
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="gpt-4o", messages=user("x"))
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"


async def test_latency_fault(sim: OpenAISimulator, client: openai.AsyncOpenAI) -> None:
    sim.faults.append(Fault(latency=0.3))
    started = time.monotonic()
    await client.chat.completions.create(model="gpt-4o", messages=user("x"))
    assert time.monotonic() - started >= 0.3


async def test_disconnect_fault_stream(sim: OpenAISimulator, client: openai.AsyncOpenAI) -> None:
    sim.faults.append(Fault(disconnect_after=2))
    stream = await client.chat.completions.create(model="gpt-4o", messages=user("x"), stream=True)
    with pytest.raises(openai.APIConnectionError):
        await collect(stream)


async def test_disconnect_fault_whole(sim: OpenAISimulator, client: openai.AsyncOpenAI) -> None:
    sim.faults.append(Fault(disconnect_after=0))
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="gpt-4o", messages=user("x"))


async def test_error_after_fault_stream(sim: OpenAISimulator, client: openai.AsyncOpenAI) -> None:
    sim.faults.append(Fault(error_after=2))
    stream = await client.chat.completions.create(model="gpt-4o", messages=user("x"), stream=True)
    with pytest.raises(openai.APIError) as caught:
        await collect(stream)
    assert "server had an error" in caught.value.message


# --- embeddings and models ----------------------------------------------------------------


async def test_embeddings_float_and_base64(client: openai.AsyncOpenAI) -> None:
    as_float = await client.embeddings.create(
        model="text-embedding-3-small", input=["alpha", "beta"], encoding_format="float"
    )
    as_base64 = await client.embeddings.create(
        model="text-embedding-3-small", input=["alpha", "beta"]
    )
    assert len(as_float.data) == 2
    assert len(as_float.data[0].embedding) == 1536
    assert as_float.data[0].embedding != as_float.data[1].embedding
    for exact, packed in zip(as_float.data, as_base64.data, strict=True):
        assert packed.embedding == pytest.approx(exact.embedding, abs=1e-6)
    assert sum(v * v for v in as_float.data[0].embedding) == pytest.approx(1.0)
    assert as_float.usage.prompt_tokens == 2


async def test_embeddings_dimensions(client: openai.AsyncOpenAI, sim: OpenAISimulator) -> None:
    full = await client.embeddings.create(
        model="text-embedding-3-large", input="alpha", encoding_format="float"
    )
    short = await client.embeddings.create(
        model="text-embedding-3-large", input="alpha", dimensions=4, encoding_format="float"
    )
    assert len(full.data[0].embedding) == 3072
    assert len(short.data[0].embedding) == 4
    ratio = short.data[0].embedding[0] / full.data[0].embedding[0]
    assert short.data[0].embedding == pytest.approx([v * ratio for v in full.data[0].embedding[:4]])
    with pytest.raises(openai.BadRequestError) as caught:
        await client.embeddings.create(model="text-embedding-ada-002", input="a", dimensions=8)
    assert caught.value.param == "dimensions"


async def test_embeddings_base64_wire(sim: OpenAISimulator) -> None:
    body = {"model": "text-embedding-3-small", "input": [1, 2, 3], "encoding_format": "base64"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            sim.base_url + "/v1/embeddings",
            data=orjson.dumps(body),
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as response:
            payload = await response.json()
    assert len(base64.b64decode(payload["data"][0]["embedding"])) == 4 * 1536
    assert payload["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


async def test_embedding_model_rejected_for_chat(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="text-embedding-3-small", messages=user("x"))


async def test_models_list_and_retrieve(client: openai.AsyncOpenAI) -> None:
    page = await client.models.list()
    ids = [model.id for model in page.data]
    assert {"gpt-4o", "gpt-4o-2024-08-06", "o3-mini", "gpt-5", "text-embedding-3-small"} <= set(ids)
    model = await client.models.retrieve("gpt-5-mini")
    assert model.owned_by == "system"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("gpt-unknown")
