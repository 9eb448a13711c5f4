"""The benchmark's mock upstream, judged by the OpenAI SDK and by raw HTTP/1.1 exchanges."""

from __future__ import annotations

import asyncio

import openai
from mock_upstream import CONTENT_PARTS, STREAM_EVENTS, UpstreamState

MESSAGES = [{"role": "user", "content": "hi"}]


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


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await reader.readline()
    headers: dict[str, str] = {}
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return (
            int(status_line.split()[1]),
            headers,
            await reader.readexactly(int(headers["content-length"])),
        )
    body = b""
    while (size := int((await reader.readline()).strip(), 16)) != 0:
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    await reader.readexactly(2)
    return int(status_line.split()[1]), headers, body


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
