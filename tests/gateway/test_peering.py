"""Linked routing between two gateways of different sites, judged by the official SDKs.

Two in-process gateways listen on real sockets: ``onprem-1`` (site on-prem) calls an
OpenAI simulator, ``cloud-1`` (site cloud) a Gemini simulator. Each forwards the models of
the other site to the other gateway.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from smartflow.auth.keys import hash_key
from smartflow.config.schema import parse_config
from smartflow.core.errors import ConfigError
from smartflow.gateway.app import GATEWAY_KEY, RunningGateway, build_app, start_gateway
from smartflow.policy.documents import parse_documents
from smartflow.policy.engine import compile_policies
from smartflow.providers.peer import (
    PEER_CALLER_HEADER,
    PEER_DEPLOYMENT_HEADER,
    PEER_HOP_HEADER,
    PEER_TOKEN_HEADER,
)
from smartflow.sim.gemini import GeminiSimulator
from smartflow.sim.openai import OpenAISimulator
from tests.conftest import PROVIDER_KEY, VIRTUAL_KEY
from tests.gateway.clients import anthropic_chat, openai_chat

ONPREM_TOKEN = "peer-token-onprem-" + "1" * 32
CLOUD_TOKEN = "peer-token-cloud-" + "2" * 32
STRICT_KEY = "sk-sf-strict-test-0123456789abcdef"
CLOUD_KEY = "sk-sf-cloud-test-0123456789abcdef"

RESIDENCY = """\
apiVersion: smartflow/v1
kind: Policy
metadata: {name: residency}
spec:
  compliance:
    rules: [{label: confidential, allowed_sites: [on-prem]}]
"""

BLOCK_WORD = """\
apiVersion: smartflow/v1
kind: Policy
metadata: {name: cloud-words}
spec:
  content:
    deny: [{name: cloud-secret, words: [forbidden-at-cloud]}]
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _common() -> dict[str, Any]:
    return {
        "retry": {"attempts_per_deployment": 1, "backoff_initial_s": 0.01},
        "timeouts": {"connect_s": 2, "read_s": 5},
    }


def onprem_config(openai_url: str, cloud_url: str) -> dict[str, Any]:
    gemini_at_cloud = {"provider": "gemini", "model": "gemini-2.5-flash", "site": "cloud"}
    return {
        **_common(),
        "server": {"instance": "onprem-1", "site": "on-prem", "access_log": False},
        "providers": {
            "openai": {
                "type": "openai",
                "base_url": openai_url + "/v1",
                "api_key_env": "TEST_PROVIDER_KEY",
            },
            # Only the cloud calls Gemini, so its key is not set here.
            "gemini": {"type": "gemini", "api_key_env": "GEMINI_KEY_NOT_HERE"},
        },
        "models": {
            "gpt-4o": [{"provider": "openai", "model": "gpt-4o"}],
            "gemini-2.5-flash": [gemini_at_cloud],
            "mixed": [gemini_at_cloud, {"provider": "openai", "model": "gpt-4o-mini"}],
            "ping-pong": [gemini_at_cloud],
        },
        "keys": [
            {"name": "test", "sha256": hash_key(VIRTUAL_KEY), "team": "qa", "user": "tester"},
            {
                "name": "strict",
                "sha256": hash_key(STRICT_KEY),
                "team": "qa",
                "strict_params": True,
            },
        ],
        "peering": {
            "sites": {"cloud": {"url": cloud_url, "token_env": "PEER_TOKEN"}},
            "accept": [{"name": "cloud-1", "sha256": hash_key(CLOUD_TOKEN)}],
        },
    }


def cloud_config(gemini_url: str, onprem_url: str) -> dict[str, Any]:
    openai_at_onprem = {"provider": "openai", "model": "gpt-4o", "site": "on-prem"}
    return {
        **_common(),
        "server": {"instance": "cloud-1", "site": "cloud", "access_log": False},
        "providers": {
            "gemini": {"type": "gemini", "base_url": gemini_url, "api_key_env": "TEST_GEMINI_KEY"},
            "openai": {"type": "openai", "api_key_env": "OPENAI_KEY_NOT_HERE"},
        },
        "models": {
            "gemini-2.5-flash": [{"provider": "gemini", "model": "gemini-2.5-flash"}],
            "gpt-4o": [openai_at_onprem],
            # The peer serves a forwarded request under the same public model name.
            "mixed": [{"provider": "gemini", "model": "gemini-2.5-flash"}, openai_at_onprem],
            # Misconfigured on purpose: each site thinks the other one serves it.
            "ping-pong": [openai_at_onprem],
        },
        # The cloud does not know the on-prem callers' keys: their identity arrives
        # from the peer.
        "keys": [{"name": "cloud-app", "sha256": hash_key(CLOUD_KEY), "team": "cloud-team"}],
        "peering": {
            "sites": {"on-prem": {"url": onprem_url, "token_env": "PEER_TOKEN"}},
            "accept": [{"name": "onprem-1", "sha256": hash_key(ONPREM_TOKEN)}],
        },
    }


@dataclass
class Sites:
    onprem: RunningGateway
    cloud: RunningGateway
    openai: OpenAISimulator
    gemini: GeminiSimulator

    def set_policy(self, gateway: RunningGateway, text: str) -> None:
        gateway.runner.app[GATEWAY_KEY].set_policy(compile_policies(parse_documents(text)))


@pytest.fixture
async def sites() -> AsyncIterator[Sites]:
    openai_sim = OpenAISimulator(api_keys=[PROVIDER_KEY])
    gemini_sim = GeminiSimulator(api_keys=["gemini-test-key"])
    openai_url = await openai_sim.start()
    gemini_url = await gemini_sim.start()
    onprem_port, cloud_port = _free_port(), _free_port()
    onprem_url = f"http://127.0.0.1:{onprem_port}"
    cloud_url = f"http://127.0.0.1:{cloud_port}"
    onprem_app = build_app(
        parse_config(onprem_config(openai_url, cloud_url)),
        environ={"TEST_PROVIDER_KEY": PROVIDER_KEY, "PEER_TOKEN": ONPREM_TOKEN},
    )
    cloud_app = build_app(
        parse_config(cloud_config(gemini_url, onprem_url)),
        environ={"TEST_GEMINI_KEY": "gemini-test-key", "PEER_TOKEN": CLOUD_TOKEN},
    )
    onprem = await start_gateway(onprem_app, "127.0.0.1", onprem_port)
    cloud = await start_gateway(cloud_app, "127.0.0.1", cloud_port)
    try:
        yield Sites(onprem, cloud, openai_sim, gemini_sim)
    finally:
        await onprem.stop()
        await cloud.stop()
        await openai_sim.stop()
        await gemini_sim.stop()


def _messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# --- forwarding in both dialects --------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("ingress", ["openai", "anthropic"])
async def test_remote_model_forwarded(sites: Sites, ingress: str, stream: bool) -> None:
    chat = openai_chat if ingress == "openai" else anthropic_chat
    outcome = await chat(
        sites.onprem.url, "gemini-2.5-flash", _messages("hi from on-prem"), stream=stream
    )
    assert outcome.text.startswith("Hello from gemini-2.5-flash")
    assert outcome.text.endswith("You said: hi from on-prem")
    assert outcome.finish == "stop"
    assert outcome.output_tokens > 0
    assert len(sites.gemini.requests) == 1
    assert len(sites.openai.requests) == 0


@pytest.mark.parametrize("ingress", ["openai", "anthropic"])
async def test_reverse_direction_forwarded(sites: Sites, ingress: str) -> None:
    # The cloud does not know VIRTUAL_KEY, so use its own key there.
    client_key = CLOUD_KEY
    if ingress == "openai":
        client = openai.AsyncOpenAI(
            base_url=sites.cloud.url + "/v1", api_key=client_key, max_retries=0
        )
        reply = await client.chat.completions.create(model="gpt-4o", messages=_messages("hi"))
        text = reply.choices[0].message.content or ""
    else:
        claude = anthropic.AsyncAnthropic(
            base_url=sites.cloud.url, api_key=client_key, max_retries=0
        )
        message = await claude.messages.create(
            model="gpt-4o", max_tokens=50, messages=_messages("hi")
        )
        block = message.content[0]
        assert block.type == "text"
        text = block.text
    assert text.startswith("Hello from gpt-4o")
    assert len(sites.openai.requests) == 1
    assert len(sites.gemini.requests) == 0


async def test_passthrough_keeps_unknown_fields(sites: Sites) -> None:
    """The peer receives the caller's own body, so a field unknown to the gateway survives."""
    async with aiohttp.ClientSession() as http:
        async with http.post(
            sites.onprem.url + "/v1/chat/completions",
            json={
                "model": "gemini-2.5-flash",
                "messages": _messages("hi"),
                "metadata": {"trace": "abc"},
            },
            headers={"Authorization": f"Bearer {VIRTUAL_KEY}"},
        ) as reply:
            assert reply.status == 200, await reply.text()
            assert reply.headers["x-smartflow-deployment"] == "gemini/gemini-2.5-flash"


async def test_models_list_includes_remote(sites: Sites) -> None:
    client = openai.AsyncOpenAI(base_url=sites.onprem.url + "/v1", api_key=VIRTUAL_KEY)
    models = {model.id: model.owned_by async for model in client.models.list()}
    assert models["gemini-2.5-flash"] == "gemini"
    assert models["gpt-4o"] == "openai"


# --- the caller's identity ------------------------------------------------------------


async def test_identity_reaches_peer(sites: Sites, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smartflow.gateway.peering")
    await openai_chat(sites.onprem.url, "gemini-2.5-flash", _messages("hi"), stream=False)
    lines = [r.getMessage() for r in caplog.records if "forwarded by peer" in r.getMessage()]
    assert len(lines) == 1
    assert "peer onprem-1" in lines[0]
    assert "key test of team qa" in lines[0]


async def test_strict_key_enforced_at_peer(sites: Sites) -> None:
    """The key's strict flag travels with the request: the peer rejects a changed parameter."""
    client = openai.AsyncOpenAI(
        base_url=sites.onprem.url + "/v1", api_key=STRICT_KEY, max_retries=0
    )
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="gemini-2.5-flash", messages=_messages("hi"), max_tokens=1_000_000
        )
    assert "max_tokens" in str(caught.value)
    assert len(sites.gemini.requests) == 0


async def test_caller_header_ignored_without_token(sites: Sites) -> None:
    """An ordinary caller cannot claim another identity with the caller header."""
    claimed = '{"key":"test","team":"qa","user":null,"labels":[],"strict_params":false}'
    async with aiohttp.ClientSession() as http:
        async with http.post(
            sites.cloud.url + "/v1/chat/completions",
            json={"model": "gemini-2.5-flash", "messages": _messages("hi")},
            headers={PEER_CALLER_HEADER: claimed, "Authorization": "Bearer sk-sf-unknown"},
        ) as reply:
            assert reply.status == 401
            body = await reply.json()
    assert "Invalid API key" in body["error"]["message"]
    assert len(sites.gemini.requests) == 0


async def test_wrong_peer_token_rejected(sites: Sites) -> None:
    claimed = '{"key":"test","team":"qa"}'
    claude = anthropic.AsyncAnthropic(
        base_url=sites.cloud.url,
        api_key="ignored",
        max_retries=0,
        default_headers={PEER_TOKEN_HEADER: "not-the-token", PEER_CALLER_HEADER: claimed},
    )
    with pytest.raises(anthropic.AuthenticationError) as caught:
        await claude.messages.create(
            model="gemini-2.5-flash", max_tokens=20, messages=_messages("hi")
        )
    assert "Invalid peer credential" in str(caught.value)
    assert len(sites.gemini.requests) == 0


async def test_invalid_caller_header_rejected(sites: Sites) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            sites.cloud.url + "/v1/chat/completions",
            json={"model": "gemini-2.5-flash", "messages": _messages("hi")},
            headers={PEER_TOKEN_HEADER: ONPREM_TOKEN, PEER_CALLER_HEADER: '{"key": 1}'},
        ) as reply:
            assert reply.status == 400
            body = await reply.json()
    assert PEER_CALLER_HEADER in body["error"]["message"]


# --- loops and failures -----------------------------------------------------------------


async def test_forwarded_request_not_forwarded_again(sites: Sites) -> None:
    client = openai.AsyncOpenAI(
        base_url=sites.onprem.url + "/v1", api_key=VIRTUAL_KEY, max_retries=0
    )
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="ping-pong", messages=_messages("hi"))
    assert "never forwarded again" in str(caught.value)
    assert len(sites.openai.requests) == 0
    assert len(sites.gemini.requests) == 0


async def test_hop_header_limits_to_local(sites: Sites) -> None:
    """A request marked as forwarded is served only by the receiving site's deployments."""
    async with aiohttp.ClientSession() as http:
        async with http.post(
            sites.cloud.url + "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": _messages("hi")},
            headers={
                PEER_TOKEN_HEADER: ONPREM_TOKEN,
                PEER_CALLER_HEADER: '{"key":"test","team":"qa"}',
                PEER_HOP_HEADER: "onprem-1",
                PEER_DEPLOYMENT_HEADER: "openai/gpt-4o",
            },
        ) as reply:
            assert reply.status == 404
    assert len(sites.openai.requests) == 0


async def test_unreachable_peer_reported(sites: Sites) -> None:
    await sites.cloud.stop()
    claude = anthropic.AsyncAnthropic(base_url=sites.onprem.url, api_key=VIRTUAL_KEY, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as caught:
        await claude.messages.create(
            model="gemini-2.5-flash", max_tokens=20, messages=_messages("hi")
        )
    assert caught.value.status_code == 502
    assert "the instance serving site cloud" in str(caught.value)


# --- policy runs once, at the entry instance ----------------------------------------------


@pytest.mark.parametrize("ingress", ["openai", "anthropic"])
async def test_residency_rejects_forwarding(sites: Sites, ingress: str) -> None:
    sites.set_policy(sites.onprem, RESIDENCY)
    headers = {"x-smartflow-classification": "confidential"}
    if ingress == "openai":
        client = openai.AsyncOpenAI(
            base_url=sites.onprem.url + "/v1", api_key=VIRTUAL_KEY, max_retries=0
        )
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await client.chat.completions.create(
                model="gemini-2.5-flash", messages=_messages("hi"), extra_headers=headers
            )
        error: Exception = caught.value
    else:
        claude = anthropic.AsyncAnthropic(
            base_url=sites.onprem.url, api_key=VIRTUAL_KEY, max_retries=0
        )
        with pytest.raises(anthropic.PermissionDeniedError) as caught_anthropic:
            await claude.messages.create(
                model="gemini-2.5-flash",
                max_tokens=20,
                messages=_messages("hi"),
                extra_headers=headers,
            )
        error = caught_anthropic.value
    assert "confidential" in str(error)
    assert "gemini/gemini-2.5-flash at site cloud" in str(error)
    assert len(sites.gemini.requests) == 0


async def test_residency_keeps_local_fallback(sites: Sites) -> None:
    sites.set_policy(sites.onprem, RESIDENCY)
    client = openai.AsyncOpenAI(
        base_url=sites.onprem.url + "/v1", api_key=VIRTUAL_KEY, max_retries=0
    )
    reply = await client.chat.completions.with_raw_response.create(
        model="mixed",
        messages=_messages("hi"),
        extra_headers={"x-smartflow-classification": "confidential"},
    )
    assert reply.headers["x-smartflow-deployment"] == "openai/gpt-4o-mini"
    unlabelled = await client.chat.completions.with_raw_response.create(
        model="mixed", messages=_messages("hi")
    )
    assert unlabelled.headers["x-smartflow-deployment"] == "gemini/gemini-2.5-flash"
    assert len(sites.gemini.requests) == 1


async def test_peer_skips_its_policy(sites: Sites) -> None:
    sites.set_policy(sites.cloud, BLOCK_WORD)
    text = "forbidden-at-cloud"
    # Entering at the cloud, the cloud's policy applies.
    claude = anthropic.AsyncAnthropic(base_url=sites.cloud.url, api_key=CLOUD_KEY, max_retries=0)
    with pytest.raises(anthropic.BadRequestError):
        await claude.messages.create(
            model="gemini-2.5-flash", max_tokens=20, messages=_messages(text)
        )
    # Entering on-prem, only the on-prem policy applies, once.
    outcome = await anthropic_chat(
        sites.onprem.url, "gemini-2.5-flash", _messages(text), stream=False
    )
    assert outcome.text.endswith(f"You said: {text}")
    evaluator = sites.cloud.runner.app[GATEWAY_KEY].policy
    assert evaluator is not None
    assert evaluator.counters.requests == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_tokenized_value_restored_once(sites: Sites, stream: bool) -> None:
    """The entry instance tokenizes, the peer passes the token through, and the entry
    instance restores the value in the reply."""
    sites.set_policy(
        sites.onprem,
        "apiVersion: smartflow/v1\nkind: Policy\nmetadata: {name: tok}\n"
        "spec:\n  entities:\n    - {type: EMAIL, action: tokenize}\n",
    )
    sites.set_policy(
        sites.cloud,
        "apiVersion: smartflow/v1\nkind: Policy\nmetadata: {name: red}\n"
        "spec:\n  entities:\n    - {type: all, action: redact}\n",
    )
    email = "jane.doe@example.com"
    outcome = await openai_chat(
        sites.onprem.url, "gemini-2.5-flash", _messages(f"mail {email}"), stream=stream
    )
    assert outcome.text.endswith(f"You said: mail {email}")
    sent = str(sites.gemini.requests[-1].body)
    assert email not in sent
    onprem_policy = sites.onprem.runner.app[GATEWAY_KEY].policy
    cloud_policy = sites.cloud.runner.app[GATEWAY_KEY].policy
    assert onprem_policy is not None
    assert cloud_policy is not None
    assert onprem_policy.counters.requests == 1
    assert cloud_policy.counters.requests == 0


# --- configuration ----------------------------------------------------------------------


def test_missing_peer_token_is_config_error() -> None:
    config = parse_config(onprem_config("http://127.0.0.1:9", "http://127.0.0.1:9"))
    with pytest.raises(ConfigError) as caught:
        build_app(config, environ={"TEST_PROVIDER_KEY": PROVIDER_KEY})
    assert "peering.sites.cloud.token_env" in str(caught.value)
    assert "PEER_TOKEN is not set" in str(caught.value)


def test_own_site_as_peer_rejected() -> None:
    data = onprem_config("http://127.0.0.1:9", "http://127.0.0.1:9")
    data["peering"]["sites"]["on-prem"] = {"url": "http://127.0.0.1:9", "token_env": "X"}
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert "own site" in str(caught.value)


def test_peer_needs_one_token_source() -> None:
    data = onprem_config("http://127.0.0.1:9", "http://127.0.0.1:9")
    data["peering"]["sites"]["cloud"] = {"url": "http://127.0.0.1:9"}
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert "token_env" in str(caught.value)


async def test_rejected_peer_credential_reported(sites: Sites) -> None:
    """An entry instance whose peer credential the peer rejects reports a gateway error."""
    config = parse_config(onprem_config(sites.openai.base_url, sites.cloud.url))
    app = build_app(
        config, environ={"TEST_PROVIDER_KEY": PROVIDER_KEY, "PEER_TOKEN": "not-accepted"}
    )
    misconfigured = await start_gateway(app, "127.0.0.1", 0)
    try:
        client = openai.AsyncOpenAI(
            base_url=misconfigured.url + "/v1", api_key=VIRTUAL_KEY, max_retries=0
        )
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(
                model="gemini-2.5-flash", messages=_messages("hi")
            )
    finally:
        await misconfigured.stop()
    assert caught.value.status_code == 502
    assert "rejected this instance's peer credential (HTTP 401)" in str(caught.value)
    assert len(sites.gemini.requests) == 0
