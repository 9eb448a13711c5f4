"""The Bedrock provider through a running gateway, judged by the official openai and anthropic SDKs.

The upstream is the Bedrock simulator on 127.0.0.1, which checks every SigV4 signature
with botocore. The credentials are invented, and no test reads AWS settings from the machine.
"""

from __future__ import annotations

import base64
import inspect
import json
import os
import struct
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
from botocore.credentials import Credentials
from yarl import URL

from smartflow.auth.keys import hash_key
from smartflow.config.schema import parse_config
from smartflow.core.errors import (
    ConfigError,
    MalformedUpstreamResponse,
    UpstreamHTTPError,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from smartflow.core.stream import StreamEnd, StreamStart, TextDelta
from smartflow.dialects.bedrock.errors import parse_upstream_error
from smartflow.dialects.bedrock.requests import accepts_images, base_model_id
from smartflow.dialects.bedrock.streaming import ConverseStreamDecoder
from smartflow.dialects.openai import requests as openai_requests
from smartflow.gateway.app import build_app, start_gateway
from smartflow.gateway.upstream import Dispatcher
from smartflow.providers.base import Target
from smartflow.providers.bedrock import BedrockProvider, load_aws_credentials
from smartflow.sim.base import Fault
from smartflow.sim.bedrock import BedrockSimulator
from smartflow.sim.bedrock_auth import verify_sigv4
from smartflow.sim.bedrock_eventstream import encode_frame, event_frame, exception_frame
from smartflow.sim.script import count_tokens
from smartflow.transport.eventstream import EventStreamParser
from tests.conftest import VIRTUAL_KEY
from tests.gateway.clients import (
    TIME_TOOL,
    WEATHER_TOOL,
    Outcome,
    anthropic_chat,
    anthropic_client,
    anthropic_tools,
    openai_chat,
    openai_client,
    openai_tools,
)

# Invented credentials in the AWS key format, valid only for the simulator.
ACCESS_KEY_ID = "AKIDSMARTFLOWTEST001"
SECRET_ACCESS_KEY = "smartflow/test/secret/not-a-real-aws-key"
REGION = "us-west-2"
PROFILE = "smartflow-test"

SONNET = "anthropic.claude-3-5-sonnet-20241022-v2:0"
HAIKU_3_5 = "anthropic.claude-3-5-haiku-20241022-v1:0"  # Claude without image input
LLAMA_TEXT = "meta.llama3-8b-instruct-v1:0"
# Public model names served by the gateway: (provider, Bedrock model id).
MODELS = {
    "claude": ("bedrock", SONNET),
    "claude-invoke": ("bedrock-invoke", SONNET),
    "haiku-invoke": ("bedrock-invoke", HAIKU_3_5),
    "llama-text": ("bedrock", LLAMA_TEXT),
}
APIS = {"converse": "claude", "invoke": "claude-invoke"}
OPERATIONS = {
    ("converse", False): "converse",
    ("converse", True): "converse-stream",
    ("invoke", False): "invoke",
    ("invoke", True): "invoke-with-response-stream",
}
INGRESSES = ["openai", "anthropic"]
STREAMING = [False, True]
PROMPT = "Good morning, gateway"
SYSTEM = "Be brief."
IMAGE_PROMPT = "What is in this picture?"


def tiny_png() -> bytes:
    """Build a valid 1x1 PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


PNG_BASE64 = base64.b64encode(tiny_png()).decode()


# --- the stack: simulator, providers and gateway --------------------------------------


@pytest.fixture(autouse=True)
def no_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep botocore away from metadata endpoints and from any developer's AWS settings."""
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@dataclass
class BedrockStack:
    url: str
    sim: BedrockSimulator
    converse: BedrockProvider
    invoke: BedrockProvider


def _dispatcher_signs() -> bool:
    """Tell whether Dispatcher._post already hands the body to ``provider.sign``."""
    return "sign(" in inspect.getsource(Dispatcher._post)


def _sign_at_send(monkeypatch: pytest.MonkeyPatch, providers: Sequence[BedrockProvider]) -> None:
    """Apply ``provider.sign`` where the gateway sends the request, as the dispatcher will.

    NOTE: a stand-in until gateway/upstream.py signs in ``_post``, and the fixture skips
    it once the dispatcher does. It signs only unsigned requests to these providers.
    """
    original_post = aiohttp.ClientSession.post

    def post(self: aiohttp.ClientSession, url: Any, **kwargs: Any) -> Any:
        headers = kwargs.get("headers") or {}
        for provider in providers:
            if (
                isinstance(url, str)
                and url.startswith(provider.base_url + "/model/")
                and "Authorization" not in headers
            ):
                # Both providers share one account and region, so either signs alike.
                target = provider.sign(Target(url, dict(headers)), kwargs["data"])
                kwargs["headers"] = target.headers
                return original_post(self, URL(target.url, encoded=True), **kwargs)
        return original_post(self, url, **kwargs)

    monkeypatch.setattr(aiohttp.ClientSession, "post", post)


def _gateway_config() -> dict[str, Any]:
    return {
        "server": {"access_log": False},
        # Placeholders: build_app uses the injected Bedrock adapters of the same names.
        "providers": {"bedrock": {"type": "openai"}, "bedrock-invoke": {"type": "openai"}},
        "models": {
            public: [{"provider": provider, "model": model}]
            for public, (provider, model) in MODELS.items()
        },
        "keys": [{"name": "test", "sha256": hash_key(VIRTUAL_KEY), "team": "qa"}],
        "retry": {"attempts_per_deployment": 2, "backoff_initial_s": 0.01, "backoff_max_s": 0.05},
        "timeouts": {"connect_s": 2, "read_s": 5},
    }


def _profile_file(path: Path, secret: str = SECRET_ACCESS_KEY) -> Path:
    path.write_text(
        f"[{PROFILE}]\naws_access_key_id = {ACCESS_KEY_ID}\naws_secret_access_key = {secret}\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
async def bedrock(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[BedrockStack]:
    sim = BedrockSimulator(credentials={ACCESS_KEY_ID: SECRET_ACCESS_KEY}, region=REGION)
    sim_url = await sim.start()
    credentials = load_aws_credentials(
        "bedrock",
        environ={},
        profile=PROFILE,
        credentials_file=str(_profile_file(tmp_path / "credentials")),
    )
    converse = BedrockProvider(
        "bedrock", region=REGION, credentials=credentials, endpoint_url=sim_url
    )
    invoke = BedrockProvider(
        "bedrock-invoke", region=REGION, credentials=credentials, endpoint_url=sim_url, api="invoke"
    )
    if not _dispatcher_signs():
        _sign_at_send(monkeypatch, [converse, invoke])
    app = build_app(
        parse_config(_gateway_config()),
        environ={},
        providers={"bedrock": converse, "bedrock-invoke": invoke},
    )
    gateway = await start_gateway(app, "127.0.0.1", 0)
    try:
        yield BedrockStack(gateway.url, sim, converse, invoke)
    finally:
        await gateway.stop()
        await sim.stop()


def _ids(values: Sequence[object], name: str) -> list[str]:
    return [f"{name}={v}" for v in values]


async def _chat(
    url: str, ingress: str, model: str, prompt: Any, *, stream: bool, **params: Any
) -> Outcome:
    """Send one user turn (text or content parts) with the system prompt, in either dialect."""
    if ingress == "openai":
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        return await openai_chat(url, model, messages, stream=stream, **params)
    messages = [{"role": "user", "content": prompt}]
    return await anthropic_chat(url, model, messages, stream=stream, system=SYSTEM, **params)


# --- acceptance: plain text, tool calls and images in both dialects -------------------


@pytest.mark.parametrize("stream", STREAMING, ids=_ids(STREAMING, "stream"))
@pytest.mark.parametrize("api", list(APIS))
@pytest.mark.parametrize("ingress", INGRESSES)
async def test_plain_text(bedrock: BedrockStack, ingress: str, api: str, stream: bool) -> None:
    outcome = await _chat(bedrock.url, ingress, APIS[api], PROMPT, stream=stream)

    assert outcome.text == f"Hello from {SONNET}. You said: {PROMPT}"
    assert outcome.tool_calls == []
    assert outcome.finish == "stop"
    assert outcome.output_tokens == count_tokens(outcome.text)
    assert outcome.input_tokens == count_tokens(SYSTEM) + count_tokens(PROMPT)

    received = bedrock.sim.requests[-1]
    assert received.path == f"/model/{SONNET}/{OPERATIONS[(api, stream)]}"
    assert received.headers["authorization"].startswith("sha256:")
    assert "x-amz-date" in received.headers
    expected_accept = "application/vnd.amazon.eventstream" if stream else "application/json"
    assert received.headers["accept"] == expected_accept
    if api == "converse":
        assert received.body["system"] == [{"text": SYSTEM}]
    else:
        assert received.body["system"] == SYSTEM
        assert received.body["anthropic_version"] == "bedrock-2023-05-31"
        assert "model" not in received.body
        assert "stream" not in received.body


def _tool_prompt(parallel: bool) -> str:
    return "Call the weather tool for Paris" + (
        " and the time tool, in parallel" if parallel else ""
    )


async def _tool_round_trip(
    url: str, ingress: str, model: str, stream: bool, parallel: bool
) -> tuple[Outcome, Outcome]:
    """Ask for tool calls, then send back one result per call, in the ingress dialect."""
    prompt = _tool_prompt(parallel)
    if ingress == "openai":
        tools = openai_tools([WEATHER_TOOL, TIME_TOOL])
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
        first = await openai_chat(url, model, messages, stream=stream, tools=tools)
        calls = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
            for i, n, a in first.tool_calls
        ]
        messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        for number, (call_id, _, _) in enumerate(first.tool_calls):
            messages.append(
                {"role": "tool", "tool_call_id": call_id, "content": f"result-{number}"}
            )
        second = await openai_chat(url, model, messages, stream=stream, tools=tools)
        return first, second
    tools = anthropic_tools([WEATHER_TOOL, TIME_TOOL])
    messages = [{"role": "user", "content": prompt}]
    first = await anthropic_chat(url, model, messages, stream=stream, tools=tools)
    uses = [{"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in first.tool_calls]
    results = [
        {"type": "tool_result", "tool_use_id": call_id, "content": f"result-{number}"}
        for number, (call_id, _, _) in enumerate(first.tool_calls)
    ]
    messages += [{"role": "assistant", "content": uses}, {"role": "user", "content": results}]
    second = await anthropic_chat(url, model, messages, stream=stream, tools=tools)
    return first, second


def _sent_tool_result_ids(body: dict[str, Any], api: str) -> list[str]:
    last = body["messages"][-1]["content"]
    if api == "converse":
        return [block["toolResult"]["toolUseId"] for block in last if "toolResult" in block]
    return [block["tool_use_id"] for block in last if block["type"] == "tool_result"]


@pytest.mark.parametrize("parallel", [False, True], ids=["one-call", "two-calls"])
@pytest.mark.parametrize("stream", STREAMING, ids=_ids(STREAMING, "stream"))
@pytest.mark.parametrize("api", list(APIS))
@pytest.mark.parametrize("ingress", INGRESSES)
async def test_tool_round_trip(
    bedrock: BedrockStack, ingress: str, api: str, stream: bool, parallel: bool
) -> None:
    first, second = await _tool_round_trip(bedrock.url, ingress, APIS[api], stream, parallel)

    expected_names = ["get_weather", "get_time"] if parallel else ["get_weather"]
    assert [name for _, name, _ in first.tool_calls] == expected_names
    assert first.tool_calls[0][2] == {"location": "sample", "unit": "celsius"}
    if parallel:
        assert first.tool_calls[1][2] == {"city": "sample"}
    ids = [call_id for call_id, _, _ in first.tool_calls]
    id_prefix = "tooluse_" if api == "converse" else "toolu_bdrk_"
    assert all(call_id.startswith(id_prefix) for call_id in ids), ids
    assert len(set(ids)) == len(ids)
    assert first.finish == "tool_calls"
    assert first.text == ""
    # The simulator counts the tool names and the JSON text of the arguments.
    assert first.output_tokens == sum(
        count_tokens(name) + count_tokens(json.dumps(arguments))
        for _, name, arguments in first.tool_calls
    )
    assert first.input_tokens == count_tokens(_tool_prompt(parallel))

    assert _sent_tool_result_ids(bedrock.sim.requests[-1].body, api) == ids
    expected_results = "; ".join(f"result-{n}" for n in range(len(expected_names)))
    assert second.text == f"Tool results received: {expected_results}"
    assert second.tool_calls == []
    assert second.finish == "stop"
    assert second.output_tokens == count_tokens(second.text)


def _image_prompt(ingress: str) -> list[dict[str, Any]]:
    if ingress == "openai":
        return [
            {"type": "text", "text": IMAGE_PROMPT},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_BASE64}"}},
        ]
    source = {"type": "base64", "media_type": "image/png", "data": PNG_BASE64}
    return [{"type": "image", "source": source}, {"type": "text", "text": IMAGE_PROMPT}]


def _sent_image(body: dict[str, Any], api: str) -> tuple[str, str]:
    content = body["messages"][0]["content"]
    if api == "converse":
        image = next(block["image"] for block in content if "image" in block)
        return image["format"], image["source"]["bytes"]
    source = next(block["source"] for block in content if block["type"] == "image")
    return source["media_type"], source["data"]


@pytest.mark.parametrize("stream", STREAMING, ids=_ids(STREAMING, "stream"))
@pytest.mark.parametrize("api", list(APIS))
@pytest.mark.parametrize("ingress", INGRESSES)
async def test_image_input(bedrock: BedrockStack, ingress: str, api: str, stream: bool) -> None:
    outcome = await _chat(bedrock.url, ingress, APIS[api], _image_prompt(ingress), stream=stream)

    assert outcome.text == f"Hello from {SONNET}. You said: {IMAGE_PROMPT} I see 1 image(s)."
    assert outcome.finish == "stop"
    assert outcome.tool_calls == []
    # The simulator counts three tokens per image.
    assert outcome.input_tokens == count_tokens(SYSTEM) + count_tokens(IMAGE_PROMPT) + 3
    assert outcome.output_tokens == count_tokens(outcome.text)
    expected_format = "png" if api == "converse" else "image/png"
    assert _sent_image(bedrock.sim.requests[-1].body, api) == (expected_format, PNG_BASE64)


# --- images Bedrock cannot take --------------------------------------------------------


@pytest.mark.parametrize("model", ["llama-text", "haiku-invoke"])
@pytest.mark.parametrize("ingress", INGRESSES)
async def test_image_to_text_only_model_rejected(
    bedrock: BedrockStack, ingress: str, model: str
) -> None:
    bedrock_model = MODELS[model][1]
    if ingress == "openai":
        with pytest.raises(openai.BadRequestError) as openai_caught:
            await _chat(bedrock.url, ingress, model, _image_prompt(ingress), stream=False)
        error = openai_caught.value.body
        assert isinstance(error, dict)
        assert error["param"] == "messages[1].content[1]"
        message = error["message"]
    else:
        with pytest.raises(anthropic.BadRequestError) as anthropic_caught:
            await _chat(bedrock.url, ingress, model, _image_prompt(ingress), stream=True)
        assert anthropic_caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
        message = anthropic_caught.value.body["error"]["message"]  # type: ignore[index]
    assert f"The model {bedrock_model} does not accept image input" in message
    assert len(bedrock.sim.requests) == 0


@pytest.mark.parametrize("api", list(APIS))
async def test_image_url_rejected(bedrock: BedrockStack, api: str) -> None:
    # The gateway fetches image URLs for Bedrock, but never from a loopback address unless
    # allow-listed. Fetching is tested in tests/transport, inside a network namespace.
    content = [
        {"type": "text", "text": IMAGE_PROMPT},
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}},
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        await _chat(bedrock.url, "openai", APIS[api], content, stream=False)

    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "messages[1].content[1].image_url.url"
    assert "its host is a loopback address" in error["message"]
    assert "base64" in error["message"]
    assert len(bedrock.sim.requests) == 0


async def test_image_media_type_rejected(bedrock: BedrockStack) -> None:
    content = [
        {"type": "text", "text": IMAGE_PROMPT},
        {"type": "image_url", "image_url": {"url": f"data:image/bmp;base64,{PNG_BASE64}"}},
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        await _chat(bedrock.url, "openai", "claude", content, stream=False)

    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "messages[1].content[1]"
    assert "'image/bmp'" in error["message"]
    assert len(bedrock.sim.requests) == 0


@pytest.mark.parametrize(
    ("model_id", "base", "images"),
    [
        (SONNET, SONNET, True),
        ("us.meta.llama3-2-11b-instruct-v1:0", "meta.llama3-2-11b-instruct-v1:0", True),
        ("us.meta.llama3-3-70b-instruct-v1:0", "meta.llama3-3-70b-instruct-v1:0", False),
        (
            "arn:aws:bedrock:us-east-1::foundation-model/amazon.titan-text-express-v1",
            "amazon.titan-text-express-v1",
            False,
        ),
        (
            "arn:aws:bedrock:us-east-1:111122223333:inference-profile/eu.amazon.nova-micro-v1:0",
            "amazon.nova-micro-v1:0",
            False,
        ),
        ("arn:aws:bedrock:us-east-1:111122223333:application-inference-profile/a1b2", None, True),
    ],
)
def test_model_id_capabilities(model_id: str, base: str | None, images: bool) -> None:
    assert base_model_id(model_id) == base
    assert accepts_images(model_id) is images


def test_invoke_rejects_non_claude_model(bedrock: BedrockStack) -> None:
    request = openai_requests.parse_request(
        {"model": "x", "messages": [{"role": "user", "content": PROMPT}]}
    )
    with pytest.raises(ConfigError, match="not an Anthropic Claude model"):
        bedrock.invoke.build_body(request, LLAMA_TEXT)


# --- errors in streams ------------------------------------------------------------------


async def _openai_stream(url: str, model: str) -> tuple[str, openai.APIError]:
    """Return the text streamed before the SDK raised, and the error it raised."""
    text = ""
    stream = await openai_client(url).chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
    return text, caught.value


async def _anthropic_stream(url: str, model: str) -> tuple[str, anthropic.APIStatusError]:
    text = ""
    client = anthropic_client(url)
    messages = [{"role": "user", "content": PROMPT}]
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with client.messages.stream(model=model, max_tokens=200, messages=messages) as events:
            async for event in events:
                if event.type == "text":
                    text += event.text
    return text, caught.value


@pytest.mark.parametrize("api", list(APIS))
@pytest.mark.parametrize("ingress", INGRESSES)
async def test_stream_exception_event(bedrock: BedrockStack, ingress: str, api: str) -> None:
    bedrock.sim.stream_error_type = "throttlingException"
    # The pause between events lets the first ones reach the caller before the error.
    fault = Fault(error_after=3, chunk_delay=0.05, message="Too many tokens, slow down.")
    bedrock.sim.faults.append(fault)

    if ingress == "openai":
        text, openai_error = await _openai_stream(bedrock.url, APIS[api])
        body = openai_error.body
        assert isinstance(body, dict)
        assert body["code"] == "upstream_rate_limited"
        message = body["message"]
    else:
        text, anthropic_error = await _anthropic_stream(bedrock.url, APIS[api])
        assert anthropic_error.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        message = anthropic_error.body["error"]["message"]  # type: ignore[index]
    assert "ThrottlingException" in message
    assert "Too many tokens, slow down." in message
    assert text  # the first deltas reached the caller before the error
    assert f"Hello from {SONNET}. You said: {PROMPT}".startswith(text)
    assert len(bedrock.sim.requests) == 1


@pytest.mark.parametrize("api", list(APIS))
@pytest.mark.parametrize("ingress", INGRESSES)
async def test_stream_cut_before_message_stop(
    bedrock: BedrockStack, ingress: str, api: str
) -> None:
    bedrock.sim.faults.append(Fault(disconnect_after=3, chunk_delay=0.05))

    if ingress == "openai":
        text, openai_error = await _openai_stream(bedrock.url, APIS[api])
        body = openai_error.body
        assert isinstance(body, dict)
        assert body["code"] == "upstream_unavailable"
        assert body["type"] == "server_error"
    else:
        text, anthropic_error = await _anthropic_stream(bedrock.url, APIS[api])
        assert anthropic_error.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert text.startswith("Hello from")
    assert len(bedrock.sim.requests) == 1


# --- error responses --------------------------------------------------------------------

# (Bedrock status, exception, OpenAI status, Anthropic status, Anthropic type, retried)
ERROR_CASES = [
    (400, "ValidationException", 400, 400, "invalid_request_error", False),
    # The gateway's AWS credential lacks access: an operator problem, so a 502.
    (403, "AccessDeniedException", 502, 502, "api_error", False),
    (408, "ModelTimeoutException", 504, 504, "timeout_error", True),
    (429, "ThrottlingException", 429, 429, "rate_limit_error", True),
    (500, "InternalServerException", 502, 502, "api_error", True),
    (503, "ServiceUnavailableException", 503, 529, "overloaded_error", True),
]


@pytest.mark.parametrize("ingress", INGRESSES)
@pytest.mark.parametrize(
    ("status", "error_type", "openai_status", "anthropic_status", "anthropic_type", "retried"),
    ERROR_CASES,
    ids=[case[1] for case in ERROR_CASES],
)
async def test_error_response_mapping(
    bedrock: BedrockStack,
    ingress: str,
    status: int,
    error_type: str,
    openai_status: int,
    anthropic_status: int,
    anthropic_type: str,
    retried: bool,
) -> None:
    bedrock.sim.faults.append(Fault(status=status, message=f"Simulated {error_type}.", times=2))

    if ingress == "openai":
        with pytest.raises(openai.APIStatusError) as openai_caught:
            await _chat(bedrock.url, ingress, "claude", PROMPT, stream=False)
        assert openai_caught.value.status_code == openai_status
        message = str(openai_caught.value)
    else:
        with pytest.raises(anthropic.APIStatusError) as anthropic_caught:
            await _chat(bedrock.url, ingress, "claude", PROMPT, stream=False)
        assert anthropic_caught.value.status_code == anthropic_status
        assert anthropic_caught.value.body["error"]["type"] == anthropic_type  # type: ignore[index]
        message = str(anthropic_caught.value)
    assert f"({error_type}): Simulated {error_type}." in message
    assert len(bedrock.sim.requests) == (2 if retried else 1)


@pytest.mark.parametrize("stream", STREAMING, ids=_ids(STREAMING, "stream"))
async def test_response_names_bedrock_model(bedrock: BedrockStack, stream: bool) -> None:
    client = openai_client(bedrock.url)
    messages: Any = [{"role": "user", "content": PROMPT}]
    if stream:
        chunks = await client.chat.completions.create(
            model="claude", messages=messages, stream=True
        )
        models = {chunk.model async for chunk in chunks}
    else:
        response = await client.chat.completions.create(model="claude", messages=messages)
        models = {response.model}

    assert models == {SONNET}


async def test_tools_to_model_without_tools_rejected(bedrock: BedrockStack) -> None:
    # Llama 3 8B takes no tools: the capability profile rejects them before any call.
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_chat(
            bedrock.url,
            "llama-text",
            [{"role": "user", "content": PROMPT}],
            stream=False,
            tools=openai_tools([WEATHER_TOOL]),
        )

    assert caught.value.status_code == 400
    assert "does not accept tools" in str(caught.value)
    assert len(bedrock.sim.requests) == 0


# --- request features -------------------------------------------------------------------


@pytest.mark.parametrize("stream", STREAMING, ids=_ids(STREAMING, "stream"))
async def test_stop_sequence_reported(bedrock: BedrockStack, stream: bool) -> None:
    client = anthropic_client(bedrock.url)
    params: dict[str, Any] = {
        "model": "claude",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": PROMPT}],
        "stop_sequences": ["You said"],
    }
    if stream:
        async with client.messages.stream(**params) as events:
            message = await events.get_final_message()
    else:
        message = await client.messages.create(**params)

    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == "You said"
    assert message.content[0].type == "text"
    assert message.content[0].text == f"Hello from {SONNET}. "
    sent = bedrock.sim.requests[-1].body
    assert sent["inferenceConfig"]["stopSequences"] == ["You said"]


@pytest.mark.parametrize(
    ("tool_choice", "expected_choice", "expected_name"),
    [
        ("required", {"any": {}}, "get_weather"),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"tool": {"name": "get_time"}},
            "get_time",
        ),
    ],
    ids=["required", "named"],
)
async def test_forced_tool_choice(
    bedrock: BedrockStack, tool_choice: Any, expected_choice: dict[str, Any], expected_name: str
) -> None:
    outcome = await openai_chat(
        bedrock.url,
        "claude",
        [{"role": "user", "content": PROMPT}],
        stream=False,
        tools=openai_tools([WEATHER_TOOL, TIME_TOOL]),
        tool_choice=tool_choice,
    )

    assert [name for _, name, _ in outcome.tool_calls] == [expected_name]
    assert outcome.finish == "tool_calls"
    assert bedrock.sim.requests[-1].body["toolConfig"]["toolChoice"] == expected_choice


async def test_tool_history_without_tools(bedrock: BedrockStack) -> None:
    messages = [
        {"role": "user", "content": "What is the weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    outcome = await openai_chat(bedrock.url, "claude", messages, stream=False)

    assert outcome.text == "Tool results received: sunny"
    sent = bedrock.sim.requests[-1].body
    declared = [tool["toolSpec"]["name"] for tool in sent["toolConfig"]["tools"]]
    assert declared == ["get_weather"]


async def test_tool_error_result_marked(bedrock: BedrockStack) -> None:
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": "the weather service timed out",
                    "is_error": True,
                }
            ],
        },
    ]
    outcome = await anthropic_chat(
        bedrock.url,
        "claude",
        messages,
        stream=False,
        tools=anthropic_tools([WEATHER_TOOL]),
    )

    assert outcome.text == "Tool results received: the weather service timed out"
    result = bedrock.sim.requests[-1].body["messages"][-1]["content"][0]["toolResult"]
    assert result["toolUseId"] == "toolu_1"
    assert result["status"] == "error"
    assert result["content"] == [{"text": "the weather service timed out"}]


# --- signing ----------------------------------------------------------------------------


def _converse_body() -> bytes:
    return orjson.dumps({"messages": [{"role": "user", "content": [{"text": PROMPT}]}]})


def _provider(
    url: str, secret: str = SECRET_ACCESS_KEY, token: str | None = None
) -> BedrockProvider:
    credentials = Credentials(ACCESS_KEY_ID, secret, token)
    return BedrockProvider("bedrock", region=REGION, credentials=credentials, endpoint_url=url)


async def _send_signed(
    provider: BedrockProvider, *, keep_encoding: bool = True
) -> tuple[int, bytes, Any]:
    body = _converse_body()
    target = provider.sign(provider.chat_target(SONNET, stream=False, client_headers={}), body)
    url: Any = URL(target.url, encoded=True) if keep_encoding else target.url
    async with aiohttp.ClientSession() as http:
        response = await http.post(url, data=body, headers=target.headers)
        return response.status, await response.read(), response.headers


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    sim = BedrockSimulator(credentials={ACCESS_KEY_ID: SECRET_ACCESS_KEY}, region=REGION)
    try:
        yield await sim.start()
    finally:
        await sim.stop()


async def test_signature_accepted_by_simulator(sim_url: str) -> None:
    provider = _provider(sim_url, token="fake-session-token")
    status, body, _ = await _send_signed(provider)

    assert status == 200, body
    response = provider.parse_response(orjson.loads(body))
    assert response.text() == f"Hello from {SONNET}. You said: {PROMPT}"


def test_signature_covers_body_and_session_token() -> None:
    provider = _provider("http://127.0.0.1:9", token="fake-session-token")
    body = _converse_body()
    target = provider.sign(provider.chat_target(SONNET, stream=True, client_headers={}), body)

    assert (
        target.url
        == "http://127.0.0.1:9/model/anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse-stream"
    )
    assert target.headers["X-Amz-Security-Token"] == "fake-session-token"
    signed = target.headers["Authorization"].split("SignedHeaders=")[1].split(",")[0]
    assert "x-amz-security-token" in signed.split(";")
    assert f"/{REGION}/bedrock/aws4_request" in target.headers["Authorization"]
    identity = verify_sigv4(
        method="POST",
        url=target.url,
        headers={**target.headers, "Host": "127.0.0.1:9"},
        body=body,
        secrets={ACCESS_KEY_ID: SECRET_ACCESS_KEY},
        region=REGION,
    )
    assert identity.service == "bedrock"
    with pytest.raises(Exception, match="signature"):
        verify_sigv4(
            method="POST",
            url=target.url,
            headers={**target.headers, "Host": "127.0.0.1:9"},
            body=body + b" ",
            secrets={ACCESS_KEY_ID: SECRET_ACCESS_KEY},
            region=REGION,
        )


async def test_wrong_secret_rejected(sim_url: str) -> None:
    provider = _provider(sim_url, secret="smartflow/test/a-different-fake-secret")
    status, body, headers = await _send_signed(provider)

    assert status == 403
    error = provider.parse_error(status, body, headers)
    assert isinstance(error, UpstreamHTTPError)
    assert error.status == 502
    assert error.code == "upstream_authentication_failed"
    assert error.upstream_status == 403
    assert error.upstream_type == "InvalidSignatureException"
    assert "signature we calculated does not match" in error.message


async def test_model_id_must_stay_percent_encoded(sim_url: str) -> None:
    # aiohttp turns "%3A" back into ":" in a str URL, which changes the signed path.
    status, _, headers = await _send_signed(_provider(sim_url), keep_encoding=False)

    assert status == 403
    assert headers["x-amzn-ErrorType"].startswith("InvalidSignatureException")


# --- credentials --------------------------------------------------------------------------


def test_credentials_from_environment(tmp_path: Path) -> None:
    environ = {
        "AWS_ACCESS_KEY_ID": "AKIDENVIRONMENT00001",
        "AWS_SECRET_ACCESS_KEY": "environment-fake-secret",
        "AWS_SESSION_TOKEN": "environment-fake-token",
        "AWS_SHARED_CREDENTIALS_FILE": str(_profile_file(tmp_path / "credentials")),
    }
    credentials = load_aws_credentials("bedrock", environ=environ)

    assert credentials.method == "env"
    assert credentials.access_key == "AKIDENVIRONMENT00001"
    assert credentials.secret_key == "environment-fake-secret"
    assert credentials.token == "environment-fake-token"


def test_credentials_from_named_environment_variables() -> None:
    environ = {
        "BEDROCK_KEY_ID": "AKIDNAMEDVARIABLE001",
        "BEDROCK_SECRET": "named-fake-secret",
        "AWS_SESSION_TOKEN": "token-of-another-credential",
    }
    credentials = load_aws_credentials(
        "bedrock",
        environ=environ,
        env_names={"access_key": "BEDROCK_KEY_ID", "secret_key": "BEDROCK_SECRET"},
    )

    assert credentials.access_key == "AKIDNAMEDVARIABLE001"
    assert credentials.secret_key == "named-fake-secret"
    assert credentials.token is None


def test_credentials_profile_ignores_environment(tmp_path: Path) -> None:
    environ = {"AWS_ACCESS_KEY_ID": "AKIDENVIRONMENT00001", "AWS_SECRET_ACCESS_KEY": "x"}
    credentials = load_aws_credentials(
        "bedrock",
        environ=environ,
        profile=PROFILE,
        credentials_file=str(_profile_file(tmp_path / "credentials")),
    )

    assert credentials.method == "shared-credentials-file"
    assert credentials.access_key == ACCESS_KEY_ID
    assert credentials.secret_key == SECRET_ACCESS_KEY


def test_credentials_profile_from_aws_profile(tmp_path: Path) -> None:
    environ = {
        "AWS_PROFILE": PROFILE,
        "AWS_SHARED_CREDENTIALS_FILE": str(_profile_file(tmp_path / "credentials")),
    }
    credentials = load_aws_credentials("bedrock", environ=environ)

    assert credentials.access_key == ACCESS_KEY_ID


def test_credentials_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_aws_credentials("bedrock", environ={}, credentials_file=str(tmp_path / "none"))
    assert "providers.bedrock: no AWS credentials found" in caught.value.message


def test_credentials_partial_environment() -> None:
    with pytest.raises(ConfigError) as caught:
        load_aws_credentials("bedrock", environ={"AWS_ACCESS_KEY_ID": "AKIDONLYTHEKEYID0001"})
    assert "invalid AWS credentials" in caught.value.message
    assert "AWS_SECRET_ACCESS_KEY" in caught.value.message


# --- event-stream framing and stream decoding ---------------------------------------------


def _converse_frames() -> list[bytes]:
    return [
        event_frame("messageStart", {"role": "assistant"}, pad=3),
        event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
        event_frame("contentBlockStop", {"contentBlockIndex": 0}),
        event_frame("messageStop", {"stopReason": "max_tokens"}),
        event_frame(
            "metadata",
            {
                "usage": {
                    "inputTokens": 5,
                    "outputTokens": 1,
                    "cacheReadInputTokens": 10,
                    "cacheWriteInputTokens": 2,
                },
                "metrics": {"latencyMs": 12},
            },
        ),
    ]


def test_parser_reassembles_split_frames() -> None:
    data = b"".join(_converse_frames()) + exception_frame("throttlingException", {"message": "x"})
    whole = EventStreamParser("bedrock").feed(data)
    parser = EventStreamParser("bedrock")
    byte_by_byte = [frame for i in range(len(data)) for frame in parser.feed(data[i : i + 1])]

    assert byte_by_byte == whole
    assert [name for name, _ in whole] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
        "exception:throttlingException",
    ]
    assert orjson.loads(whole[-1][1]) == {"message": "x"}
    assert parser.close() == []


def test_parser_error_frame() -> None:
    headers = [
        (":message-type", "error"),
        (":error-code", "InternalFailure"),
        (":error-message", "The stream broke."),
    ]
    frames = EventStreamParser("bedrock").feed(encode_frame(headers, b""))

    assert frames == [("exception:InternalFailure", '{"message":"The stream broke."}')]


def test_parser_rejects_corrupted_frame() -> None:
    frame = bytearray(_converse_frames()[1])
    frame[-6] ^= 0xFF  # a payload byte, so the message CRC no longer matches
    with pytest.raises(MalformedUpstreamResponse, match="invalid event-stream frame"):
        EventStreamParser("bedrock").feed(bytes(frame))


def test_parser_rejects_stream_ending_inside_frame() -> None:
    parser = EventStreamParser("bedrock")
    frame = _converse_frames()[0]
    assert parser.feed(frame + frame[:-3]) != []
    with pytest.raises(MalformedUpstreamResponse, match="incomplete frame"):
        parser.close()


def _decode(frames: list[bytes]) -> tuple[ConverseStreamDecoder, list[Any]]:
    decoder = ConverseStreamDecoder("bedrock", model=SONNET)
    events = []
    for name, payload in EventStreamParser("bedrock").feed(b"".join(frames)):
        events.extend(decoder.feed(payload, name))
    return decoder, events


def test_decoder_ends_after_metadata() -> None:
    decoder, events = _decode(_converse_frames())

    assert isinstance(events[0], StreamStart)
    assert events[1] == TextDelta("Hi")
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert len(events) == 3
    assert end.finish_reason == "length"
    assert end.usage is not None
    assert end.usage.input_tokens == 17
    assert end.usage.cached_input_tokens == 10
    assert end.usage.cache_write_tokens == 2
    assert end.usage.output_tokens == 1
    assert decoder.close() == []


def test_decoder_ends_at_close_without_metadata() -> None:
    decoder, events = _decode(_converse_frames()[:-1])

    assert not any(isinstance(event, StreamEnd) for event in events)
    [end] = decoder.close()
    assert isinstance(end, StreamEnd)
    assert end.finish_reason == "length"
    assert end.usage is None


def test_decoder_rejects_end_before_message_stop() -> None:
    decoder, _ = _decode(_converse_frames()[:3])

    with pytest.raises(MalformedUpstreamResponse, match="before messageStop"):
        decoder.close()


@pytest.mark.parametrize(
    ("exception_type", "error_class", "status", "upstream_status"),
    [
        ("throttlingException", UpstreamRateLimited, 429, 429),
        ("serviceUnavailableException", UpstreamOverloaded, 529, 503),
        ("modelTimeoutException", UpstreamTimeout, 504, 408),
        ("validationException", UpstreamHTTPError, 400, 400),
        ("internalServerException", UpstreamHTTPError, 502, 500),
        ("modelStreamErrorException", UpstreamHTTPError, 502, 424),
    ],
)
def test_decoder_raises_stream_exception(
    exception_type: str, error_class: type, status: int, upstream_status: int
) -> None:
    frames = [*_converse_frames()[:2], exception_frame(exception_type, {"message": "Failed."})]
    with pytest.raises(error_class) as caught:
        _decode(frames)

    assert caught.value.status == status
    assert caught.value.upstream_status == upstream_status
    error_type = exception_type[0].upper() + exception_type[1:]
    assert caught.value.message == f"bedrock error ({error_type}): Failed."


@pytest.mark.parametrize(
    ("headers", "body", "error_type"),
    [
        (
            {"x-amzn-ErrorType": "ThrottlingException:http://internal.amazon.com/"},
            {},
            "ThrottlingException",
        ),
        (
            {},
            {"__type": "com.amazon.coral.service#UnrecognizedClientException"},
            "UnrecognizedClientException",
        ),
        ({}, {}, ""),
    ],
    ids=["header", "type-field", "none"],
)
def test_parse_error_type(headers: dict[str, str], body: dict[str, Any], error_type: str) -> None:
    error = parse_upstream_error(
        400, orjson.dumps({**body, "message": "Denied."}), headers, provider="bedrock"
    )

    assert (error.upstream_type or "") == error_type
    assert error.message.endswith("Denied.")
    assert error.status == 400
