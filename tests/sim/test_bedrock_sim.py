"""The Bedrock simulator judged by boto3 (and Anthropic's Bedrock client) over loopback HTTP."""

from __future__ import annotations

import base64
import datetime as dt
import json
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from typing import Any

import anthropic
import boto3
import botocore.exceptions
import pytest
import urllib3.exceptions
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer

from smartflow.sim.bedrock import (
    DEFAULT_ACCESS_KEY_ID,
    DEFAULT_SECRET_ACCESS_KEY,
    BedrockSimulator,
)
from smartflow.sim.bedrock_auth import AuthFailure, verify_sigv4
from smartflow.sim.bedrock_eventstream import event_frame, exception_frame
from smartflow.sim.runner import running_in_thread

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
SONNET_4_PROFILE = "us.anthropic.claude-sonnet-4-20250514-v1:0"
API_KEY = "ABSKZmFrZS1zaW11bGF0b3Ita2V5"
WEATHER_TOOL = {
    "toolSpec": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "inputSchema": {
            "json": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            }
        },
    }
}
TIME_TOOL = {
    "toolSpec": {
        "name": "get_time",
        "inputSchema": {"json": {"type": "object", "properties": {"zone": {"type": "string"}}}},
    }
}


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


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"text": text}]}


@pytest.fixture(autouse=True)
def no_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Keep boto3 from metadata lookups and from any developer's AWS configuration."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    for name in (
        "AWS_PROFILE",
        "AWS_BEARER_TOKEN_BEDROCK",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def simulator() -> BedrockSimulator:
    return BedrockSimulator(api_keys=[API_KEY])


@pytest.fixture(scope="module")
def sim_url(simulator: BedrockSimulator) -> Iterator[str]:
    with running_in_thread(simulator) as url:
        assert url.startswith("http://127.0.0.1:")
        yield url


@pytest.fixture(autouse=True)
def fresh_state(simulator: BedrockSimulator) -> Iterator[None]:
    yield
    simulator.faults.clear()
    simulator.stream_error_type = "modelStreamErrorException"
    simulator.error_types.clear()


def make_client(url: str, secret: str = DEFAULT_SECRET_ACCESS_KEY, **config: Any) -> Any:
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id=DEFAULT_ACCESS_KEY_ID,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, **config),
    )


@pytest.fixture
def client(sim_url: str) -> Any:
    return make_client(sim_url)


@pytest.fixture
def raw_client(sim_url: str) -> Any:
    """A client without botocore's own parameter checks, so the simulator's checks run."""
    return make_client(sim_url, parameter_validation=False)


def add_fault(url: str, **fields: Any) -> None:
    """Queue a fault through the simulator's control API."""
    request = urllib.request.Request(
        f"{url}/__sim/faults",
        data=json.dumps(fields).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def anthropic_body(**extra: Any) -> str:
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": "Hello Claude"}],
    }
    body.update(extra)
    return json.dumps(body)


# --- Converse ------------------------------------------------------------------------------


def test_converse_text_reply(client: Any) -> None:
    response = client.converse(
        modelId=HAIKU,
        system=[{"text": "Be brief."}],
        messages=[user("What is new?")],
        inferenceConfig={"maxTokens": 300, "temperature": 0.2, "topP": 0.9},
    )
    content = response["output"]["message"]["content"]
    assert response["output"]["message"]["role"] == "assistant"
    assert content == [{"text": f"Hello from {HAIKU}. You said: What is new?"}]
    assert response["stopReason"] == "end_turn"
    usage = response["usage"]
    assert usage["inputTokens"] == 7
    assert usage["outputTokens"] > 0
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
    assert isinstance(response["metrics"]["latencyMs"], int)
    assert response["ResponseMetadata"]["RequestId"]


def test_converse_records_request(client: Any, simulator: BedrockSimulator) -> None:
    client.converse(modelId=HAIKU, messages=[user("hi")])
    recorded = simulator.requests[-1]
    assert recorded.path == f"/model/{HAIKU}/converse"
    assert recorded.headers["authorization"].startswith("sha256:")
    assert recorded.body["messages"][0]["content"][0]["text"] == "hi"


def test_converse_accepts_profile_and_arn_ids(client: Any) -> None:
    for model_id in (
        f"us.{HAIKU}",
        f"global.{HAIKU}",
        f"arn:aws:bedrock:us-east-1::foundation-model/{HAIKU}",
        f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/{SONNET_4_PROFILE}",
    ):
        response = client.converse(modelId=model_id, messages=[user("hi")])
        assert response["stopReason"] == "end_turn", model_id


@pytest.mark.parametrize(
    "model_id",
    [
        "meta.llama3-1-70b-instruct-v1:0",
        "us.meta.llama3-3-70b-instruct-v1:0",
        "mistral.mistral-large-2407-v1:0",
        "amazon.nova-pro-v1:0",
        "amazon.titan-text-express-v1",
        "cohere.command-r-plus-v1:0",
    ],
)
def test_converse_serves_other_families(client: Any, model_id: str) -> None:
    response = client.converse(modelId=model_id, messages=[user("hi")])
    assert response["output"]["message"]["content"][0]["text"].startswith("Hello from")


def test_converse_one_tool_call(client: Any) -> None:
    response = client.converse(
        modelId=HAIKU,
        messages=[user("What is the weather in Paris?")],
        toolConfig={"tools": [WEATHER_TOOL], "toolChoice": {"auto": {}}},
    )
    assert response["stopReason"] == "tool_use"
    blocks = response["output"]["message"]["content"]
    assert len(blocks) == 1
    tool_use = blocks[0]["toolUse"]
    assert tool_use["name"] == "get_weather"
    assert tool_use["input"] == {"city": "sample", "days": 1}
    assert tool_use["toolUseId"].startswith("tooluse_")
    assert len(tool_use["toolUseId"]) == len("tooluse_") + 22


def test_converse_two_parallel_tool_calls(client: Any) -> None:
    response = client.converse(
        modelId=HAIKU,
        messages=[user("Call both tools in parallel")],
        toolConfig={"tools": [WEATHER_TOOL, TIME_TOOL]},
    )
    uses = [block["toolUse"] for block in response["output"]["message"]["content"]]
    assert [use["name"] for use in uses] == ["get_weather", "get_time"]
    assert uses[0]["toolUseId"] != uses[1]["toolUseId"]
    assert response["stopReason"] == "tool_use"


def test_converse_tool_result_round_trip(client: Any) -> None:
    first = client.converse(
        modelId=HAIKU,
        messages=[user("weather please")],
        toolConfig={"tools": [WEATHER_TOOL]},
    )
    assistant = first["output"]["message"]
    tool_use_id = assistant["content"][0]["toolUse"]["toolUseId"]
    result = {"toolResult": {"toolUseId": tool_use_id, "content": [{"json": {"temp_c": 21}}]}}
    second = client.converse(
        modelId=HAIKU,
        messages=[user("weather please"), assistant, {"role": "user", "content": [result]}],
        toolConfig={"tools": [WEATHER_TOOL]},
    )
    assert second["stopReason"] == "end_turn"
    assert second["output"]["message"]["content"][0]["text"] == (
        'Tool results received: {"temp_c": 21}'
    )


def test_converse_forced_tool_choice(client: Any) -> None:
    response = client.converse(
        modelId=HAIKU,
        messages=[user("Just say hello")],
        toolConfig={
            "tools": [WEATHER_TOOL, TIME_TOOL],
            "toolChoice": {"tool": {"name": "get_time"}},
        },
    )
    assert response["output"]["message"]["content"][0]["toolUse"]["name"] == "get_time"


def test_converse_image_input(client: Any) -> None:
    message = {
        "role": "user",
        "content": [
            {"text": "Describe this"},
            {"image": {"format": "png", "source": {"bytes": tiny_png()}}},
        ],
    }
    response = client.converse(modelId=HAIKU, messages=[message])
    text = response["output"]["message"]["content"][0]["text"]
    assert text.endswith("I see 1 image(s).")
    assert response["usage"]["inputTokens"] == 2 + 3


def test_converse_structured_output(client: Any) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    response = client.converse(
        modelId=HAIKU,
        messages=[user("Give me a person")],
        outputConfig={
            "textFormat": {
                "type": "json_schema",
                "structure": {"jsonSchema": {"schema": json.dumps(schema), "name": "person"}},
            }
        },
    )
    text = response["output"]["message"]["content"][0]["text"]
    assert json.loads(text) == {"name": "sample", "age": 1}


def test_converse_max_tokens_truncates(client: Any) -> None:
    response = client.converse(
        modelId=HAIKU, messages=[user("hello")], inferenceConfig={"maxTokens": 3}
    )
    assert response["stopReason"] == "max_tokens"
    assert response["usage"]["outputTokens"] == 3


def test_converse_stop_sequence_and_response_field(client: Any) -> None:
    response = client.converse(
        modelId=HAIKU,
        messages=[user("hello")],
        inferenceConfig={"stopSequences": ["You said"]},
        additionalModelResponseFieldPaths=["/stop_sequence"],
    )
    assert response["stopReason"] == "stop_sequence"
    assert response["additionalModelResponseFields"] == {"stop_sequence": "You said"}


def test_converse_reasoning_content(client: Any) -> None:
    response = client.converse(
        modelId=SONNET_4_PROFILE,
        messages=[user("Think first")],
        inferenceConfig={"maxTokens": 4000},
        additionalModelRequestFields={"thinking": {"type": "enabled", "budget_tokens": 1024}},
    )
    reasoning, answer = response["output"]["message"]["content"]
    assert reasoning["reasoningContent"]["reasoningText"]["text"].startswith("The user wrote")
    assert reasoning["reasoningContent"]["reasoningText"]["signature"]
    assert answer["text"].endswith("You said: Think first")


CONVERSE_REJECTIONS = [
    pytest.param(
        {"messages": [{"role": "assistant", "content": [{"text": "hi"}]}]},
        "A conversation must start with a user message.",
        id="starts-with-assistant",
    ),
    pytest.param(
        {"messages": [user("a"), user("b")]},
        "A conversation must alternate between user and assistant roles.",
        id="not-alternating",
    ),
    pytest.param(
        {"messages": [user("a")], "inferenceConfig": {"temperature": 1.5}},
        "1 validation error detected: Value '1.5' at 'inferenceConfig.temperature' failed to "
        "satisfy constraint: Member must have value less than or equal to 1",
        id="temperature-above-1",
    ),
    pytest.param(
        {"messages": [user("a")], "inferenceConfig": {"topP": -0.5, "maxTokens": 0}},
        "2 validation errors detected:",
        id="top-p-and-max-tokens",
    ),
    pytest.param(
        {"messages": [user("a")], "inferenceConfig": {"maxTokens": 5000}},
        "The maximum tokens you requested exceeds the model limit of 4096.",
        id="max-tokens-over-model-limit",
    ),
    pytest.param(
        {"messages": [user("   ")]},
        "The text field in the ContentBlock object at messages.0.content.0 is blank.",
        id="blank-text",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": []}]},
        "The content field in the Message object at messages.0 is empty.",
        id="empty-content",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "user", "content": [{"image": {"source": {"bytes": "aGk="}}}]},
            ]
        },
        "Value null at 'messages.1.member.content.1.member.image.format' failed to satisfy "
        "constraint: Member must not be null",
        id="image-without-format",
    ),
    pytest.param(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"image": {"format": "jpeg", "source": {"bytes": "iVBORw0KGgo="}}}],
                }
            ]
        },
        "The provided image does not match the specified image format.",
        id="image-format-mismatch",
    ),
    pytest.param(
        {
            "messages": [
                user("weather"),
                {
                    "role": "assistant",
                    "content": [
                        {"toolUse": {"toolUseId": "tooluse_a", "name": "get_weather", "input": {}}}
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"toolResult": {"toolUseId": "tooluse_b", "content": [{"text": "x"}]}}
                    ],
                },
            ],
            "toolConfig": {"tools": [WEATHER_TOOL]},
        },
        "Expected toolResult blocks at messages.2.content for the following Ids: tooluse_a",
        id="tool-result-answers-unknown-id",
    ),
    pytest.param(
        {
            "messages": [
                user("weather"),
                {
                    "role": "assistant",
                    "content": [
                        {"toolUse": {"toolUseId": "tooluse_a", "name": "get_weather", "input": {}}}
                    ],
                },
            ],
        },
        "The toolConfig field must be defined when using toolUse and toolResult content blocks.",
        id="tool-use-without-tool-config",
    ),
    pytest.param(
        {"messages": [user("a")], "additionalModelRequestFields": {"top_q": 1}},
        "The model returned the following errors: top_q: Extra inputs are not permitted",
        id="unknown-claude-field",
    ),
]


@pytest.mark.parametrize(("request_fields", "message"), CONVERSE_REJECTIONS)
def test_converse_rejects_invalid_request(
    raw_client: Any, request_fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(raw_client.exceptions.ValidationException) as caught:
        raw_client.converse(modelId=HAIKU, **request_fields)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert message in caught.value.response["Error"]["Message"]


MODEL_REJECTIONS = [
    pytest.param(
        "amazon.titan-text-express-v1",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"image": {"format": "png", "source": {"bytes": tiny_png()}}}],
                }
            ]
        },
        "This model doesn't support the image field for user messages.",
        id="image-to-titan-text",
    ),
    pytest.param(
        "meta.llama3-8b-instruct-v1:0",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"image": {"format": "png", "source": {"bytes": tiny_png()}}}],
                }
            ]
        },
        "This model doesn't support the image field for user messages.",
        id="image-to-llama-3-8b",
    ),
    pytest.param(
        "meta.llama3-8b-instruct-v1:0",
        {"messages": [user("a")], "toolConfig": {"tools": [WEATHER_TOOL]}},
        "This model doesn't support tool use.",
        id="tools-to-llama-3-8b",
    ),
    pytest.param(
        "amazon.titan-text-express-v1",
        {"messages": [user("a")], "system": [{"text": "Be brief"}]},
        "This model doesn't support system messages.",
        id="system-to-titan-text",
    ),
    pytest.param(
        "amazon.titan-text-express-v1",
        {"messages": [user("a")], "inferenceConfig": {"stopSequences": ["END"]}},
        "This model supports only the stop sequences | and User:.",
        id="stop-sequence-to-titan-text",
    ),
    pytest.param(
        "mistral.mistral-large-2407-v1:0",
        {
            "messages": [user("a")],
            "toolConfig": {"tools": [WEATHER_TOOL], "toolChoice": {"any": {}}},
        },
        "This model doesn't support the toolConfig.toolChoice.any field.",
        id="forced-tool-choice-to-mistral",
    ),
    pytest.param(
        "amazon.titan-embed-text-v2:0",
        {"messages": [user("a")]},
        "This action doesn't support the model that you provided.",
        id="converse-with-embedding-model",
    ),
    pytest.param(
        "anthropic.claude-sonnet-4-20250514-v1:0",
        {"messages": [user("a")]},
        "with on-demand throughput isn\u2019t supported",
        id="profile-only-model-by-base-id",
    ),
    pytest.param(
        "anthropic.claude-9-imaginary-v1:0",
        {"messages": [user("a")]},
        "The provided model identifier is invalid.",
        id="unknown-model",
    ),
]


@pytest.mark.parametrize(("model_id", "request_fields", "message"), MODEL_REJECTIONS)
def test_converse_rejects_unsupported_for_model(
    raw_client: Any, model_id: str, request_fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(raw_client.exceptions.ValidationException) as caught:
        raw_client.converse(modelId=model_id, **request_fields)
    assert message in caught.value.response["Error"]["Message"]


def test_converse_retired_model_not_found(client: Any) -> None:
    with pytest.raises(client.exceptions.ResourceNotFoundException) as caught:
        client.converse(modelId="anthropic.claude-v2", messages=[user("a")])
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert "end of its life" in caught.value.response["Error"]["Message"]


# --- ConverseStream ------------------------------------------------------------------------


def collect_stream(response: dict[str, Any]) -> list[dict[str, Any]]:
    return list(response["stream"])


def test_converse_stream_text(client: Any) -> None:
    messages = [user("Tell me something quite long please, with several words")]
    expected = client.converse(modelId=HAIKU, messages=messages)
    response = client.converse_stream(modelId=HAIKU, messages=messages)
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["content-type"] == "application/vnd.amazon.eventstream"
    events = collect_stream(response)
    kinds = [next(iter(event)) for event in events]
    assert kinds[0] == "messageStart"
    assert kinds[-2:] == ["messageStop", "metadata"]
    assert kinds.count("contentBlockDelta") > 1
    text = "".join(
        event["contentBlockDelta"]["delta"]["text"]
        for event in events
        if "contentBlockDelta" in event
    )
    assert text == expected["output"]["message"]["content"][0]["text"]
    assert events[-2]["messageStop"]["stopReason"] == "end_turn"
    metadata = events[-1]["metadata"]
    assert metadata["usage"] == expected["usage"]
    assert isinstance(metadata["metrics"]["latencyMs"], int)


def test_converse_stream_stop_sequence_field(client: Any) -> None:
    response = client.converse_stream(
        modelId=HAIKU,
        messages=[user("hello")],
        inferenceConfig={"stopSequences": ["You said"]},
        additionalModelResponseFieldPaths=["/delta/stop_sequence"],
    )
    stops = [event["messageStop"] for event in response["stream"] if "messageStop" in event]
    assert len(stops) == 1
    assert stops[0]["stopReason"] == "stop_sequence"
    assert stops[0]["additionalModelResponseFields"] == {"delta": {"stop_sequence": "You said"}}


def test_converse_stream_tool_input_fragments(client: Any) -> None:
    response = client.converse_stream(
        modelId=f"us.{HAIKU}",
        messages=[user("Call both tools in parallel")],
        toolConfig={"tools": [WEATHER_TOOL, TIME_TOOL]},
    )
    starts: dict[int, dict[str, str]] = {}
    fragments: dict[int, list[str]] = {}
    stop_reason = None
    for event in response["stream"]:
        if "contentBlockStart" in event:
            start = event["contentBlockStart"]
            starts[start["contentBlockIndex"]] = start["start"]["toolUse"]
        elif "contentBlockDelta" in event:
            delta = event["contentBlockDelta"]
            fragments.setdefault(delta["contentBlockIndex"], []).append(
                delta["delta"]["toolUse"]["input"]
            )
        elif "messageStop" in event:
            stop_reason = event["messageStop"]["stopReason"]
    assert [starts[index]["name"] for index in sorted(starts)] == ["get_weather", "get_time"]
    assert all(start["toolUseId"].startswith("tooluse_") for start in starts.values())
    assert len(fragments[0]) > 1
    assert json.loads("".join(fragments[0])) == {"city": "sample", "days": 1}
    assert json.loads("".join(fragments[1])) == {"zone": "sample"}
    assert stop_reason == "tool_use"


def test_converse_stream_reasoning_deltas(client: Any) -> None:
    response = client.converse_stream(
        modelId=SONNET_4_PROFILE,
        messages=[user("Think first")],
        inferenceConfig={"maxTokens": 4000},
        additionalModelRequestFields={"thinking": {"type": "enabled", "budget_tokens": 2048}},
    )
    reasoning_text = ""
    signature = ""
    answer = ""
    for event in response["stream"]:
        delta = event.get("contentBlockDelta", {}).get("delta", {})
        if "reasoningContent" in delta:
            reasoning_text += delta["reasoningContent"].get("text", "")
            signature += delta["reasoningContent"].get("signature", "")
            assert event["contentBlockDelta"]["contentBlockIndex"] == 0
        elif "text" in delta:
            answer += delta["text"]
            assert event["contentBlockDelta"]["contentBlockIndex"] == 1
    assert reasoning_text.startswith("The user wrote: Think first")
    assert signature
    assert answer.endswith("You said: Think first")


def test_converse_stream_tools_rejected_for_llama(client: Any) -> None:
    with pytest.raises(client.exceptions.ValidationException) as caught:
        client.converse_stream(
            modelId="meta.llama3-1-70b-instruct-v1:0",
            messages=[user("weather")],
            toolConfig={"tools": [WEATHER_TOOL]},
        )
    assert "doesn't support tool use in streaming mode" in caught.value.response["Error"]["Message"]


@pytest.mark.parametrize(
    "exception_type",
    [
        "modelStreamErrorException",
        "throttlingException",
        "internalServerException",
        "validationException",
    ],
)
def test_converse_stream_exception_frame_raises(
    client: Any, simulator: BedrockSimulator, sim_url: str, exception_type: str
) -> None:
    simulator.stream_error_type = exception_type
    add_fault(sim_url, error_after=2, message="stream broke")
    response = client.converse_stream(modelId=HAIKU, messages=[user("one two three four five six")])
    received = []
    with pytest.raises(botocore.exceptions.EventStreamError) as caught:
        for event in response["stream"]:
            received.append(next(iter(event)))
    assert received == ["messageStart", "contentBlockDelta"]
    assert caught.value.response["Error"]["Code"] == exception_type
    assert caught.value.response["Error"]["Message"] == "stream broke"


# botocore 1.44 lets urllib3's error through; other versions wrap it.
CUT_STREAM_ERRORS = (urllib3.exceptions.ProtocolError, botocore.exceptions.ResponseStreamingError)


def test_converse_stream_cut_before_message_stop(client: Any, sim_url: str) -> None:
    add_fault(sim_url, disconnect_after=3)
    response = client.converse_stream(modelId=HAIKU, messages=[user("one two three four five six")])
    received: list[str] = []
    with pytest.raises(CUT_STREAM_ERRORS) as caught:
        for event in response["stream"]:
            received.append(next(iter(event)))
    assert "ended prematurely" in str(caught.value)
    assert "messageStop" not in received
    assert received[0] == "messageStart"


# --- error statuses --------------------------------------------------------------------------


ERROR_STATUSES = [
    (400, "ValidationException"),
    (403, "AccessDeniedException"),
    (404, "ResourceNotFoundException"),
    (408, "ModelTimeoutException"),
    (424, "ModelErrorException"),
    (429, "ThrottlingException"),
    (500, "InternalServerException"),
    (503, "ServiceUnavailableException"),
]


@pytest.mark.parametrize(("status", "error_type"), ERROR_STATUSES)
def test_error_status_raises_matching_exception(
    client: Any, sim_url: str, status: int, error_type: str
) -> None:
    # max_attempts=1 allows botocore one retry, so the fault covers both attempts.
    add_fault(sim_url, status=status, message=f"simulated {status}", times=2)
    exception_class = getattr(client.exceptions, error_type)
    with pytest.raises(exception_class) as caught:
        client.converse(modelId=HAIKU, messages=[user("hi")])
    response = caught.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert response["Error"]["Code"] == error_type
    assert response["Error"]["Message"] == f"simulated {status}"
    error_header = response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"]
    assert error_header.startswith(f"{error_type}:")


def test_model_not_ready_exception(client: Any, simulator: BedrockSimulator, sim_url: str) -> None:
    simulator.error_types[429] = "ModelNotReadyException"
    add_fault(sim_url, status=429, times=2)
    with pytest.raises(client.exceptions.ModelNotReadyException):
        client.converse(modelId=HAIKU, messages=[user("hi")])


def test_throttling_fault_sends_retry_after(client: Any, sim_url: str) -> None:
    add_fault(sim_url, status=429, retry_after=2, times=2, model=HAIKU)
    with pytest.raises(client.exceptions.ThrottlingException) as caught:
        client.converse(modelId=f"us.{HAIKU}", messages=[user("hi")])
    assert caught.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "2"


def test_fault_for_other_model_is_not_taken(client: Any, sim_url: str) -> None:
    add_fault(sim_url, status=500, model="amazon.nova-pro-v1:0")
    response = client.converse(modelId=HAIKU, messages=[user("hi")])
    assert response["stopReason"] == "end_turn"


# --- InvokeModel ---------------------------------------------------------------------------


def test_invoke_model_anthropic_body(client: Any) -> None:
    response = client.invoke_model(modelId=HAIKU, body=anthropic_body(system="Be brief."))
    message = json.loads(response["body"].read())
    assert message["type"] == "message"
    assert message["model"] == "claude-3-haiku-20240307"
    assert message["id"].startswith("msg_bdrk_01")
    assert message["content"] == [
        {"type": "text", "text": f"Hello from {HAIKU}. You said: Hello Claude"}
    ]
    assert message["stop_reason"] == "end_turn"
    assert message["stop_sequence"] is None
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-bedrock-input-token-count"] == str(message["usage"]["input_tokens"])
    assert headers["x-amzn-bedrock-output-token-count"] == str(message["usage"]["output_tokens"])
    assert response["contentType"] == "application/json"


def test_invoke_model_anthropic_tool_use(client: Any) -> None:
    tools = [
        {
            "name": "get_weather",
            "description": "weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    body = anthropic_body(
        tools=tools, messages=[{"role": "user", "content": "what is the weather?"}]
    )
    message = json.loads(client.invoke_model(modelId=HAIKU, body=body)["body"].read())
    assert message["stop_reason"] == "tool_use"
    tool_use = message["content"][0]
    assert tool_use["type"] == "tool_use"
    assert tool_use["id"].startswith("toolu_bdrk_01")
    assert tool_use["input"] == {"city": "sample"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(
            anthropic_body(model=HAIKU),
            "Malformed input request: #: extraneous key [model] is not permitted, please "
            "reformat your input and try again.",
            id="model-field",
        ),
        pytest.param(
            json.dumps({"max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}),
            "#: required key [anthropic_version] not found",
            id="missing-version",
        ),
        pytest.param(
            anthropic_body(anthropic_version="v1"),
            "#/anthropic_version: v1 is not a valid enum value",
            id="wrong-version",
        ),
        pytest.param(
            anthropic_body(max_tokens="10"),
            "#/max_tokens: expected type: Integer, found: String",
            id="max-tokens-string",
        ),
        pytest.param(
            anthropic_body(max_tokens=5000),
            "max_tokens: 5000 > 4096, which is the maximum allowed number of output tokens for "
            "claude-3-haiku-20240307",
            id="max-tokens-over-limit",
        ),
        pytest.param(
            anthropic_body(
                messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
            ),
            'roles must alternate between "user" and "assistant"',
            id="not-alternating",
        ),
    ],
)
def test_invoke_model_rejects_invalid_anthropic_body(client: Any, body: str, message: str) -> None:
    with pytest.raises(client.exceptions.ValidationException) as caught:
        client.invoke_model(modelId=HAIKU, body=body)
    assert message in caught.value.response["Error"]["Message"]


def test_invoke_with_response_stream_anthropic(client: Any) -> None:
    response = client.invoke_model_with_response_stream(modelId=HAIKU, body=anthropic_body())
    assert response["contentType"] == "application/json"
    events = [json.loads(part["chunk"]["bytes"]) for part in response["body"]]
    kinds = [event["type"] for event in events]
    assert kinds[0] == "message_start"
    assert kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    text = "".join(
        event["delta"]["text"] for event in events if event["type"] == "content_block_delta"
    )
    assert text == f"Hello from {HAIKU}. You said: Hello Claude"
    assert events[-2]["delta"]["stop_reason"] == "end_turn"
    metrics = events[-1]["amazon-bedrock-invocationMetrics"]
    assert metrics["outputTokenCount"] == events[-2]["usage"]["output_tokens"]
    assert metrics["inputTokenCount"] == events[0]["message"]["usage"]["input_tokens"]


def test_invoke_stream_exception_frame_raises(
    client: Any, simulator: BedrockSimulator, sim_url: str
) -> None:
    simulator.stream_error_type = "modelTimeoutException"
    add_fault(sim_url, error_after=1, message="too slow")
    response = client.invoke_model_with_response_stream(modelId=HAIKU, body=anthropic_body())
    with pytest.raises(botocore.exceptions.EventStreamError) as caught:
        list(response["body"])
    assert caught.value.response["Error"]["Code"] == "modelTimeoutException"


def test_titan_embedding(client: Any) -> None:
    body = json.dumps({"inputText": "hello world", "dimensions": 512, "normalize": True})
    first = json.loads(
        client.invoke_model(modelId="amazon.titan-embed-text-v2:0", body=body)["body"].read()
    )
    again = json.loads(
        client.invoke_model(modelId="amazon.titan-embed-text-v2:0", body=body)["body"].read()
    )
    vector = first["embedding"]
    assert len(vector) == 512
    assert abs(sum(value * value for value in vector) - 1.0) < 1e-3
    assert first["embeddingsByType"] == {"float": vector}
    assert first["inputTextTokenCount"] == 2
    assert again["embedding"] == vector


def test_titan_embedding_rejects_bad_dimensions(client: Any) -> None:
    body = json.dumps({"inputText": "hello", "dimensions": 100})
    with pytest.raises(client.exceptions.ValidationException) as caught:
        client.invoke_model(modelId="amazon.titan-embed-text-v2:0", body=body)
    assert (
        "#/dimensions: 100 is not a valid enum value" in caught.value.response["Error"]["Message"]
    )


def test_cohere_embedding(client: Any) -> None:
    body = json.dumps({"texts": ["first text", "second text"], "input_type": "search_document"})
    response = json.loads(
        client.invoke_model(modelId="cohere.embed-english-v3", body=body)["body"].read()
    )
    assert response["response_type"] == "embeddings_floats"
    assert response["texts"] == ["first text", "second text"]
    assert len(response["embeddings"]) == 2
    assert len(response["embeddings"][0]) == 1024
    assert response["embeddings"][0] != response["embeddings"][1]
    assert response["id"]


def test_cohere_embedding_by_type(client: Any) -> None:
    body = json.dumps(
        {"texts": ["x"], "input_type": "search_query", "embedding_types": ["float", "int8"]}
    )
    response = json.loads(
        client.invoke_model(modelId="cohere.embed-english-v3", body=body)["body"].read()
    )
    assert response["response_type"] == "embeddings_by_type"
    assert set(response["embeddings"]) == {"float", "int8"}
    assert all(isinstance(value, int) for value in response["embeddings"]["int8"][0])


def test_cohere_embedding_requires_input_type(client: Any) -> None:
    with pytest.raises(client.exceptions.ValidationException) as caught:
        client.invoke_model(modelId="cohere.embed-english-v3", body=json.dumps({"texts": ["x"]}))
    assert "#: required key [input_type] not found" in caught.value.response["Error"]["Message"]


# --- Anthropic's own Bedrock client ----------------------------------------------------------


def test_anthropic_bedrock_client_with_sigv4(sim_url: str) -> None:
    sdk = anthropic.AnthropicBedrock(
        aws_access_key=DEFAULT_ACCESS_KEY_ID,
        aws_secret_key=DEFAULT_SECRET_ACCESS_KEY,
        aws_region="us-east-1",
        base_url=sim_url,
        max_retries=0,
    )
    message = sdk.messages.create(
        model=HAIKU, max_tokens=100, messages=[{"role": "user", "content": "Hi SDK"}]
    )
    block = message.content[0]
    assert isinstance(block, anthropic.types.TextBlock)
    assert block.text.endswith("You said: Hi SDK")
    assert message.usage.output_tokens > 0
    with sdk.messages.stream(
        model=HAIKU, max_tokens=100, messages=[{"role": "user", "content": "Hi stream"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.endswith("You said: Hi stream")
    assert final.stop_reason == "end_turn"


def test_anthropic_bedrock_client_with_api_key(sim_url: str) -> None:
    sdk = anthropic.AnthropicBedrock(
        api_key=API_KEY, aws_region="us-east-1", base_url=sim_url, max_retries=0
    )
    message = sdk.messages.create(
        model=HAIKU, max_tokens=50, messages=[{"role": "user", "content": "key auth"}]
    )
    block = message.content[0]
    assert isinstance(block, anthropic.types.TextBlock)
    assert block.text.endswith("You said: key auth")
    wrong = anthropic.AnthropicBedrock(
        api_key="ABSKd3Jvbmc=", aws_region="us-east-1", base_url=sim_url, max_retries=0
    )
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        wrong.messages.create(
            model=HAIKU, max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 403


# --- authentication --------------------------------------------------------------------------


def test_wrong_secret_rejected(sim_url: str) -> None:
    client = make_client(sim_url, secret="not-the-secret")
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.converse(modelId=HAIKU, messages=[user("hi")])
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error["Error"]["Code"] == "InvalidSignatureException"
    assert "signature we calculated does not match" in error["Error"]["Message"]


def test_unknown_access_key_rejected(sim_url: str) -> None:
    client = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=sim_url,
        aws_access_key_id="AKIDUNKNOWN",
        aws_secret_access_key="whatever",
        config=Config(retries={"max_attempts": 1}),
    )
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.converse(modelId=HAIKU, messages=[user("hi")])
    assert caught.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_missing_authorization_rejected(sim_url: str) -> None:
    request = urllib.request.Request(
        f"{sim_url}/model/{HAIKU}/converse",
        data=json.dumps({"messages": [user("hi")]}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 403
    assert caught.value.headers["x-amzn-ErrorType"].startswith(
        "MissingAuthenticationTokenException"
    )
    assert json.loads(caught.value.read()) == {"message": "Missing Authentication Token"}


def sign(
    url: str, body: bytes, *, secret: str = DEFAULT_SECRET_ACCESS_KEY, service: str = "bedrock"
) -> AWSRequest:
    request = AWSRequest(
        method="POST", url=url, data=body, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(Credentials(DEFAULT_ACCESS_KEY_ID, secret), service, "eu-west-1").add_auth(request)
    return request


SECRETS = {DEFAULT_ACCESS_KEY_ID: DEFAULT_SECRET_ACCESS_KEY}
SIGNED_URL = "http://127.0.0.1:8123/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"


def test_verify_sigv4_accepts_botocore_signature() -> None:
    body = b'{"messages": []}'
    request = sign(SIGNED_URL, body)
    identity = verify_sigv4(
        method="POST", url=SIGNED_URL, headers=dict(request.headers), body=body, secrets=SECRETS
    )
    assert identity.access_key_id == DEFAULT_ACCESS_KEY_ID
    assert identity.region == "eu-west-1"
    assert identity.service == "bedrock"


@pytest.mark.parametrize(
    ("case", "error_type"),
    [
        ("wrong-secret", "InvalidSignatureException"),
        ("changed-body", "InvalidSignatureException"),
        ("changed-path", "InvalidSignatureException"),
        ("wrong-service", "InvalidSignatureException"),
        ("wrong-region", "InvalidSignatureException"),
        ("expired", "InvalidSignatureException"),
        ("unknown-key", "UnrecognizedClientException"),
    ],
)
def test_verify_sigv4_rejects(case: str, error_type: str) -> None:
    body = b'{"messages": []}'
    request = sign(
        SIGNED_URL,
        body,
        secret="bad" if case == "wrong-secret" else DEFAULT_SECRET_ACCESS_KEY,
        service="bedrock-runtime" if case == "wrong-service" else "bedrock",
    )
    arguments: dict[str, Any] = {
        "method": "POST",
        "url": SIGNED_URL,
        "headers": dict(request.headers),
        "body": body,
        "secrets": SECRETS,
    }
    if case == "changed-body":
        arguments["body"] = b'{"messages": [1]}'
    if case == "changed-path":
        arguments["url"] = SIGNED_URL.replace("%3A", ":")
    if case == "wrong-region":
        arguments["region"] = "us-east-1"
    if case == "expired":
        arguments["now"] = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=6)
    if case == "unknown-key":
        arguments["secrets"] = {"AKIDOTHER": "x"}
    with pytest.raises(AuthFailure) as caught:
        verify_sigv4(**arguments)
    assert caught.value.error_type == error_type
    assert caught.value.status == 403


# --- event-stream encoding -------------------------------------------------------------------


def test_event_frames_decode_with_botocore() -> None:
    frames = [
        event_frame("messageStart", {"role": "assistant"}, pad=5),
        event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "h\u00e9"}}),
        exception_frame("throttlingException", {"message": "slow down"}),
    ]
    data = b"".join(frames)
    buffer = EventStreamBuffer()
    messages = []
    for start in range(0, len(data), 7):  # feed awkward pieces, as TCP reads would
        buffer.add_data(data[start : start + 7])
        messages.extend(buffer)
    assert [message.headers[":message-type"] for message in messages] == [
        "event",
        "event",
        "exception",
    ]
    assert messages[0].headers[":event-type"] == "messageStart"
    assert messages[0].headers[":content-type"] == "application/json"
    assert json.loads(messages[0].payload) == {"role": "assistant", "p": "abcde"}
    assert json.loads(messages[1].payload)["delta"]["text"] == "h\u00e9"
    assert messages[2].headers[":exception-type"] == "throttlingException"
    assert messages[2].to_response_dict()["status_code"] == 400


def test_corrupted_frame_fails_crc_check() -> None:
    frame = bytearray(event_frame("messageStart", {"role": "assistant"}))
    frame[-6] ^= 0xFF
    buffer = EventStreamBuffer()
    buffer.add_data(bytes(frame))
    with pytest.raises(ChecksumMismatch):
        list(buffer)


def test_image_bytes_travel_base64_encoded(client: Any, simulator: BedrockSimulator) -> None:
    png = tiny_png()
    client.converse(
        modelId=HAIKU,
        messages=[
            {"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": png}}}]}
        ],
    )
    sent = simulator.requests[-1].body["messages"][0]["content"][0]["image"]["source"]["bytes"]
    assert base64.b64decode(sent) == png
