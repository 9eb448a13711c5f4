"""The official SDKs, unmodified and on their default base URLs, reach the interception
listener because the host names resolve to it.

Each test runs in a child process inside a loopback-only network namespace (see
tests/transport/netns.py), where it also enters a mount namespace and bind-mounts a
hosts file that maps api.openai.com and api.anthropic.com to 127.0.0.1. The listener
serves port 443 there, the TLS simulators standing in for the real hosts listen on
127.0.0.2, and the SDKs trust the test CA through SSL_CERT_FILE.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import tempfile
from pathlib import Path

import anthropic
import openai

from smartflow.intercept.identity import identity_hash
from tests.intercept.stack import CALLER_KEY, HOSTS, SALT, Stack, start_stack
from tests.transport.netns import isolated

_CLONE_NEWNS = 0x00020000
EMAIL = "jane.doe@example.com"


def _redirect_hosts(directory: Path) -> None:
    """Give this process its own /etc/hosts that points the provider hosts at 127.0.0.1."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) failed")
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    hosts = directory / "hosts"
    hosts.write_text("127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {h}\n" for h in HOSTS))
    subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)
    for host in HOSTS:
        assert socket.gethostbyname(host) == "127.0.0.1", f"{host} is not redirected"


async def _start(directory: Path) -> Stack:
    _redirect_hosts(directory)
    os.chdir(directory)
    stack = await start_stack(directory, sim_host="127.0.0.2", listen_port=443)
    os.environ["SSL_CERT_FILE"] = str(stack.pki.ca_file)
    for variable in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        os.environ.pop(variable, None)
    return stack


@isolated
async def test_openai_sdk_default_url() -> None:
    with tempfile.TemporaryDirectory() as directory:
        stack = await _start(Path(directory))
        try:
            client = openai.AsyncOpenAI(api_key=CALLER_KEY, max_retries=0)
            assert str(client.base_url) == "https://api.openai.com/v1/"
            messages = [{"role": "user", "content": f"Write to {EMAIL} please"}]
            completion = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=messages,  # type: ignore[arg-type]
            )
            stream = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=messages,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
            await client.close()
            events = await stack.usage_events()
        finally:
            await stack.stop()

    assert completion.choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed
    bodies = [r.body for r in stack.openai.requests if r.path == "/v1/chat/completions"]
    assert len(bodies) == 2
    for body in bodies:
        assert EMAIL not in str(body)
        assert "[EMAIL]" in body["messages"][0]["content"]
    hop = {r.headers.get("x-smartflow-hop") for r in stack.openai.requests}
    assert hop == {"gw-test"}
    expected = identity_hash(SALT.encode(), CALLER_KEY)
    chat_events = [e for e in events if e.dialect == "openai"]
    assert len(chat_events) == 2
    assert {e.identity for e in chat_events} == {expected}
    assert {e.stream for e in chat_events} == {False, True}
    assert all(e.status == 200 for e in chat_events)


@isolated
async def test_anthropic_sdk_default_url() -> None:
    with tempfile.TemporaryDirectory() as directory:
        stack = await _start(Path(directory))
        try:
            client = anthropic.AsyncAnthropic(api_key=CALLER_KEY, max_retries=0)
            assert str(client.base_url) == "https://api.anthropic.com"
            messages = [{"role": "user", "content": f"Write to {EMAIL} please"}]
            message = await client.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=64,
                messages=messages,  # type: ignore[arg-type]
            )
            async with client.messages.stream(
                model="claude-sonnet-4-5",
                max_tokens=64,
                messages=messages,  # type: ignore[arg-type]
            ) as stream:
                streamed = "".join([text async for text in stream.text_stream])
            models = await client.models.list()
            await client.close()
            events = await stack.usage_events()
        finally:
            await stack.stop()

    assert message.content[0].type == "text"
    assert streamed
    assert [m.id for m in models.data]
    bodies = [r.body for r in stack.anthropic.requests if r.path == "/v1/messages"]
    assert len(bodies) == 2
    for body in bodies:
        assert EMAIL not in str(body)
        assert "[EMAIL]" in str(body["messages"][0]["content"])
    model_listings = [r for r in stack.anthropic.requests if r.path == "/v1/models"]
    assert len(model_listings) == 1
    expected = identity_hash(SALT.encode(), CALLER_KEY)
    chat_events = [e for e in events if e.dialect == "anthropic"]
    assert len(chat_events) == 2
    assert {e.identity for e in chat_events} == {expected}
    assert {e.stream for e in chat_events} == {False, True}
