"""The interception listener in process: dispatch, loops, pass-through, identity, HTTP/2."""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from smartflow.intercept.identity import identity_hash
from tests.intercept.stack import (
    CALLER_KEY,
    SALT,
    VIRTUAL_KEY,
    Stack,
    client_session,
    make_pki,
    start_recording_upstream,
    start_stack,
)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
BEARER = {"Authorization": f"Bearer {CALLER_KEY}"}
ANTHROPIC_HEADERS = {"x-api-key": CALLER_KEY, "anthropic-version": "2023-06-01"}


def _sha256(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    running = await start_stack(tmp_path)
    try:
        yield running
    finally:
        await running.stop()


async def test_hop_header_rejected_with_508(stack: Stack) -> None:
    async with client_session(stack.pki, stack.port) as http:
        response = await http.post(
            "https://api.openai.com/v1/chat/completions",
            json=CHAT,
            headers={**BEARER, "x-smartflow-hop": "gw-other"},
        )
        body = await response.json()
    assert response.status == 508
    assert body["error"]["code"] == "loop_detected"
    assert "gw-other" in body["error"]["message"]
    assert not stack.openai.requests


async def test_anthropic_loop_error_in_anthropic_dialect(stack: Stack) -> None:
    async with client_session(stack.pki, stack.port) as http:
        response = await http.get(
            "https://api.anthropic.com/v1/models",
            headers={**ANTHROPIC_HEADERS, "x-smartflow-hop": "gw-other"},
        )
        body = await response.json()
    assert response.status == 508
    assert body["type"] == "error"
    assert "loop" in body["error"]["message"]


async def test_upstream_at_own_address_rejected(tmp_path: Path) -> None:
    # Port 0 cannot name the listener before it is bound, so bind it to a fixed free port
    # and make that same address the upstream of api.openai.com.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stack = await start_stack(
        tmp_path, listen_port=port, upstream={"api.openai.com": f"127.0.0.1:{port}"}
    )
    try:
        async with client_session(stack.pki, stack.port) as http:
            response = await http.post(
                "https://api.openai.com/v1/chat/completions", json=CHAT, headers=BEARER
            )
            body = await response.json()
            passthrough = await http.get("https://api.openai.com/v1/models", headers=BEARER)
    finally:
        await stack.stop()
    assert response.status == 508
    assert body["error"]["code"] == "loop_detected"
    assert f"127.0.0.1 port {port}" in body["error"]["message"]
    assert passthrough.status == 508


async def test_unhandled_path_passes_through_unchanged(stack: Stack) -> None:
    raw = b'{"model": "text-embedding-3-small",  "input": ["a b", "c"], "extra_field": 1}'
    async with client_session(stack.pki, stack.port) as http:
        response = await http.post(
            "https://api.openai.com/v1/embeddings?trace=1",
            data=raw,
            headers={**BEARER, "Content-Type": "application/json", "x-custom": "kept"},
        )
        body = await response.json()
    assert response.status == 200
    assert body["object"] == "list"
    [recorded] = [r for r in stack.openai.requests if r.path == "/v1/embeddings"]
    assert recorded.body == orjson.loads(raw)
    assert recorded.query == {"trace": "1"}
    assert recorded.headers["x-custom"] == "kept"
    assert recorded.headers["authorization"] == _sha256(f"Bearer {CALLER_KEY}")
    assert recorded.headers["x-smartflow-hop"] == "gw-test"


async def test_extra_host_passthrough_gets_policy(tmp_path: Path) -> None:
    # An Azure OpenAI resource host: its paths are not routed by the gateway, so they pass
    # through, and the chat body in them still goes through the request policy.
    azure = "myresource.openai.azure.com"
    pki = make_pki(tmp_path / "pki")
    runner, port, records, cert, key = await start_recording_upstream(pki, azure, tmp_path)
    stack = await start_stack(
        tmp_path / "stack",
        host_overrides={azure: {"dialect": "openai", "addresses": [f"127.0.0.1:{port}"]}},
        extra_certificates=[{"cert_file": str(cert), "key_file": str(key)}],
        reuse_pki=pki,
    )
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "mail a@example.com"}]}
    try:
        async with client_session(stack.pki, stack.port) as http:
            response = await http.post(
                f"https://{azure}/openai/deployments/gpt-4o/chat/completions?api-version=v1",
                json=body,
                headers={"api-key": CALLER_KEY},
            )
            binary = await http.put(
                f"https://{azure}/openai/files/x", data=b"\x00\x01raw", headers={"api-key": "k"}
            )
    finally:
        await stack.stop()
        await runner.cleanup()
    assert response.status == 200
    assert binary.status == 200
    chat, upload = records
    assert chat[1] == "/openai/deployments/gpt-4o/chat/completions?api-version=v1"
    assert b"a@example.com" not in chat[2]
    assert b"[EMAIL]" in chat[2]
    assert upload == ("PUT", "/openai/files/x", b"\x00\x01raw")


async def test_models_answer_per_host(stack: Stack) -> None:
    async with client_session(stack.pki, stack.port) as http:
        openai_models = await (
            await http.get("https://api.openai.com/v1/models", headers=BEARER)
        ).json()
        anthropic_models = await (
            await http.get("https://api.anthropic.com/v1/models", headers=ANTHROPIC_HEADERS)
        ).json()
    assert openai_models["object"] == "list"
    assert "has_more" in anthropic_models
    assert anthropic_models["data"][0]["type"] == "model"


async def test_host_not_intercepted_gets_421(stack: Stack) -> None:
    async with client_session(stack.pki, stack.port) as http:
        response = await http.get(
            "https://api.openai.com/v1/models", headers={**BEARER, "Host": "example.com"}
        )
        body = await response.json()
    assert response.status == 421
    assert "example.com" in body["error"]["message"]


async def test_unknown_server_name_fails_handshake(stack: Stack) -> None:
    context = ssl.create_default_context(cafile=str(stack.pki.ca_file))
    context.check_hostname = False
    async with httpx.AsyncClient(verify=context) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(
                f"https://127.0.0.1:{stack.port}/v1/models",
                extensions={"sni_hostname": "unknown.example.com"},
            )


async def test_missing_key_is_401_in_dialect(stack: Stack) -> None:
    async with client_session(stack.pki, stack.port) as http:
        response = await http.post(
            "https://api.anthropic.com/v1/messages",
            json={"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": []},
            headers={"anthropic-version": "2023-06-01"},
        )
        body = await response.json()
    assert response.status == 401
    assert body["error"]["type"] == "authentication_error"


async def test_caller_key_rejected_upstream_is_401(stack: Stack) -> None:
    async with client_session(stack.pki, stack.port) as http:
        response = await http.post(
            "https://api.openai.com/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": "Bearer sk-wrong-key"},
        )
        body = await response.json()
    assert response.status == 401
    assert "Check the provider key configured" not in body["error"]["message"]


async def test_unknown_caller_rejected_when_configured(tmp_path: Path) -> None:
    mapped = identity_hash(SALT.encode(), "sk-someone-else")
    stack = await start_stack(
        tmp_path,
        identity={"unknown_callers": "reject", "mappings": [{"identity": mapped, "team": "a"}]},
    )
    try:
        async with client_session(stack.pki, stack.port) as http:
            response = await http.post(
                "https://api.openai.com/v1/chat/completions", json=CHAT, headers=BEARER
            )
            body = await response.json()
    finally:
        await stack.stop()
    assert response.status == 401
    assert identity_hash(SALT.encode(), CALLER_KEY)[:16] in body["error"]["message"]
    assert not stack.openai.requests


async def test_organisation_key_replaces_caller_key(tmp_path: Path) -> None:
    mapped = identity_hash(SALT.encode(), CALLER_KEY)
    stack = await start_stack(
        tmp_path,
        environ={"ORG_ANTHROPIC": "sk-org-anthropic"},
        host_overrides={
            "api.anthropic.com": {
                "identity": "organisation",
                "organisation_key_env": "ORG_ANTHROPIC",
            }
        },
        identity={"mappings": [{"identity": mapped, "team": "research", "user": "jane"}]},
    )
    try:
        async with client_session(stack.pki, stack.port) as http:
            response = await http.post(
                "https://api.anthropic.com/v1/messages",
                json={
                    "model": "claude-sonnet-4-5",
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": "Hi"}],
                },
                headers=ANTHROPIC_HEADERS,
            )
        events = await stack.usage_events()
    finally:
        await stack.stop()
    assert response.status == 200
    [recorded] = stack.anthropic.requests
    assert recorded.headers["x-api-key"] == _sha256("sk-org-anthropic")
    [event] = events
    assert event.team == "research"
    assert event.user == "jane"
    assert event.identity == mapped


async def test_smartflow_key_mode(tmp_path: Path) -> None:
    stack = await start_stack(
        tmp_path, host_overrides={"api.openai.com": {"identity": "smartflow_key"}}
    )
    try:
        async with client_session(stack.pki, stack.port) as http:
            missing = await http.post(
                "https://api.openai.com/v1/chat/completions", json=CHAT, headers=BEARER
            )
            served = await http.post(
                "https://api.openai.com/v1/chat/completions",
                json=CHAT,
                headers={**BEARER, "x-smartflow-key": VIRTUAL_KEY},
            )
    finally:
        await stack.stop()
    assert missing.status == 401
    assert "x-smartflow-key" in (await missing.json())["error"]["message"]
    assert served.status == 200
    [recorded] = stack.openai.requests
    assert "x-smartflow-key" not in recorded.headers
    assert recorded.headers["authorization"] == _sha256(f"Bearer {CALLER_KEY}")


async def test_http2_chat_and_stream(stack: Stack) -> None:
    context = ssl.create_default_context(cafile=str(stack.pki.ca_file))
    base = f"https://127.0.0.1:{stack.port}"
    sni = {"sni_hostname": "api.openai.com"}
    headers = {**BEARER, "Host": "api.openai.com"}
    async with httpx.AsyncClient(http2=True, verify=context) as client:
        whole = await client.post(
            base + "/v1/chat/completions", json=CHAT, headers=headers, extensions=sni
        )
        async with client.stream(
            "POST",
            base + "/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers=headers,
            extensions=sni,
        ) as response:
            streamed = b"".join([chunk async for chunk in response.aiter_bytes()])
            stream_version = response.http_version
        models = await client.get(base + "/v1/models", headers=headers, extensions=sni)
    assert whole.http_version == "HTTP/2"
    assert whole.status_code == 200
    assert whole.json()["choices"][0]["message"]["content"]
    assert stream_version == "HTTP/2"
    assert streamed.rstrip().endswith(b"data: [DONE]")
    assert models.status_code == 200
    assert models.json()["object"] == "list"
