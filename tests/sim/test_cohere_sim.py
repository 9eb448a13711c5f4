"""The Cohere simulator judged by the official cohere SDK (v2 client) and by raw HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import cohere
import httpx
import pytest
from cohere import errors as cohere_errors

from smartflow.sim.base import Fault
from smartflow.sim.cohere import CohereSimulator

API_KEY = "fake-cohere-key"
PNG_DATA_URI = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhf"
    "DwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Return the weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Return the time in a timezone.",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
    },
}


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(autouse=True)
def isolated_cohere_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the SDK away from real keys, proxies and Cohere hosts."""
    monkeypatch.setenv("CO_API_KEY", "fake-key-from-environment")
    monkeypatch.delenv("CO_API_URL", raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
async def sim() -> AsyncIterator[CohereSimulator]:
    simulator = CohereSimulator(api_keys={API_KEY})
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def client(sim: CohereSimulator) -> AsyncIterator[cohere.AsyncClientV2]:
    async with cohere.AsyncClientV2(api_key=API_KEY, base_url=sim.base_url, max_retries=0) as co:
        yield co


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [event async for event in stream]


def streamed_text(events: list[Any], kind: str = "text") -> str:
    pieces = []
    for event in events:
        if event.type == "content-delta":
            content = event.delta.message.content
            pieces.append(getattr(content, kind) or "")
    return "".join(pieces)


# --- text ------------------------------------------------------------------------------


async def test_chat_text_and_usage(sim: CohereSimulator, client: cohere.AsyncClientV2) -> None:
    response = await client.chat(
        model="command-a-03-2025",
        messages=[{"role": "system", "content": "Be brief."}, *user("Hello there")],
        temperature=0.3,
    )

    assert response.finish_reason == "COMPLETE"
    assert response.message.role == "assistant"
    assert response.message.content[0].type == "text"
    assert response.message.content[0].text == "Hello from command-a-03-2025. You said: Hello there"
    usage = response.usage
    assert usage.billed_units.input_tokens == 5
    assert usage.billed_units.output_tokens == 15
    assert usage.tokens.input_tokens > usage.billed_units.input_tokens
    assert usage.tokens.output_tokens == 15
    sent = sim.requests[-1].headers["authorization"]
    assert sent == "sha256:" + hashlib.sha256(f"Bearer {API_KEY}".encode()).hexdigest()


async def test_chat_stream_event_sequence(client: cohere.AsyncClientV2) -> None:
    full = await client.chat(model="command-a-03-2025", messages=user("Tell me a story"))
    events = await collect(
        client.chat_stream(model="command-a-03-2025", messages=user("Tell me a story"))
    )

    types = [event.type for event in events]
    deltas = types.count("content-delta")
    assert deltas > 1
    assert types == [
        "message-start",
        "content-start",
        *["content-delta"] * deltas,
        "content-end",
        "message-end",
    ]
    assert events[0].id
    assert events[0].delta.message.role == "assistant"
    assert events[1].delta.message.content.type == "text"
    assert streamed_text(events) == full.message.content[0].text
    end = events[-1].delta
    assert end.finish_reason == "COMPLETE"
    assert end.usage.billed_units.output_tokens == full.usage.billed_units.output_tokens


async def test_sse_framing_names_each_event(sim: CohereSimulator) -> None:
    body = {"model": "command-r7b-12-2024", "messages": user("hi"), "stream": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(sim.base_url + "/v2/chat", json=body, headers=headers) as response,
    ):
        raw = (await response.read()).decode()
        content_type = response.headers["Content-Type"]

    assert content_type.startswith("text/event-stream")
    events = [block.split("\n") for block in raw.split("\n\n") if block]
    for event_line, data_line in events:
        assert event_line.startswith("event: ")
        assert json.loads(data_line.removeprefix("data: "))["type"] == event_line[7:]
    assert "[DONE]" not in raw


async def test_max_tokens_and_stop_sequence(client: cohere.AsyncClientV2) -> None:
    truncated = await client.chat(model="command-a-03-2025", messages=user("x"), max_tokens=2)
    stopped = await client.chat(
        model="command-a-03-2025", messages=user("x"), stop_sequences=["You said"]
    )

    assert truncated.finish_reason == "MAX_TOKENS"
    assert truncated.message.content[0].text == "Hello from"
    assert stopped.finish_reason == "STOP_SEQUENCE"
    assert stopped.message.content[0].text == "Hello from command-a-03-2025. "


async def test_reasoning_model_thinks(client: cohere.AsyncClientV2) -> None:
    response = await client.chat(model="command-a-reasoning-08-2025", messages=user("Why?"))
    events = await collect(
        client.chat_stream(model="command-a-reasoning-08-2025", messages=user("Why?"))
    )

    kinds = [item.type for item in response.message.content]
    assert kinds == ["thinking", "text"]
    assert response.message.content[0].thinking
    assert streamed_text(events, "thinking") == response.message.content[0].thinking
    starts = [e for e in events if e.type == "content-start"]
    assert [e.delta.message.content.type for e in starts] == ["thinking", "text"]
    assert [e.index for e in starts] == [0, 1]


async def test_documents_produce_citations(client: cohere.AsyncClientV2) -> None:
    documents = [{"id": "doc-1", "data": {"text": "Paris is in France."}}]
    response = await client.chat(
        model="command-a-03-2025", messages=user("Where is Paris?"), documents=documents
    )
    events = await collect(
        client.chat_stream(
            model="command-a-03-2025", messages=user("Where is Paris?"), documents=documents
        )
    )

    citation = response.message.citations[0]
    assert citation.sources[0].id == "doc-1"
    assert response.message.content[0].text[citation.start : citation.end] == citation.text
    types = [event.type for event in events]
    assert types.index("citation-start") < types.index("citation-end") < types.index("content-end")


# --- tools -----------------------------------------------------------------------------


async def test_single_tool_call(client: cohere.AsyncClientV2) -> None:
    response = await client.chat(
        model="command-a-03-2025", messages=user("What is the weather?"), tools=[WEATHER_TOOL]
    )

    assert response.finish_reason == "TOOL_CALL"
    assert response.message.tool_plan
    assert response.message.content is None
    (call,) = response.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "sample"}


async def test_parallel_tool_calls_have_distinct_ids(client: cohere.AsyncClientV2) -> None:
    response = await client.chat(
        model="command-a-03-2025",
        messages=user("call both tools in parallel"),
        tools=[WEATHER_TOOL, TIME_TOOL],
    )

    calls = response.message.tool_calls
    assert [call.function.name for call in calls] == ["get_weather", "get_time"]
    assert len({call.id for call in calls}) == 2


async def test_streamed_parallel_tool_calls(client: cohere.AsyncClientV2) -> None:
    events = await collect(
        client.chat_stream(
            model="command-a-03-2025",
            messages=user("call both tools in parallel"),
            tools=[WEATHER_TOOL, TIME_TOOL],
        )
    )

    types = [event.type for event in events]
    assert types[0] == "message-start"
    assert types[1] == "tool-plan-delta"
    assert types[-1] == "message-end"
    assert types.count("tool-call-start") == types.count("tool-call-end") == 2
    assert "content-start" not in types
    calls: dict[int, dict[str, str]] = {}
    for event in events:
        if event.type == "tool-call-start":
            head = event.delta.message.tool_calls
            calls[event.index] = {"id": head.id, "name": head.function.name, "arguments": ""}
        elif event.type == "tool-call-delta":
            calls[event.index]["arguments"] += event.delta.message.tool_calls.function.arguments
    deltas_per_call = [
        sum(1 for e in events if e.type == "tool-call-delta" and e.index == i) for i in calls
    ]
    assert all(count > 1 for count in deltas_per_call)
    assert [json.loads(call["arguments"]) for call in calls.values()] == [
        {"city": "sample"},
        {"timezone": "sample"},
    ]
    assert calls[0]["id"] != calls[1]["id"]
    assert events[-1].delta.finish_reason == "TOOL_CALL"


async def test_tool_results_round_trip(client: cohere.AsyncClientV2) -> None:
    first = await client.chat(
        model="command-a-03-2025",
        messages=user("call both tools in parallel"),
        tools=[WEATHER_TOOL, TIME_TOOL],
    )
    calls = first.message.tool_calls
    messages = [
        *user("call both tools in parallel"),
        {"role": "assistant", "tool_plan": first.message.tool_plan, "tool_calls": calls},
        {"role": "tool", "tool_call_id": calls[0].id, "content": '{"forecast": "rain"}'},
        {
            "role": "tool",
            "tool_call_id": calls[1].id,
            "content": [{"type": "document", "document": {"data": {"time": "noon"}}}],
        },
    ]

    second = await client.chat(
        model="command-a-03-2025", messages=messages, tools=[WEATHER_TOOL, TIME_TOOL]
    )

    assert second.finish_reason == "COMPLETE"
    assert second.message.content[0].text == (
        'Tool results received: {"forecast": "rain"}; {"time": "noon"}'
    )


async def test_tool_result_with_unknown_call_id(client: cohere.AsyncClientV2) -> None:
    messages = [*user("hi"), {"role": "tool", "tool_call_id": "nope", "content": "{}"}]

    with pytest.raises(cohere_errors.BadRequestError) as caught:
        await client.chat(model="command-a-03-2025", messages=messages, tools=[WEATHER_TOOL])

    assert "tool_call_id 'nope'" in caught.value.body["message"]


async def test_tool_choice_required_and_none(client: cohere.AsyncClientV2) -> None:
    required = await client.chat(
        model="command-a-03-2025", messages=user("Hello"), tools=[TIME_TOOL], tool_choice="REQUIRED"
    )
    refused = await client.chat(
        model="command-a-03-2025",
        messages=user("call the tool"),
        tools=[TIME_TOOL],
        tool_choice="NONE",
    )

    assert required.finish_reason == "TOOL_CALL"
    assert refused.finish_reason == "COMPLETE"
    assert refused.message.tool_calls is None


async def test_tool_choice_rejected_on_older_model(client: cohere.AsyncClientV2) -> None:
    with pytest.raises(cohere_errors.BadRequestError) as caught:
        await client.chat(
            model="command-r-08-2024",
            messages=user("Hello"),
            tools=[TIME_TOOL],
            tool_choice="REQUIRED",
        )

    assert "tool_choice" in caught.value.body["message"]


# --- images and structured output ------------------------------------------------------


async def test_image_input(client: cohere.AsyncClientV2) -> None:
    content = [
        {"type": "text", "text": "Describe this"},
        {"type": "image_url", "image_url": {"url": PNG_DATA_URI, "detail": "low"}},
    ]
    response = await client.chat(
        model="command-a-vision-07-2025", messages=[{"role": "user", "content": content}]
    )

    assert response.message.content[0].text.endswith("I see 1 image(s).")


async def test_image_rejected_by_text_model(client: cohere.AsyncClientV2) -> None:
    content = [{"type": "image_url", "image_url": {"url": PNG_DATA_URI}}]

    with pytest.raises(cohere_errors.BadRequestError) as caught:
        await client.chat(
            model="command-a-03-2025", messages=[{"role": "user", "content": content}]
        )

    assert caught.value.body["message"].startswith("invalid request: ")


async def test_json_schema_output(client: cohere.AsyncClientV2) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    response = await client.chat(
        model="command-a-03-2025",
        messages=user("Describe a person as JSON"),
        response_format={"type": "json_object", "json_schema": schema},
    )

    assert json.loads(response.message.content[0].text) == {"name": "sample", "age": 1}


# --- embeddings ------------------------------------------------------------------------


async def test_embed_types_and_dimensions(client: cohere.AsyncClientV2) -> None:
    response = await client.embed(
        model="embed-v4.0",
        texts=["first", "second"],
        input_type="search_document",
        embedding_types=["float", "int8", "binary", "base64"],
        output_dimension=256,
    )

    embeddings = response.embeddings
    assert [len(vector) for vector in embeddings.float_] == [256, 256]
    assert embeddings.float_[0] != embeddings.float_[1]
    assert all(-128 <= value <= 127 for value in embeddings.int8[0])
    assert len(embeddings.binary[0]) == 256 // 8
    assert len(base64.b64decode(embeddings.base64[0])) == 256 * 4
    assert response.texts == ["first", "second"]
    assert response.meta.billed_units.input_tokens == 2


async def test_embed_requires_valid_input_type(client: cohere.AsyncClientV2) -> None:
    with pytest.raises(cohere_errors.BadRequestError) as caught:
        await client.embed(
            model="embed-english-v3.0", texts=["x"], input_type="poetry", embedding_types=["float"]
        )

    assert caught.value.body["message"] == (
        "invalid request: valid input_type must be provided with the provided model"
    )


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, cohere_errors.BadRequestError),
        (401, cohere_errors.UnauthorizedError),
        (403, cohere_errors.ForbiddenError),
        (404, cohere_errors.NotFoundError),
        (422, cohere_errors.UnprocessableEntityError),
        (429, cohere_errors.TooManyRequestsError),
        (498, cohere_errors.InvalidTokenError),
        (500, cohere_errors.InternalServerError),
        (503, cohere_errors.ServiceUnavailableError),
        (504, cohere_errors.GatewayTimeoutError),
    ],
)
async def test_fault_status_raises_typed_error(
    sim: CohereSimulator,
    client: cohere.AsyncClientV2,
    status: int,
    error_class: type[Exception],
) -> None:
    sim.faults.append(Fault(status=status, retry_after=3))

    with pytest.raises(error_class) as caught:
        await client.chat(model="command-a-03-2025", messages=user("hi"))

    assert caught.value.status_code == status
    assert caught.value.body["message"]
    assert caught.value.body["id"]
    assert caught.value.headers["retry-after"] == "3"


async def test_fault_on_stream_raises_typed_error(
    sim: CohereSimulator, client: cohere.AsyncClientV2
) -> None:
    sim.faults.append(Fault(status=429))

    with pytest.raises(cohere_errors.TooManyRequestsError):
        await collect(client.chat_stream(model="command-a-03-2025", messages=user("hi")))


async def test_sdk_retries_after_retry_after(sim: CohereSimulator) -> None:
    sim.faults.append(Fault(status=503, retry_after=0))
    async with cohere.AsyncClientV2(api_key=API_KEY, base_url=sim.base_url) as retrying:
        response = await retrying.chat(model="command-a-03-2025", messages=user("hi"))

    assert response.finish_reason == "COMPLETE"
    assert len(sim.requests) == 2


async def test_unknown_model_is_not_found(client: cohere.AsyncClientV2) -> None:
    with pytest.raises(cohere_errors.NotFoundError) as caught:
        await client.chat(model="command-z", messages=user("hi"))

    assert caught.value.body["message"].startswith("model 'command-z' not found")


async def test_invalid_api_key(sim: CohereSimulator) -> None:
    async with cohere.AsyncClientV2(api_key="wrong", base_url=sim.base_url, max_retries=0) as co:
        with pytest.raises(cohere_errors.UnauthorizedError) as caught:
            await co.chat(model="command-a-03-2025", messages=user("hi"))

    assert caught.value.body["message"] == "invalid api token"


async def test_missing_api_key(sim: CohereSimulator) -> None:
    body = {"model": "command-a-03-2025", "messages": user("hi")}
    async with (
        aiohttp.ClientSession() as session,
        session.post(sim.base_url + "/v2/chat", json=body) as response,
    ):
        assert response.status == 401
        assert (await response.json())["message"] == "no api key supplied"


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({"p": 1.5}, "p must be between 0.01 and 0.99"),
        ({"k": 501}, "k must be between 0 and 500"),
        ({"frequency_penalty": -0.5}, "frequency_penalty"),
        ({"temperature": -1}, "temperature"),
        ({"stop_sequences": list("abcdef")}, "stop_sequences"),
        ({"safety_mode": "OFF"}, "safety_mode"),
        ({"thinking": {"type": "enabled"}}, "thinking"),
    ],
)
async def test_invalid_chat_parameters(
    client: cohere.AsyncClientV2, arguments: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(cohere_errors.BadRequestError) as caught:
        await client.chat(model="command-a-03-2025", messages=user("hi"), **arguments)

    assert caught.value.body["message"].startswith("invalid request: ")
    assert fragment in caught.value.body["message"]


async def test_empty_messages_and_unknown_field(sim: CohereSimulator) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession() as session:
        empty = {"model": "command-a-03-2025", "messages": []}
        async with session.post(sim.base_url + "/v2/chat", json=empty, headers=headers) as reply:
            assert reply.status == 400
            assert (await reply.json())["message"] == "invalid request: messages must not be empty."
        unknown = {"model": "command-a-03-2025", "messages": user("hi"), "top_p": 0.5}
        async with session.post(sim.base_url + "/v2/chat", json=unknown, headers=headers) as reply:
            assert reply.status == 400
            assert "top_p" in (await reply.json())["message"]


async def test_error_event_mid_stream(sim: CohereSimulator, client: cohere.AsyncClientV2) -> None:
    sim.faults.append(Fault(error_after=2, message="model crashed"))

    events = await collect(client.chat_stream(model="command-a-03-2025", messages=user("hi")))

    assert [event.type for event in events] == ["message-start", "content-start", "message-end"]
    assert events[-1].delta.finish_reason == "ERROR"
    assert events[-1].delta.error == "model crashed"


async def test_disconnect_mid_stream(sim: CohereSimulator, client: cohere.AsyncClientV2) -> None:
    sim.faults.append(Fault(disconnect_after=2))
    received = []

    # The SDK does not wrap transport errors, so httpx's own exception reaches the caller.
    with pytest.raises(httpx.TransportError):
        async for event in client.chat_stream(model="command-a-03-2025", messages=user("hi")):
            received.append(event)

    assert [event.type for event in received] == ["message-start", "content-start"]
