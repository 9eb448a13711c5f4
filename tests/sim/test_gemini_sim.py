"""The Gemini simulator judged by the official google-genai SDK and by raw HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import google.auth
import pytest
from google import genai
from google.genai import errors, types
from google.oauth2.credentials import Credentials
from pydantic import BaseModel

from smartflow.sim.base import Fault
from smartflow.sim.gemini import GeminiSimulator

# google-genai 3.x subclasses aiohttp.ClientSession, which aiohttp 3.14 deprecates.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Inheritance class AiohttpClientSession:DeprecationWarning"
)

API_KEY = "fake-gemini-key"
ACCESS_TOKEN = "fake-vertex-token"
# A 1x1 transparent PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


class City(BaseModel):
    name: str
    population: int


def get_weather(city: str) -> str:
    """Return the weather of a city."""
    return f"sunny in {city}"


def get_time(timezone: str) -> str:
    """Return the time in a timezone."""
    return f"noon in {timezone}"


NO_AUTOMATIC_CALLS = types.AutomaticFunctionCallingConfig(disable=True)


@pytest.fixture(autouse=True)
def isolated_google_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the SDK away from real credentials, proxies and Google hosts."""
    for name in (
        "GEMINI_API_KEY",
        "GOOGLE_CLOUD_PROJECT",
        "GOOGLE_CLOUD_LOCATION",
        "GOOGLE_GENAI_USE_VERTEXAI",
        "GOOGLE_GENAI_USE_ENTERPRISE",
        "GOOGLE_GENAI_API_VERSION",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GOOGLE_API_USE_CLIENT_CERTIFICATE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOOGLE_API_KEY", "fake-key-from-environment")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")

    def refuse_default_credentials(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("google-genai looked up application default credentials")

    monkeypatch.setattr(google.auth, "default", refuse_default_credentials)


@pytest.fixture
async def sim() -> AsyncIterator[GeminiSimulator]:
    simulator = GeminiSimulator(api_keys={API_KEY}, access_tokens={ACCESS_TOKEN})
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def client(sim: GeminiSimulator) -> AsyncIterator[genai.Client]:
    gemini = genai.Client(api_key=API_KEY, http_options=types.HttpOptions(base_url=sim.base_url))
    yield gemini
    await gemini.aio.aclose()


@pytest.fixture
async def vertex_client(sim: GeminiSimulator) -> AsyncIterator[genai.Client]:
    vertex = genai.Client(
        vertexai=True,
        project="fake-project",
        location="us-central1",
        credentials=Credentials(token=ACCESS_TOKEN),
        http_options=types.HttpOptions(base_url=sim.base_url, api_version="v1"),
    )
    yield vertex
    await vertex.aio.aclose()


async def raw_post(
    sim: GeminiSimulator, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    sent = {"x-goog-api-key": API_KEY} if headers is None else headers
    async with (
        aiohttp.ClientSession() as session,
        session.post(sim.base_url + path, json=body, headers=sent) as response,
    ):
        return response.status, await response.json(content_type=None)


def tool_config(**calling: Any) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        tools=[get_weather, get_time],
        automatic_function_calling=NO_AUTOMATIC_CALLS,
        tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(**calling))
        if calling
        else None,
    )


# --- text ------------------------------------------------------------------------------


async def test_generate_text_and_usage(sim: GeminiSimulator, client: genai.Client) -> None:
    response = await client.aio.models.generate_content(
        model="gemini-2.5-flash",
        contents="Hello there",
        config=types.GenerateContentConfig(system_instruction="Be brief.", temperature=0.5),
    )

    assert response.text == "Hello from gemini-2.5-flash. You said: Hello there"
    candidate = response.candidates[0]
    assert candidate.finish_reason == types.FinishReason.STOP
    assert candidate.index == 0
    usage = response.usage_metadata
    assert usage.prompt_token_count == 5
    assert usage.candidates_token_count == 15
    assert usage.thoughts_token_count > 0
    assert usage.total_token_count == 5 + 15 + usage.thoughts_token_count
    assert response.model_version == "gemini-2.5-flash"
    assert response.response_id
    sent_key = sim.requests[-1].headers["x-goog-api-key"]
    assert sent_key == "sha256:" + hashlib.sha256(API_KEY.encode()).hexdigest()


async def test_stream_matches_full_response(client: genai.Client) -> None:
    full = await client.aio.models.generate_content(
        model="gemini-2.0-flash", contents="Tell me a short story"
    )
    chunks = [
        chunk
        async for chunk in await client.aio.models.generate_content_stream(
            model="gemini-2.0-flash", contents="Tell me a short story"
        )
    ]

    assert len(chunks) > 1
    assert "".join(chunk.text for chunk in chunks) == full.text
    assert all(c.candidates[0].finish_reason is None for c in chunks[:-1])
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[-1].usage_metadata.total_token_count == full.usage_metadata.total_token_count
    assert len({chunk.response_id for chunk in chunks}) == 1


async def test_sse_framing_has_no_done_marker(sim: GeminiSimulator) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    url = sim.base_url + "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers={"x-goog-api-key": API_KEY}) as response,
    ):
        raw = (await response.read()).decode()
        content_type = response.headers["Content-Type"]

    assert content_type.startswith("text/event-stream")
    events = [event for event in raw.split("\r\n\r\n") if event]
    assert all(event.startswith("data: ") for event in events)
    assert "[DONE]" not in raw
    last = json.loads(events[-1][len("data: ") :])
    assert last["candidates"][0]["finishReason"] == "STOP"


async def test_thoughts_included_on_request(client: genai.Client) -> None:
    response = await client.aio.models.generate_content(
        model="gemini-2.5-pro",
        contents="Think first",
        config=types.GenerateContentConfig(
            thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=1024)
        ),
    )

    parts = response.candidates[0].content.parts
    assert parts[0].thought is True
    assert not parts[1].thought
    assert response.text == "Hello from gemini-2.5-pro. You said: Think first"
    assert response.usage_metadata.thoughts_token_count > 0


async def test_max_output_tokens_truncates(client: genai.Client) -> None:
    response = await client.aio.models.generate_content(
        model="gemini-2.0-flash",
        contents="Say a lot",
        config=types.GenerateContentConfig(max_output_tokens=3),
    )

    assert response.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert response.text == "Hello from gemini"
    assert response.usage_metadata.candidates_token_count == 3


async def test_thinking_can_use_whole_output_budget(client: genai.Client) -> None:
    response = await client.aio.models.generate_content(
        model="gemini-2.5-flash",
        contents="Say a lot",
        config=types.GenerateContentConfig(max_output_tokens=5),
    )

    assert response.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert response.text is None
    assert response.usage_metadata.thoughts_token_count > 0


# --- tools -----------------------------------------------------------------------------


async def test_single_function_call(client: genai.Client) -> None:
    response = await client.aio.models.generate_content(
        model="gemini-2.5-flash", contents="What is the weather?", config=tool_config()
    )

    calls = response.function_calls
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert calls[0].args == {"city": "sample"}
    assert calls[0].id
    assert response.candidates[0].finish_reason == types.FinishReason.STOP


async def test_parallel_function_calls_have_distinct_ids(client: genai.Client) -> None:
    response = await client.aio.models.generate_content(
        model="gemini-2.5-flash", contents="Call both tools in parallel", config=tool_config()
    )

    parts = response.candidates[0].content.parts
    assert [part.function_call.name for part in parts] == ["get_weather", "get_time"]
    ids = [part.function_call.id for part in parts]
    assert len(set(ids)) == 2
    assert all(ids)


async def test_forced_function_by_allowed_names(client: genai.Client) -> None:
    response = await client.aio.models.generate_content(
        model="gemini-2.5-flash",
        contents="Hello",
        config=tool_config(mode="ANY", allowed_function_names=["get_time"]),
    )

    assert [call.name for call in response.function_calls] == ["get_time"]


async def test_function_calling_mode_none(client: genai.Client) -> None:
    response = await client.aio.models.generate_content(
        model="gemini-2.5-flash", contents="Call the weather tool", config=tool_config(mode="NONE")
    )

    assert response.function_calls is None
    assert response.text.startswith("Hello from gemini-2.5-flash")


async def test_streamed_parallel_calls_arrive_whole(client: genai.Client) -> None:
    chunks = [
        chunk
        async for chunk in await client.aio.models.generate_content_stream(
            model="gemini-2.5-flash", contents="parallel tool call", config=tool_config()
        )
    ]

    with_calls = [chunk for chunk in chunks if chunk.function_calls]
    assert len(with_calls) == 1
    calls = with_calls[0].function_calls
    assert [call.args for call in calls] == [{"city": "sample"}, {"timezone": "sample"}]
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP


async def test_gemini3_round_trip_with_thought_signature(client: genai.Client) -> None:
    config = tool_config()
    question = types.Content(role="user", parts=[types.Part(text="weather in Paris?")])
    first = await client.aio.models.generate_content(
        model="gemini-3-pro-preview", contents=[question], config=config
    )
    call_content = first.candidates[0].content
    assert call_content.parts[0].thought_signature
    call = call_content.parts[0].function_call
    result = types.Part.from_function_response(name=call.name, response={"forecast": "rain"})
    result.function_response.id = call.id
    history = [question, call_content, types.Content(role="user", parts=[result])]

    second = await client.aio.models.generate_content(
        model="gemini-3-pro-preview", contents=history, config=config
    )

    assert second.text == 'Tool results received: {"forecast": "rain"}'


async def test_gemini3_rejects_missing_thought_signature(client: genai.Client) -> None:
    history = [
        types.Content(role="user", parts=[types.Part(text="weather in Paris?")]),
        types.Content(
            role="model",
            parts=[types.Part.from_function_call(name="get_weather", args={"city": "Paris"})],
        ),
        types.Content(
            role="user",
            parts=[types.Part.from_function_response(name="get_weather", response={"t": 1})],
        ),
    ]

    with pytest.raises(errors.ClientError) as caught:
        await client.aio.models.generate_content(
            model="gemini-3-pro-preview", contents=history, config=tool_config()
        )

    assert caught.value.code == 400
    assert caught.value.status == "INVALID_ARGUMENT"
    assert "missing a thought_signature" in caught.value.message
    assert "`default_api:get_weather` , position 2" in caught.value.message


# --- multimodal and structured output ---------------------------------------------------


async def test_image_input(client: genai.Client) -> None:
    response = await client.aio.models.generate_content(
        model="gemini-2.5-flash",
        contents=["Describe this", types.Part.from_bytes(data=PNG, mime_type="image/png")],
    )

    assert response.text.endswith("I see 1 image(s).")
    modalities = {d.modality: d.token_count for d in response.usage_metadata.prompt_tokens_details}
    assert modalities[types.MediaModality.IMAGE] == 3


async def test_response_schema_output(client: genai.Client) -> None:
    response = await client.aio.models.generate_content(
        model="gemini-2.5-flash",
        contents="Name a city",
        config=types.GenerateContentConfig(
            response_mime_type="application/json", response_schema=City
        ),
    )

    assert response.parsed == City(name="sample", population=1)


async def test_response_json_schema_output(client: genai.Client) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    response = await client.aio.models.generate_content(
        model="gemini-2.5-flash",
        contents="Answer in JSON",
        config=types.GenerateContentConfig(
            response_mime_type="application/json", response_json_schema=schema
        ),
    )

    assert json.loads(response.text) == {"ok": True}


# --- safety ----------------------------------------------------------------------------


async def test_prompt_blocked_for_safety(client: genai.Client) -> None:
    response = await client.aio.models.generate_content(
        model="gemini-2.5-flash", contents="please sim-block-prompt now"
    )

    assert not response.candidates
    assert response.text is None
    feedback = response.prompt_feedback
    assert feedback.block_reason == types.BlockedReason.SAFETY
    high = [r for r in feedback.safety_ratings if r.probability == types.HarmProbability.HIGH]
    assert [r.category for r in high] == [types.HarmCategory.HARM_CATEGORY_DANGEROUS_CONTENT]


async def test_response_blocked_for_safety(client: genai.Client) -> None:
    response = await client.aio.models.generate_content(
        model="gemini-2.0-flash", contents="write sim-block-response"
    )

    candidate = response.candidates[0]
    assert candidate.finish_reason == types.FinishReason.SAFETY
    assert candidate.content is None
    blocked = [rating for rating in candidate.safety_ratings if rating.blocked]
    assert [rating.category for rating in blocked] == [types.HarmCategory.HARM_CATEGORY_HARASSMENT]


async def test_stream_blocked_after_some_text(client: genai.Client) -> None:
    chunks = [
        chunk
        async for chunk in await client.aio.models.generate_content_stream(
            model="gemini-2.0-flash", contents="a long answer please sim-block-response"
        )
    ]

    assert chunks[0].text
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.SAFETY


async def test_safety_setting_block_none_allows_prompt(client: genai.Client) -> None:
    setting = types.SafetySetting(
        category=types.HarmCategory.HARM_CATEGORY_DANGEROUS_CONTENT,
        threshold=types.HarmBlockThreshold.BLOCK_NONE,
    )
    response = await client.aio.models.generate_content(
        model="gemini-2.5-flash",
        contents="sim-block-prompt",
        config=types.GenerateContentConfig(safety_settings=[setting]),
    )

    assert response.prompt_feedback is None
    assert response.text == "Hello from gemini-2.5-flash. You said: sim-block-prompt"


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class", "status_name"),
    [
        (400, errors.ClientError, "INVALID_ARGUMENT"),
        (403, errors.ClientError, "PERMISSION_DENIED"),
        (404, errors.ClientError, "NOT_FOUND"),
        (429, errors.ClientError, "RESOURCE_EXHAUSTED"),
        (500, errors.ServerError, "INTERNAL"),
        (503, errors.ServerError, "UNAVAILABLE"),
        (504, errors.ServerError, "DEADLINE_EXCEEDED"),
    ],
)
async def test_fault_status_raises_sdk_error(
    sim: GeminiSimulator,
    client: genai.Client,
    status: int,
    error_class: type[errors.APIError],
    status_name: str,
) -> None:
    sim.faults.append(Fault(status=status, retry_after=7))

    with pytest.raises(error_class) as caught:
        await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")

    assert caught.value.code == status
    assert caught.value.status == status_name
    retry = [d for d in caught.value.details["error"]["details"] if "retryDelay" in d]
    assert retry[0]["retryDelay"] == "7s"


async def test_fault_through_control_api(sim: GeminiSimulator, client: genai.Client) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(sim.base_url + "/__sim/faults", json={"status": 503}) as response,
    ):
        assert response.status == 200

    with pytest.raises(errors.ServerError) as caught:
        await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")

    assert caught.value.code == 503


async def test_unknown_model_is_not_found(client: genai.Client) -> None:
    with pytest.raises(errors.ClientError) as caught:
        await client.aio.models.generate_content(model="gemini-9-ultra", contents="hi")

    assert caught.value.code == 404
    assert caught.value.status == "NOT_FOUND"
    assert "models/gemini-9-ultra is not found" in caught.value.message


async def test_invalid_api_key(sim: GeminiSimulator) -> None:
    wrong = genai.Client(api_key="wrong", http_options=types.HttpOptions(base_url=sim.base_url))
    with pytest.raises(errors.ClientError) as caught:
        await wrong.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    await wrong.aio.aclose()

    assert caught.value.code == 400
    assert caught.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"


async def test_missing_api_key_is_permission_denied(sim: GeminiSimulator) -> None:
    status, body = await raw_post(
        sim, "/v1beta/models/gemini-2.5-flash:generateContent", {"contents": []}, headers={}
    )

    assert status == 403
    assert body["error"]["status"] == "PERMISSION_DENIED"


async def test_api_key_in_query_parameter(sim: GeminiSimulator) -> None:
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    path = f"/v1beta/models/gemini-2.0-flash:generateContent?key={API_KEY}"
    status, answer = await raw_post(sim, path, body, headers={})

    assert status == 200
    assert answer["candidates"][0]["content"]["parts"][0]["text"].endswith("You said: hi")


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (types.GenerateContentConfig(temperature=2.5), "generation_config.temperature"),
        (types.GenerateContentConfig(top_p=1.5), "generation_config.top_p"),
        (types.GenerateContentConfig(stop_sequences=list("abcdef")), "stop_sequences"),
        (types.GenerateContentConfig(max_output_tokens=10**7), "max_output_tokens"),
        (
            types.GenerateContentConfig(thinking_config=types.ThinkingConfig(thinking_budget=0)),
            "thinking_budget",
        ),
    ],
)
async def test_invalid_generation_config(
    client: genai.Client, config: types.GenerateContentConfig, field: str
) -> None:
    with pytest.raises(errors.ClientError) as caught:
        await client.aio.models.generate_content(
            model="gemini-2.5-pro", contents="x", config=config
        )

    assert caught.value.code == 400
    assert caught.value.status == "INVALID_ARGUMENT"
    assert field in caught.value.message


async def test_unknown_field_is_rejected(sim: GeminiSimulator) -> None:
    body = {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"temprature": 1}}
    status, answer = await raw_post(sim, "/v1beta/models/gemini-2.5-flash:generateContent", body)

    assert status == 400
    assert 'Unknown name "temprature"' in answer["error"]["message"]
    assert answer["error"]["details"][0]["@type"].endswith("google.rpc.BadRequest")


async def test_wrong_type_and_empty_contents(sim: GeminiSimulator) -> None:
    path = "/v1beta/models/gemini-2.5-flash:generateContent"
    wrong_type = {
        "contents": [{"parts": [{"text": "hi"}]}],
        "generationConfig": {"temperature": "hot"},
    }
    status, answer = await raw_post(sim, path, wrong_type)
    assert status == 400
    assert "(TYPE_FLOAT)" in answer["error"]["message"]

    status, answer = await raw_post(sim, path, {"contents": []})
    assert status == 400
    assert "contents is not specified" in answer["error"]["message"]


async def test_snake_and_camel_case_are_equivalent(sim: GeminiSimulator) -> None:
    path = "/v1beta/models/gemini-2.0-flash:generateContent"
    camel = {
        "contents": [{"role": "user", "parts": [{"text": "same words"}]}],
        "systemInstruction": {"parts": [{"text": "rules"}]},
        "generationConfig": {"maxOutputTokens": 4, "stopSequences": ["zzz"]},
    }
    snake = {
        "contents": [{"role": "user", "parts": [{"text": "same words"}]}],
        "system_instruction": {"parts": [{"text": "rules"}]},
        "generation_config": {"max_output_tokens": 4, "stop_sequences": ["zzz"]},
    }
    camel_status, camel_answer = await raw_post(sim, path, camel)
    snake_status, snake_answer = await raw_post(sim, path, snake)

    assert camel_status == snake_status == 200
    assert camel_answer["candidates"] == snake_answer["candidates"]
    assert camel_answer["candidates"][0]["finishReason"] == "MAX_TOKENS"


async def test_error_event_mid_stream(sim: GeminiSimulator, client: genai.Client) -> None:
    sim.faults.append(Fault(error_after=1, message="backend crashed"))
    received = []

    with pytest.raises(errors.ServerError) as caught:
        async for chunk in await client.aio.models.generate_content_stream(
            model="gemini-2.0-flash", contents="one two three four five six seven"
        ):
            received.append(chunk)

    assert len(received) == 1
    assert caught.value.code == 500
    assert caught.value.message == "backend crashed"


async def test_disconnect_mid_stream(sim: GeminiSimulator, client: genai.Client) -> None:
    sim.faults.append(Fault(disconnect_after=1))
    received = []

    with pytest.raises(aiohttp.ClientError):
        async for chunk in await client.aio.models.generate_content_stream(
            model="gemini-2.0-flash", contents="one two three four five six seven"
        ):
            received.append(chunk)

    assert len(received) == 1


# --- other endpoints -------------------------------------------------------------------


async def test_count_tokens(client: genai.Client) -> None:
    counted = await client.aio.models.count_tokens(
        model="gemini-2.5-flash", contents="one two three"
    )

    assert counted.total_tokens == 3


async def test_embed_content(client: genai.Client) -> None:
    result = await client.aio.models.embed_content(
        model="gemini-embedding-001",
        contents=["first text", "second text"],
        config=types.EmbedContentConfig(output_dimensionality=16, task_type="RETRIEVAL_DOCUMENT"),
    )

    assert len(result.embeddings) == 2
    assert [len(e.values) for e in result.embeddings] == [16, 16]
    assert result.embeddings[0].values != result.embeddings[1].values


async def test_embed_content_single_request(sim: GeminiSimulator) -> None:
    body = {"content": {"parts": [{"text": "hello"}]}}
    status, answer = await raw_post(sim, "/v1beta/models/text-embedding-004:embedContent", body)

    assert status == 200
    assert len(answer["embedding"]["values"]) == 768


async def test_generate_on_embedding_model_is_not_found(client: genai.Client) -> None:
    with pytest.raises(errors.ClientError) as caught:
        await client.aio.models.generate_content(model="text-embedding-004", contents="hi")

    assert caught.value.code == 404


async def test_list_models_pages(sim: GeminiSimulator, client: genai.Client) -> None:
    pager = await client.aio.models.list(config={"page_size": 3})
    names = [model.name async for model in pager]

    assert names == [f"models/{name}" for name in sim.models]
    assert [r.query.get("pageToken") for r in sim.requests] == [None, "3", "6"]


# --- Vertex AI -------------------------------------------------------------------------


async def test_vertex_generate_with_bearer_token(
    sim: GeminiSimulator, vertex_client: genai.Client
) -> None:
    response = await vertex_client.aio.models.generate_content(
        model="gemini-2.5-flash", contents="Hello Vertex"
    )

    assert response.text == "Hello from gemini-2.5-flash. You said: Hello Vertex"
    assert response.create_time is not None
    recorded = sim.requests[-1]
    assert recorded.path == (
        "/v1/projects/fake-project/locations/us-central1/publishers/google/models/"
        "gemini-2.5-flash:generateContent"
    )
    expected = "sha256:" + hashlib.sha256(f"Bearer {ACCESS_TOKEN}".encode()).hexdigest()
    assert recorded.headers["authorization"] == expected
    assert "x-goog-api-key" not in recorded.headers


async def test_vertex_stream(vertex_client: genai.Client) -> None:
    chunks = [
        chunk
        async for chunk in await vertex_client.aio.models.generate_content_stream(
            model="gemini-2.5-flash", contents="Stream from Vertex please"
        )
    ]

    assert "".join(c.text for c in chunks) == (
        "Hello from gemini-2.5-flash. You said: Stream from Vertex please"
    )
    assert chunks[-1].usage_metadata.traffic_type == types.TrafficType.ON_DEMAND


async def test_vertex_unknown_model(vertex_client: genai.Client) -> None:
    with pytest.raises(errors.ClientError) as caught:
        await vertex_client.aio.models.generate_content(model="gemini-0", contents="hi")

    assert caught.value.code == 404
    assert "Publisher Model `projects/fake-project/locations/us-central1" in caught.value.message


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "CREDENTIALS_MISSING"),
        ({"Authorization": "Bearer wrong-token"}, "ACCESS_TOKEN_TYPE_UNSUPPORTED"),
        ({"x-goog-api-key": API_KEY}, "CREDENTIALS_MISSING"),
    ],
)
async def test_vertex_rejects_bad_credentials(
    sim: GeminiSimulator, headers: dict[str, str], reason: str
) -> None:
    path = "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-flash"
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    status, answer = await raw_post(sim, path + ":generateContent", body, headers=headers)

    assert status == 401
    assert answer["error"]["status"] == "UNAUTHENTICATED"
    assert answer["error"]["details"][0]["reason"] == reason


async def test_vertex_requires_role(sim: GeminiSimulator) -> None:
    path = "/v1/projects/p/locations/global/publishers/google/models/gemini-2.5-flash"
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    headers = {"Authorization": f"Bearer {ACCESS_TOKEN}"}
    status, answer = await raw_post(sim, path + ":generateContent", body, headers=headers)

    assert status == 400
    assert "valid role" in answer["error"]["message"]
