"""Bad requests get a clear error in the caller's dialect and never stop the server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import VIRTUAL_KEY, Stack, start_stack, stop_stack

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"

GOOD = {
    OPENAI_PATH: {"model": "gpt-4o", "messages": [{"role": "user", "content": "ping"}]},
    ANTHROPIC_PATH: {
        "model": "claude-sonnet-4-5",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "ping"}],
    },
}


def _headers(path: str, key: str | None = VIRTUAL_KEY) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        if path == ANTHROPIC_PATH:
            headers["x-api-key"] = key
            headers["anthropic-version"] = "2023-06-01"
        else:
            headers["Authorization"] = f"Bearer {key}"
    return headers


def _check_shape(path: str, body: dict[str, Any], expected_type: str) -> str:
    """Assert the dialect's error shape and return the message."""
    if path == ANTHROPIC_PATH:
        assert body["type"] == "error"
        assert body["error"]["type"] == expected_type
        return str(body["error"]["message"])
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    assert body["error"]["type"] == expected_type
    return str(body["error"]["message"])


async def _still_serves(http: aiohttp.ClientSession, stack: Stack, path: str) -> None:
    async with http.post(
        stack.url + path, data=orjson.dumps(GOOD[path]), headers=_headers(path)
    ) as response:
        assert response.status == 200, await response.text()


# (case id, path, raw body, status, openai type or anthropic type, text the message must contain)
CASES = [
    (
        "openai-malformed-json",
        OPENAI_PATH,
        b'{"model": "gpt-4o", "messages": [',
        400,
        "invalid_request_error",
        "not valid JSON",
    ),
    ("openai-not-object", OPENAI_PATH, b"[1, 2]", 400, "invalid_request_error", "JSON object"),
    ("openai-empty", OPENAI_PATH, b"", 400, "invalid_request_error", "empty"),
    (
        "openai-missing-model",
        OPENAI_PATH,
        orjson.dumps({"messages": []}),
        400,
        "invalid_request_error",
        "'model'",
    ),
    (
        "openai-missing-messages",
        OPENAI_PATH,
        orjson.dumps({"model": "gpt-4o"}),
        400,
        "invalid_request_error",
        "'messages'",
    ),
    (
        "openai-messages-wrong-type",
        OPENAI_PATH,
        orjson.dumps({"model": "gpt-4o", "messages": "hi"}),
        400,
        "invalid_request_error",
        "'messages'",
    ),
    (
        "openai-temperature-wrong-type",
        OPENAI_PATH,
        orjson.dumps({**GOOD[OPENAI_PATH], "temperature": "hot"}),
        400,
        "invalid_request_error",
        "'temperature'",
    ),
    (
        "openai-role-invalid",
        OPENAI_PATH,
        orjson.dumps({"model": "gpt-4o", "messages": [{"role": "robot", "content": "x"}]}),
        400,
        "invalid_request_error",
        "messages[0].role",
    ),
    (
        "openai-unknown-model",
        OPENAI_PATH,
        orjson.dumps({**GOOD[OPENAI_PATH], "model": "gpt-unknown"}),
        404,
        "invalid_request_error",
        "gpt-unknown",
    ),
    (
        "anthropic-malformed-json",
        ANTHROPIC_PATH,
        b'{"model": ',
        400,
        "invalid_request_error",
        "not valid JSON",
    ),
    (
        "anthropic-missing-max-tokens",
        ANTHROPIC_PATH,
        orjson.dumps({"model": "claude-sonnet-4-5", "messages": []}),
        400,
        "invalid_request_error",
        "max_tokens",
    ),
    (
        "anthropic-max-tokens-wrong-type",
        ANTHROPIC_PATH,
        orjson.dumps({**GOOD[ANTHROPIC_PATH], "max_tokens": "many"}),
        400,
        "invalid_request_error",
        "'max_tokens'",
    ),
    (
        "anthropic-system-role",
        ANTHROPIC_PATH,
        orjson.dumps({**GOOD[ANTHROPIC_PATH], "messages": [{"role": "system", "content": "x"}]}),
        400,
        "invalid_request_error",
        "messages[0].role",
    ),
    (
        "anthropic-block-wrong-type",
        ANTHROPIC_PATH,
        orjson.dumps(
            {
                **GOOD[ANTHROPIC_PATH],
                "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}],
            }
        ),
        400,
        "invalid_request_error",
        "messages[0].content[0].text",
    ),
    (
        "anthropic-unknown-model",
        ANTHROPIC_PATH,
        orjson.dumps({**GOOD[ANTHROPIC_PATH], "model": "claude-unknown"}),
        404,
        "not_found_error",
        "claude-unknown",
    ),
    (
        "openai-data-url-not-base64",
        OPENAI_PATH,
        orjson.dumps(
            {
                "model": "gpt-4o",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:image/png,AAAA"}}
                        ],
                    }
                ],
            }
        ),
        400,
        "invalid_request_error",
        "data:<media type>;base64,<data>",
    ),
]


@pytest.mark.parametrize(
    ("path", "raw", "status", "error_type", "mention"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
async def test_bad_request_rejected(
    stack: Stack,
    http: aiohttp.ClientSession,
    path: str,
    raw: bytes,
    status: int,
    error_type: str,
    mention: str,
) -> None:
    async with http.post(stack.url + path, data=raw, headers=_headers(path)) as response:
        assert response.status == status
        body = await response.json()
    message = _check_shape(path, body, error_type)
    assert mention in message
    await _still_serves(http, stack, path)


@pytest.mark.parametrize("path", [OPENAI_PATH, ANTHROPIC_PATH])
@pytest.mark.parametrize(
    "key", [None, "sk-sf-not-a-real-key", "plain-wrong"], ids=["missing", "unknown", "no-prefix"]
)
async def test_bad_key_gets_401(
    stack: Stack, http: aiohttp.ClientSession, path: str, key: str | None
) -> None:
    async with http.post(
        stack.url + path, data=orjson.dumps(GOOD[path]), headers=_headers(path, key)
    ) as response:
        assert response.status == 401
        body = await response.json()
    expected = "authentication_error" if path == ANTHROPIC_PATH else "invalid_request_error"
    message = _check_shape(path, body, expected)
    assert "key" in message.lower()
    await _still_serves(http, stack, path)


@pytest.mark.parametrize("path", [OPENAI_PATH, ANTHROPIC_PATH])
async def test_oversize_body_gets_413(http: aiohttp.ClientSession, path: str) -> None:
    stack = await start_stack(server={"max_body_bytes": 4096})
    try:
        body = dict(GOOD[path])
        body["messages"] = [{"role": "user", "content": "x" * 10_000}]
        async with http.post(
            stack.url + path, data=orjson.dumps(body), headers=_headers(path)
        ) as response:
            assert response.status == 413
            payload = await response.json()
        expected = "request_too_large" if path == ANTHROPIC_PATH else "invalid_request_error"
        assert "4096 bytes" in _check_shape(path, payload, expected)
        await _still_serves(http, stack, path)
    finally:
        await stop_stack(stack)


async def test_provider_key_never_reaches_caller(stack: Stack, http: aiohttp.ClientSession) -> None:
    stack.openai.faults.clear()
    from smartflow.sim.base import Fault

    stack.openai.faults.append(Fault(status=400, message="bad thing"))
    async with http.post(
        stack.url + OPENAI_PATH, data=orjson.dumps(GOOD[OPENAI_PATH]), headers=_headers(OPENAI_PATH)
    ) as response:
        text = await response.text()
        headers = dict(response.headers)
    assert response.status == 400
    assert "provider-test-key" not in text
    assert all("provider-test-key" not in v for v in headers.values())


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("path", [OPENAI_PATH, ANTHROPIC_PATH])
async def test_deep_nesting_is_400(stack: Stack, http: aiohttp.ClientSession, path: str) -> None:
    body = {**GOOD[path], "metadata": _nested(300)}
    # orjson cannot write this depth either, so the standard library encodes it.
    async with http.post(
        stack.url + path, data=json.dumps(body), headers=_headers(path)
    ) as response:
        assert response.status == 400
        payload = await response.json()
    assert "nested too deeply" in _check_shape(path, payload, "invalid_request_error")
    await _still_serves(http, stack, path)


async def test_long_model_name_not_echoed(stack: Stack, http: aiohttp.ClientSession) -> None:
    body = {**GOOD[OPENAI_PATH], "model": "M" * 100_000}
    async with http.post(
        stack.url + OPENAI_PATH, data=orjson.dumps(body), headers=_headers(OPENAI_PATH)
    ) as response:
        assert response.status == 404
        text = await response.text()
    assert len(text) < 2000


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        (ANTHROPIC_PATH, "stream", "false"),
        (OPENAI_PATH, "stream_options", {"include_usage": "yes"}),
        (ANTHROPIC_PATH, "tool_choice", {"type": "auto", "disable_parallel_tool_use": "no"}),
    ],
)
async def test_boolean_fields_checked(
    stack: Stack, http: aiohttp.ClientSession, path: str, field: str, value: Any
) -> None:
    body = {**GOOD[path], field: value}
    async with http.post(
        stack.url + path, data=orjson.dumps(body), headers=_headers(path)
    ) as response:
        assert response.status == 400
        payload = await response.json()
    assert "expected a boolean" in _check_shape(path, payload, "invalid_request_error")


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/chat/completions", 405),
        ("POST", "/v1/nothing", 404),
        ("POST", "/v1/messages/nothing", 404),
    ],
)
async def test_unknown_route_in_dialect(
    stack: Stack, http: aiohttp.ClientSession, method: str, path: str, status: int
) -> None:
    async with http.request(method, stack.url + path, headers=_headers(path)) as response:
        assert response.status == status
        payload = await response.json()
    expected = (
        ("not_found_error" if status == 404 else "invalid_request_error")
        if path.startswith("/v1/messages")
        else "invalid_request_error"
    )
    message = _check_shape(
        ANTHROPIC_PATH if path.startswith("/v1/messages") else OPENAI_PATH, payload, expected
    )
    assert path in message


@pytest.mark.parametrize("path", [OPENAI_PATH, ANTHROPIC_PATH])
async def test_undecodable_gzip_body_is_400(
    stack: Stack, http: aiohttp.ClientSession, path: str
) -> None:
    headers = {**_headers(path), "Content-Encoding": "gzip"}
    async with http.post(
        stack.url + path, data=orjson.dumps(GOOD[path]), headers=headers
    ) as response:
        assert response.status == 400
        body = await response.json()
    message = _check_shape(path, body, "invalid_request_error")
    assert "Content-Encoding" in message
    assert "'gzip'" in message
    await _still_serves(http, stack, path)


async def test_model_name_cannot_forge_access_log_lines(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    stack = await start_stack(server={"access_log": True})
    forged = "x\n2026-12-04 20:00:00,000 INFO smartflow.access: FAKE \u202e"
    body = {**GOOD[OPENAI_PATH], "model": forged}
    try:
        with caplog.at_level("INFO", logger="smartflow.access"):
            async with http.post(
                stack.url + OPENAI_PATH, data=orjson.dumps(body), headers=_headers(OPENAI_PATH)
            ) as response:
                assert response.status == 404
    finally:
        await stop_stack(stack)
    lines = [r.getMessage() for r in caplog.records if r.name == "smartflow.access"]
    assert len(lines) == 1
    assert "\n" not in lines[0]
    assert "\u202e" not in lines[0]
    assert "x\\n2026-12-04" in lines[0]


async def test_slow_headers_closed_after_idle_timeout() -> None:
    stack = await start_stack(server={"idle_timeout_s": 0.5})
    host, port = stack.url.removeprefix("http://").split(":")
    try:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        # The request head never completes; the gateway closes the connection.
        closed = await asyncio.wait_for(reader.read(), timeout=10)
        assert closed == b""
        writer.close()
        async with aiohttp.ClientSession() as http:
            await _still_serves(http, stack, OPENAI_PATH)
    finally:
        await stop_stack(stack)
