"""Linked routing between two gateways of different sites, judged by the official SDKs.

Two in-process gateways listen on real sockets: ``onprem-1`` (site on-prem) calls an
OpenAI simulator, ``cloud-1`` (site cloud) a Gemini simulator. Each forwards the models of
the other site to the other gateway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from smartflow.auth.keys import hash_key
from smartflow.config.schema import parse_config
from smartflow.core.errors import ConfigError
from smartflow.core.types import Usage
from smartflow.gateway.app import (
    GATEWAY_KEY,
    USAGE_QUEUE_KEY,
    RunningGateway,
    build_app,
    start_gateway,
)
from smartflow.policy.documents import parse_documents
from smartflow.policy.engine import compile_policies
from smartflow.providers.peer import (
    PEER_CALLER_HEADER,
    PEER_DEPLOYMENT_HEADER,
    PEER_HOP_HEADER,
    PEER_TOKEN_HEADER,
    PEER_USAGE_HEADER,
)
from smartflow.sim.base import Fault
from smartflow.sim.gemini import GeminiSimulator
from smartflow.sim.openai import OpenAISimulator
from smartflow.usage.events import UsageEvent
from smartflow.usage.prices import PriceCatalog, format_usd
from tests.conftest import PROVIDER_KEY, VIRTUAL_KEY, free_port
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
            "local-first": [{"provider": "openai", "model": "gpt-4o-mini"}, gemini_at_cloud],
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
            "local-first": [{"provider": "gemini", "model": "gemini-2.5-flash"}],
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


@asynccontextmanager
async def running_sites(state_root: Path | None = None) -> AsyncIterator[Sites]:
    """Start both simulators and both gateways; with ``state_root``, both gateways record
    usage events in queues under it."""
    openai_sim = OpenAISimulator(api_keys=[PROVIDER_KEY])
    gemini_sim = GeminiSimulator(api_keys=["gemini-test-key"])
    openai_url = await openai_sim.start()
    gemini_url = await gemini_sim.start()
    onprem_port, cloud_port = free_port(), free_port()
    onprem_url = f"http://127.0.0.1:{onprem_port}"
    cloud_url = f"http://127.0.0.1:{cloud_port}"
    onprem_data = onprem_config(openai_url, cloud_url)
    cloud_data = cloud_config(gemini_url, onprem_url)
    if state_root is not None:
        for name, data in (("onprem", onprem_data), ("cloud", cloud_data)):
            data["usage"] = {"enabled": True}
            data["state_dir"] = str(state_root / name)
    onprem_app = build_app(
        parse_config(onprem_data),
        environ={"TEST_PROVIDER_KEY": PROVIDER_KEY, "PEER_TOKEN": ONPREM_TOKEN},
    )
    cloud_app = build_app(
        parse_config(cloud_data),
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


@pytest.fixture
async def sites() -> AsyncIterator[Sites]:
    async with running_sites() as running:
        yield running


@pytest.fixture
async def usage_sites(tmp_path: Path) -> AsyncIterator[Sites]:
    async with running_sites(tmp_path) as running:
        yield running


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
    # The caller learns which site failed, not the peer's address.
    assert sites.cloud.url.removeprefix("http://") not in str(caught.value)


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
            await client.chat.completions.create(model="gemini-2.5-flash", messages=_messages("hi"))
    finally:
        await misconfigured.stop()
    assert caught.value.status_code == 502
    assert "rejected this instance's peer credential (HTTP 401)" in str(caught.value)
    assert len(sites.gemini.requests) == 0


# --- usage: one event per request ---------------------------------------------------------


async def queued_events(gateway: RunningGateway) -> list[UsageEvent]:
    queue = gateway.runner.app[USAGE_QUEUE_KEY]
    await queue.flush()
    return [UsageEvent.from_json(item.body) for item in await queue.read_batch(1000)]


async def settled_events(sites: Sites, expected: int) -> tuple[list[UsageEvent], list[UsageEvent]]:
    """Return the events queued on-prem and at the cloud, once ``expected`` are there in
    all and a pause has given any extra event the time to arrive."""
    async with asyncio.timeout(5):
        while True:
            total = len(await queued_events(sites.onprem)) + len(await queued_events(sites.cloud))
            if total >= expected:
                break
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    return await queued_events(sites.onprem), await queued_events(sites.cloud)


async def chat_with_id(
    url: str,
    api_key: str,
    ingress: str,
    model: str,
    text: str,
    *,
    stream: bool,
    headers: dict[str, str] | None = None,
) -> tuple[str, str]:
    """Send one chat with an official SDK; return the reply text and the request id."""
    reply = ""
    if ingress == "openai":
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=_messages(text), stream=stream, extra_headers=headers
        )
        request_id = raw.headers["x-request-id"]
        if stream:
            async for chunk in raw.parse():  # type: ignore[union-attr]
                if chunk.choices and chunk.choices[0].delta.content:
                    reply += chunk.choices[0].delta.content
        else:
            reply = raw.parse().choices[0].message.content or ""  # type: ignore[union-attr]
        return reply, request_id
    claude = anthropic.AsyncAnthropic(base_url=url, api_key=api_key, max_retries=0)
    raw_message = await claude.messages.with_raw_response.create(
        model=model, max_tokens=50, messages=_messages(text), stream=stream, extra_headers=headers
    )
    request_id = raw_message.headers["request-id"]
    if stream:
        async for event in await raw_message.parse():  # type: ignore[union-attr]
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                reply += event.delta.text
    else:
        block = (await raw_message.parse()).content[0]  # type: ignore[union-attr]
        assert block.type == "text"
        reply = block.text
    return reply, request_id


def expected_cost(event: UsageEvent) -> str:
    """Price the event's tokens with the default catalogue, as the serving instance must."""
    assert event.provider_kind is not None
    tokens = event.tokens
    usage = Usage(
        input_tokens=tokens.input,
        output_tokens=tokens.output,
        cached_input_tokens=tokens.cached_input,
        cache_write_tokens=tokens.cache_write,
        reasoning_tokens=tokens.reasoning,
    )
    cost = PriceCatalog.default().cost(event.provider_kind, [event.model_served], usage)
    assert cost.usd is not None, f"no catalogue price for {event.model_served}"
    return format_usd(cost.usd)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("ingress", ["openai", "anthropic"])
async def test_forwarded_request_one_event(usage_sites: Sites, ingress: str, stream: bool) -> None:
    reply, request_id = await chat_with_id(
        usage_sites.onprem.url, VIRTUAL_KEY, ingress, "gemini-2.5-flash", "hi", stream=stream
    )
    assert reply.endswith("You said: hi")
    onprem, cloud = await settled_events(usage_sites, 1)
    assert onprem == []
    assert len(cloud) == 1
    event = cloud[0]
    assert event.request_id == request_id
    assert event.instance == "cloud-1"
    assert event.site == "cloud"
    assert event.entry_instance == "onprem-1"
    assert event.entry_site == "on-prem"
    assert event.dialect == ingress
    assert event.stream is stream
    assert (event.key_name, event.team, event.user) == ("test", "qa", "tester")
    assert event.provider == "gemini"
    assert event.provider_kind == "gemini"
    assert event.deployment == "gemini/gemini-2.5-flash"
    assert event.model_requested == "gemini-2.5-flash"
    assert event.usage_source == "provider"
    assert event.tokens.input > 0
    assert event.tokens.output > 0
    assert event.price_missing is False
    assert event.cost_usd == expected_cost(event)
    assert event.status == 200
    assert event.error_type is None
    assert event.finish_reason == "stop"
    assert [a.deployment for a in event.attempts] == ["gemini/gemini-2.5-flash"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("ingress", ["openai", "anthropic"])
async def test_reverse_forwarded_one_event(usage_sites: Sites, ingress: str, stream: bool) -> None:
    reply, request_id = await chat_with_id(
        usage_sites.cloud.url, CLOUD_KEY, ingress, "gpt-4o", "hi", stream=stream
    )
    assert reply.startswith("Hello from gpt-4o")
    onprem, cloud = await settled_events(usage_sites, 1)
    assert cloud == []
    assert len(onprem) == 1
    event = onprem[0]
    assert event.request_id == request_id
    assert event.instance == "onprem-1"
    assert event.entry_instance == "cloud-1"
    assert event.entry_site == "cloud"
    assert (event.key_name, event.team, event.user) == ("cloud-app", "cloud-team", None)
    assert event.provider == "openai"
    assert event.deployment == "openai/gpt-4o"
    assert event.tokens.output > 0
    assert event.cost_usd == expected_cost(event)
    assert event.stream is stream


async def test_local_request_event_unchanged(usage_sites: Sites) -> None:
    """A request served where it entered records its event there, with no entry fields."""
    _, request_id = await chat_with_id(
        usage_sites.onprem.url, VIRTUAL_KEY, "openai", "gpt-4o", "hi", stream=False
    )
    onprem, cloud = await settled_events(usage_sites, 1)
    assert cloud == []
    assert [e.request_id for e in onprem] == [request_id]
    assert onprem[0].entry_instance is None
    assert onprem[0].entry_site is None
    assert onprem[0].cost_usd == expected_cost(onprem[0])


@pytest.mark.parametrize("stream", [False, True])
async def test_forwarded_event_has_entry_policy(usage_sites: Sites, stream: bool) -> None:
    """The peer's event carries the entry instance's decision as names and counts only."""
    usage_sites.set_policy(
        usage_sites.onprem,
        "apiVersion: smartflow/v1\nkind: Policy\nmetadata: {name: tok}\n"
        "spec:\n  entities:\n    - {type: EMAIL, action: tokenize}\n",
    )
    email = "jane.doe@example.com"
    reply, request_id = await chat_with_id(
        usage_sites.onprem.url,
        VIRTUAL_KEY,
        "openai",
        "gemini-2.5-flash",
        f"mail {email} and {email.replace('jane', 'john')}",
        stream=stream,
    )
    assert email in reply
    onprem, cloud = await settled_events(usage_sites, 1)
    assert onprem == []
    assert len(cloud) == 1
    event = cloud[0]
    assert event.request_id == request_id
    assert event.policy is not None
    assert event.policy.policies == ["tok"]
    assert event.policy.request_entities == {"EMAIL": 2}
    assert event.policy.actions == {"EMAIL": "tokenize"}
    assert "example.com" not in event.to_json().decode()


async def test_peer_down_entry_records_event(usage_sites: Sites) -> None:
    await usage_sites.cloud.stop()
    client = openai.AsyncOpenAI(
        base_url=usage_sites.onprem.url + "/v1", api_key=VIRTUAL_KEY, max_retries=0
    )
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model="gemini-2.5-flash", messages=_messages("hi"))
    assert caught.value.status_code == 502
    request_id = caught.value.response.headers["x-request-id"]
    await asyncio.sleep(0.2)
    events = await queued_events(usage_sites.onprem)
    assert len(events) == 1
    event = events[0]
    assert event.request_id == request_id
    assert event.instance == "onprem-1"
    assert event.entry_instance is None
    assert event.status == 502
    assert event.error_type == "upstream_unavailable"
    assert event.key_name == "test"
    assert [(a.deployment, a.error) for a in event.attempts] == [
        ("gemini/gemini-2.5-flash", "upstream_unavailable")
    ]
    assert event.usage_source == "none"
    assert event.cost_usd is None


async def test_peer_error_recorded_once_at_entry(usage_sites: Sites) -> None:
    """The peer rejects the request (strict key), so only the entry instance records it."""
    client = openai.AsyncOpenAI(
        base_url=usage_sites.onprem.url + "/v1", api_key=STRICT_KEY, max_retries=0
    )
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(
            model="gemini-2.5-flash", messages=_messages("hi"), max_tokens=1_000_000
        )
    onprem, cloud = await settled_events(usage_sites, 1)
    assert cloud == []
    assert len(onprem) == 1
    assert onprem[0].status == 400
    assert onprem[0].key_name == "strict"
    assert onprem[0].error_type is not None


async def test_fallback_after_peer_error_one_event(usage_sites: Sites) -> None:
    """The peer's provider fails, the entry falls back to its own deployment: one event
    at the entry, with both attempts."""
    usage_sites.gemini.faults.append(Fault(status=503))
    _, request_id = await chat_with_id(
        usage_sites.onprem.url, VIRTUAL_KEY, "openai", "mixed", "hi", stream=False
    )
    onprem, cloud = await settled_events(usage_sites, 1)
    assert cloud == []
    assert len(onprem) == 1
    event = onprem[0]
    assert event.request_id == request_id
    assert event.provider == "openai"
    assert event.deployment == "openai/gpt-4o-mini"
    assert [a.deployment for a in event.attempts] == [
        "gemini/gemini-2.5-flash",
        "openai/gpt-4o-mini",
    ]
    assert event.fallbacks == 1
    assert event.cost_usd == expected_cost(event)


async def test_entry_attempts_reach_peer_event(usage_sites: Sites) -> None:
    """A local failure before forwarding shows in the peer's event as an earlier attempt."""
    usage_sites.openai.faults.append(Fault(status=503))
    _, request_id = await chat_with_id(
        usage_sites.onprem.url, VIRTUAL_KEY, "openai", "local-first", "hi", stream=True
    )
    onprem, cloud = await settled_events(usage_sites, 1)
    assert onprem == []
    assert len(cloud) == 1
    event = cloud[0]
    assert event.request_id == request_id
    assert [(a.deployment, a.status) for a in event.attempts] == [
        ("openai/gpt-4o-mini", 503),
        ("gemini/gemini-2.5-flash", None),
    ]
    assert event.fallbacks == 1


async def test_invalid_usage_header_rejected(usage_sites: Sites) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            usage_sites.cloud.url + "/v1/chat/completions",
            json={"model": "gemini-2.5-flash", "messages": _messages("hi")},
            headers={
                PEER_TOKEN_HEADER: ONPREM_TOKEN,
                PEER_CALLER_HEADER: '{"key":"test","team":"qa"}',
                PEER_USAGE_HEADER: '{"policy": {"request_entities": {"EMAIL": "two"}}}',
            },
        ) as reply:
            assert reply.status == 400
            body = await reply.json()
    assert PEER_USAGE_HEADER in body["error"]["message"]
    assert "policy.request_entities" in body["error"]["message"]
    assert len(usage_sites.gemini.requests) == 0
