"""The benchmark's mock upstream, judged by the OpenAI SDK, boto3, botocore and raw HTTP/1.1."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import openai
import orjson
import pytest
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.eventstream import EventStreamBuffer  # type: ignore[import-untyped]
from harness.eventstream import CONVERSE_STREAM_FRAMES
from mock_upstream import CONTENT_PARTS, STREAM_EVENTS, UpstreamState

from smartflow.providers.base import Secret
from smartflow.usage.events import UsageEvent, new_event_id, utc_timestamp
from smartflow.usage.queue import UsageQueue
from smartflow.usage.shipper import ShipperSettings, UsageShipper

MESSAGES = [{"role": "user", "content": "hi"}]
MODEL_ID = "anthropic.claude-3-5-sonnet-20241022-v2:0"
CONVERSE_PATH = "/model/anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse-stream"
CONVERSE_BODY = orjson.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]})
CONVERSE_EVENT_TYPES = [
    "messageStart",
    *["contentBlockDelta"] * 20,
    "contentBlockStop",
    "messageStop",
    "metadata",
]


def _client(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="sk-fake-test", max_retries=0)


async def test_sdk_parses_completion(upstream: tuple[str, UpstreamState]) -> None:
    base_url, _ = upstream
    async with _client(base_url) as client:
        completion = await client.chat.completions.create(model="bench-model", messages=MESSAGES)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "".join(CONTENT_PARTS)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 260


async def test_sdk_parses_stream_with_usage(upstream: tuple[str, UpstreamState]) -> None:
    base_url, _ = upstream
    async with _client(base_url) as client:
        stream = await client.chat.completions.create(
            model="bench-model",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert len(chunks) == 20
    content = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert content == "".join(CONTENT_PARTS)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 48


def _request(body: bytes, path: str = "/v1/chat/completions", extra: str = "") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    headers: dict[str, str] = {}
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


async def _read_chunks(reader: asyncio.StreamReader) -> list[bytes]:
    """Read a chunked body and return its chunks, in order."""
    chunks: list[bytes] = []
    while (size := int((await reader.readline()).strip(), 16)) != 0:
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)
    await reader.readexactly(2)
    return chunks


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status, headers = await _read_head(reader)
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    return status, headers, b"".join(await _read_chunks(reader))


async def _open(base_url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(base_url.rsplit(":", 1)[1])
    return await asyncio.open_connection("127.0.0.1", port)


async def test_pipelined_requests_on_one_connection(upstream: tuple[str, UpstreamState]) -> None:
    base_url, state = upstream
    reader, writer = await _open(base_url)
    # Two requests in one write, the second one streamed: both replies arrive, in order.
    writer.write(_request(b'{"model":"m"}') + _request(b'{"model":"m","stream":true}'))
    status, headers, body = await _read_response(reader)
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert b'"chat.completion"' in body
    status, headers, body = await _read_response(reader)
    assert status == 200
    assert headers["transfer-encoding"] == "chunked"
    assert body == b"".join(STREAM_EVENTS)
    assert state.requests == 2
    writer.close()
    await writer.wait_closed()


async def test_request_split_across_writes(upstream: tuple[str, UpstreamState]) -> None:
    base_url, _ = upstream
    reader, writer = await _open(base_url)
    request = _request(b'{"model":"m"}')
    for offset in range(0, len(request), 7):
        writer.write(request[offset : offset + 7])
        await writer.drain()
        await asyncio.sleep(0.001)
    status, _, body = await _read_response(reader)
    assert status == 200
    assert body.endswith(b"}")
    writer.close()
    await writer.wait_closed()


async def test_chunked_request_body(upstream: tuple[str, UpstreamState]) -> None:
    base_url, _ = upstream
    reader, writer = await _open(base_url)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    writer.write(head + b'5\r\n{"mod\r\n8\r\nel":"m"}\r\n0\r\n\r\n')
    status, _, body = await _read_response(reader)
    assert status == 200
    assert b'"chat.completion"' in body
    writer.close()
    await writer.wait_closed()


async def test_connection_close_is_honoured(upstream: tuple[str, UpstreamState]) -> None:
    base_url, _ = upstream
    reader, writer = await _open(base_url)
    writer.write(_request(b'{"model":"m"}', extra="Connection: close\r\n"))
    status, headers, _ = await _read_response(reader)
    assert status == 200
    assert headers["connection"] == "close"
    assert await reader.read() == b""
    writer.close()
    await writer.wait_closed()


async def test_errors_for_bad_requests(upstream: tuple[str, UpstreamState]) -> None:
    base_url, state = upstream
    reader, writer = await _open(base_url)
    writer.write(_request(b"{}", path="/v1/unknown") + _request(b"{not json"))
    status, _, body = await _read_response(reader)
    assert status == 404
    assert b"/v1/unknown" in body
    status, _, body = await _read_response(reader)
    assert status == 400
    assert b"not valid JSON" in body
    assert state.errors == 1
    writer.close()
    await writer.wait_closed()


async def test_invalid_content_length_closes(upstream: tuple[str, UpstreamState]) -> None:
    base_url, _ = upstream
    reader, writer = await _open(base_url)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: ten\r\n\r\n")
    status, headers, _ = await _read_response(reader)
    assert status == 400
    assert headers["connection"] == "close"
    assert await reader.read() == b""
    writer.close()
    await writer.wait_closed()


async def test_get_is_not_allowed(upstream: tuple[str, UpstreamState]) -> None:
    base_url, _ = upstream
    reader, writer = await _open(base_url)
    writer.write(b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = await _read_response(reader)
    assert status == 405
    assert b"method GET is not allowed" in body
    writer.close()
    await writer.wait_closed()


# --- Bedrock ConverseStream --------------------------------------------------------------


async def test_converse_stream_parsed_by_botocore(upstream: tuple[str, UpstreamState]) -> None:
    base_url, state = upstream
    reader, writer = await _open(base_url)
    writer.write(_request(CONVERSE_BODY, path=CONVERSE_PATH))
    status, headers = await _read_head(reader)
    chunks = await _read_chunks(reader)
    writer.close()
    await writer.wait_closed()
    assert status == 200
    assert headers["content-type"] == "application/vnd.amazon.eventstream"
    assert headers["transfer-encoding"] == "chunked"
    assert headers["x-amzn-requestid"]
    # One chunk per frame, as a proxy sees events arrive from Bedrock.
    assert chunks == list(CONVERSE_STREAM_FRAMES)
    buffer = EventStreamBuffer()
    buffer.add_data(b"".join(chunks))
    messages = list(buffer)
    assert [message.headers[":event-type"] for message in messages] == CONVERSE_EVENT_TYPES
    assert {message.headers[":message-type"] for message in messages} == {"event"}
    assert {message.headers[":content-type"] for message in messages} == {"application/json"}
    payloads = [orjson.loads(message.payload) for message in messages]
    text = "".join(payload["delta"]["text"] for payload in payloads[1:21])
    assert text == "".join(CONTENT_PARTS)
    assert payloads[-2]["stopReason"] == "end_turn"
    assert payloads[-1]["usage"] == {"inputTokens": 212, "outputTokens": 48, "totalTokens": 260}
    assert state.requests == 1


@pytest.fixture
def no_aws_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep boto3 from metadata lookups and from any developer's AWS configuration."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


def _boto3_converse_stream(base_url: str) -> list[dict[str, Any]]:
    client = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=base_url,
        aws_access_key_id="AKIDBENCHTEST0000001",
        aws_secret_access_key="bench/test/secret/not-a-real-aws-key",
        config=Config(retries={"max_attempts": 1}),
    )
    response = client.converse_stream(
        modelId=MODEL_ID, messages=[{"role": "user", "content": [{"text": "hi"}]}]
    )
    return list(response["stream"])


@pytest.mark.usefixtures("no_aws_settings")
async def test_boto3_reads_converse_stream(upstream: tuple[str, UpstreamState]) -> None:
    base_url, _ = upstream
    # boto3 blocks, and the mock serves on this test's event loop.
    events = await asyncio.to_thread(_boto3_converse_stream, base_url)
    assert [next(iter(event)) for event in events] == CONVERSE_EVENT_TYPES
    text = "".join(event["contentBlockDelta"]["delta"]["text"] for event in events[1:21])
    assert text == "".join(CONTENT_PARTS)
    assert events[-2]["messageStop"]["stopReason"] == "end_turn"
    assert events[-1]["metadata"]["usage"]["totalTokens"] == 260


async def test_converse_stream_any_model_id(upstream: tuple[str, UpstreamState]) -> None:
    base_url, _ = upstream
    reader, writer = await _open(base_url)
    path = "/model/us.meta.llama3-3-70b-instruct-v1%3A0/converse-stream"
    writer.write(_request(CONVERSE_BODY, path=path))
    status, _, body = await _read_response(reader)
    writer.close()
    await writer.wait_closed()
    assert status == 200
    assert body == b"".join(CONVERSE_STREAM_FRAMES)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", b"not valid JSON"),
        (b'{"messages": []}', b"messages must be a non-empty list"),
        (b"[1, 2]", b"messages must be a non-empty list"),
    ],
)
async def test_converse_stream_rejects_invalid_body(
    upstream: tuple[str, UpstreamState], body: bytes, message: bytes
) -> None:
    base_url, _ = upstream
    reader, writer = await _open(base_url)
    writer.write(_request(body, path=CONVERSE_PATH))
    status, headers, response_body = await _read_response(reader)
    writer.close()
    await writer.wait_closed()
    assert status == 400
    assert headers["x-amzn-errortype"].startswith("ValidationException:")
    assert message in orjson.loads(response_body)["message"].encode()


async def test_model_paths_without_route(upstream: tuple[str, UpstreamState]) -> None:
    base_url, state = upstream
    reader, writer = await _open(base_url)
    paths = [
        f"/model/{MODEL_ID}/converse",  # an operation the mock does not serve
        "/model//converse-stream",  # no model id
        "/model/a/b/converse-stream",  # a model id with an unencoded "/"
    ]
    for path in paths:
        writer.write(_request(CONVERSE_BODY, path=path))
        status, _, body = await _read_response(reader)
        assert status == 404, path
        assert b"no route for" in body
    writer.write(f"GET {CONVERSE_PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    status, headers, _ = await _read_response(reader)
    assert status == 404
    assert headers["x-amzn-errortype"].startswith("UnknownOperationException:")
    writer.close()
    await writer.wait_closed()
    assert state.errors == len(paths)


async def test_event_sink_takes_shipped_events(
    upstream: tuple[str, UpstreamState], tmp_path: Path
) -> None:
    base_url, state = upstream
    queue = await UsageQueue.open(tmp_path / "queue")
    settings = ShipperSettings(
        url=f"{base_url}/v1/events",
        credential=Secret("sfi-fake-test"),
        instance="bench",
        site="local",
        batch_events=7,
    )
    shipper = UsageShipper(queue, settings)
    try:
        for index in range(20):
            queue.offer(_usage_event(index))
        await queue.flush()
        while await shipper.ship_once():
            pass
    finally:
        await shipper.stop()
        await queue.close()
    assert state.events_received == 20
    assert shipper.stats.shipped == 20
    assert queue.stats().depth == 0


def _usage_event(index: int) -> UsageEvent:
    return UsageEvent(
        event_id=new_event_id(),
        request_id=f"r{index}",
        started_at=utc_timestamp(0),
        instance="bench",
        site="local",
        dialect="openai",
    )
