"""Image URLs through a running gateway to the Bedrock simulator, fetched under the SSRF guard.

The official openai and anthropic SDKs send the requests. Every test that fetches runs
in a loopback-only network namespace (see netns.py), where 10.0.0.1 and
169.254.169.254 are loopback addresses with servers that must receive nothing.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
from aiohttp import web
from botocore.credentials import Credentials

from smartflow.auth.keys import hash_key
from smartflow.config.schema import GatewayConfig, parse_config
from smartflow.gateway.app import build_app, start_gateway
from smartflow.gateway.handlers import Gateway
from smartflow.gateway.upstream import Dispatcher
from smartflow.providers.bedrock import BedrockProvider
from smartflow.sim.anthropic import AnthropicSimulator
from smartflow.sim.base import Fault
from smartflow.sim.bedrock import BedrockSimulator
from smartflow.transport.fetch import ImageFetcher
from tests.conftest import VIRTUAL_KEY
from tests.gateway.clients import anthropic_chat, openai_chat
from tests.transport.imageserver import JPEG, PNG, ImageServer
from tests.transport.netns import isolated

# Invented credentials in the AWS key format, valid only for the simulators.
ACCESS_KEY_ID = "AKIDSMARTFLOWFETCH01"
SECRET_ACCESS_KEY = "smartflow/fetch-test/not-a-real-aws-key"
ANTHROPIC_KEY = "anthropic-sim-test-key"
REGION = "us-west-2"
SONNET = "anthropic.claude-3-5-sonnet-20241022-v2:0"
PROMPT = "What is in this picture?"
REPLY = f"Hello from {SONNET}. You said: {PROMPT} I see 1 image(s)."


def _dispatcher(app: web.Application) -> Dispatcher:
    for route in app.router.routes():
        owner = getattr(route.handler, "__self__", None)
        if isinstance(owner, Gateway):
            return owner.dispatcher
    raise AssertionError("the app has no gateway handler")


def _config(image_fetch: dict[str, Any], anthropic_url: str) -> GatewayConfig:
    return parse_config(
        {
            "server": {"access_log": False},
            # Placeholders: build_app uses the injected Bedrock adapters of the same names.
            "providers": {
                "bedrock": {"type": "openai"},
                "bedrock-invoke": {"type": "openai"},
                "anthropic": {
                    "type": "anthropic",
                    "base_url": anthropic_url,
                    "api_key_env": "ANTHROPIC_SIM_KEY",
                },
            },
            "models": {
                "claude": [{"provider": "bedrock", "model": SONNET}],
                "claude-invoke": [{"provider": "bedrock-invoke", "model": SONNET}],
                "claude-fallback": [
                    {"provider": "bedrock", "model": SONNET},
                    {"provider": "anthropic", "model": "claude-sonnet-4-5"},
                ],
            },
            "keys": [{"name": "test", "sha256": hash_key(VIRTUAL_KEY), "team": "qa"}],
            "retry": {
                "attempts_per_deployment": 2,
                "backoff_initial_s": 0.01,
                "backoff_max_s": 0.05,
            },
            "timeouts": {"connect_s": 2, "read_s": 5},
            "image_fetch": image_fetch,
        }
    )


@dataclass
class Stack:
    url: str
    bedrock: BedrockSimulator
    anthropic: AnthropicSimulator


@asynccontextmanager
async def gateway_stack(**image_fetch: Any) -> AsyncIterator[Stack]:
    """Run the Bedrock and Anthropic simulators and a gateway in front of them."""
    bedrock = BedrockSimulator(credentials={ACCESS_KEY_ID: SECRET_ACCESS_KEY}, region=REGION)
    anthropic_sim = AnthropicSimulator(api_keys=[ANTHROPIC_KEY])
    bedrock_url = await bedrock.start()
    anthropic_url = await anthropic_sim.start()

    credentials = Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY)
    providers = {
        "bedrock": BedrockProvider(
            "bedrock", region=REGION, credentials=credentials, endpoint_url=bedrock_url
        ),
        "bedrock-invoke": BedrockProvider(
            "bedrock-invoke",
            region=REGION,
            credentials=credentials,
            endpoint_url=bedrock_url,
            api="invoke",
        ),
    }
    config = _config(image_fetch, anthropic_url)
    app = build_app(config, environ={"ANTHROPIC_SIM_KEY": ANTHROPIC_KEY}, providers=providers)
    # NOTE: set here until build_app passes config.image_fetch to the Dispatcher itself;
    # test_build_app_passes_image_fetch checks that hand-over.
    _dispatcher(app).images = ImageFetcher(config.image_fetch)

    gateway = await start_gateway(app, "127.0.0.1", 0)
    try:
        yield Stack(gateway.url, bedrock, anthropic_sim)
    finally:
        await gateway.stop()
        await bedrock.stop()
        await anthropic_sim.stop()


def _openai_content(url: str) -> list[dict[str, Any]]:
    return [
        {"type": "text", "text": PROMPT},
        {"type": "image_url", "image_url": {"url": url}},
    ]


def _anthropic_content(url: str) -> list[dict[str, Any]]:
    return [
        {"type": "image", "source": {"type": "url", "url": url}},
        {"type": "text", "text": PROMPT},
    ]


async def _chat(url: str, ingress: str, model: str, image_url: str, *, stream: bool) -> str:
    if ingress == "openai":
        messages = [{"role": "user", "content": _openai_content(image_url)}]
        return (await openai_chat(url, model, messages, stream=stream)).text
    messages = [{"role": "user", "content": _anthropic_content(image_url)}]
    return (await anthropic_chat(url, model, messages, stream=stream)).text


def _sent_image(body: dict[str, Any]) -> tuple[str, str]:
    """Return the (format or media type, base64 data) of the image Bedrock received."""
    content = body["messages"][0]["content"]
    if "anthropic_version" not in body:
        image = next(block["image"] for block in content if "image" in block)
        return image["format"], image["source"]["bytes"]
    source = next(block["source"] for block in content if block["type"] == "image")
    return source["media_type"], source["data"]


def test_build_app_passes_image_fetch() -> None:
    config = parse_config(
        {
            "providers": {"anthropic": {"type": "anthropic", "api_key_env": "KEY"}},
            "image_fetch": {"allow_cidrs": ["10.20.0.0/16"], "max_bytes": 1234},
        }
    )
    app = build_app(config, environ={"KEY": "invented-test-key"})
    assert _dispatcher(app).images.settings == config.image_fetch


@isolated
async def test_image_url_reaches_bedrock_as_bytes() -> None:
    png = base64.b64encode(PNG).decode()
    jpeg = base64.b64encode(JPEG).decode()
    async with ImageServer() as images, gateway_stack(allow_cidrs=["127.0.0.0/8"]) as stack:
        cases = [
            ("openai", "claude", False, "cat.png", ("png", png)),
            ("openai", "claude", True, "cat.png", ("png", png)),
            ("anthropic", "claude", False, "mislabelled.png", ("jpeg", jpeg)),
            ("anthropic", "claude-invoke", True, "cat.png", ("image/png", png)),
            ("openai", "claude-invoke", False, "mislabelled.png", ("image/jpeg", jpeg)),
        ]
        for ingress, model, stream, path, sent in cases:
            case = f"{ingress} -> {model}, stream={stream}, {path}"
            text = await _chat(stack.url, ingress, model, f"{images.url}/{path}", stream=stream)
            assert text == REPLY, case
            assert _sent_image(stack.bedrock.requests[-1].body) == sent, case
        assert len(images.hits) == len(cases)


@isolated
async def test_rejected_image_url_reaches_caller() -> None:
    async with (
        ImageServer("127.0.0.1") as loopback,
        ImageServer("10.0.0.1") as private,
        ImageServer("169.254.169.254") as metadata,
        gateway_stack(allow_hosts=["localhost"]) as stack,
    ):
        port = loopback.url.rsplit(":", 1)[1]
        redirect = f"http://localhost:{port}/redirect?to={private.url}/cat.png"
        cases = [
            (f"{loopback.url}/cat.png", "its host is a loopback address"),
            (f"{private.url}/cat.png", "its host is a private address"),
            (f"{metadata.url}/latest/meta-data/", "its host is a cloud metadata address"),
            (redirect, "a redirect leads to a private address"),
        ]
        for image_url, reason in cases:
            for stream in (False, True):
                try:
                    await _chat(stack.url, "openai", "claude", image_url, stream=stream)
                except openai.BadRequestError as exc:
                    error = exc.body
                    assert isinstance(error, dict), image_url
                    assert error["param"] == "messages[0].content[1].image_url.url", image_url
                    assert reason in error["message"], error["message"]
                else:
                    raise AssertionError(f"{image_url} was accepted (stream={stream})")

            try:
                await _chat(stack.url, "anthropic", "claude-invoke", image_url, stream=False)
            except anthropic.BadRequestError as exc:
                assert "'messages[0].content[0].source.url'" in exc.message, exc.message
                assert reason in exc.message, exc.message
            else:
                raise AssertionError(f"{image_url} was accepted through the Anthropic ingress")

        assert private.hits == []
        assert metadata.hits == []
        # The allow-listed origin of the redirect is the only server that was reached.
        assert [hit.host_header for hit in loopback.hits] == [f"localhost:{port}"] * 3
        assert len(stack.bedrock.requests) == 0


@isolated
async def test_image_fetched_once_per_request() -> None:
    async with ImageServer() as images, gateway_stack(allow_cidrs=["127.0.0.0/8"]) as stack:
        image_url = f"{images.url}/cat.png"
        content = [
            *_openai_content(image_url),
            {"type": "image_url", "image_url": {"url": image_url}},
        ]
        # The first try fails with 503, and the retry sends the bytes already fetched.
        stack.bedrock.faults.append(Fault(status=503))
        messages = [{"role": "user", "content": content}]
        outcome = await openai_chat(stack.url, "claude", messages, stream=False)
        assert outcome.text.endswith("I see 2 image(s).")
        assert len(stack.bedrock.requests) == 2
        assert len(images.hits) == 1

        # When Bedrock keeps failing, the fallback to Anthropic gets the URL itself.
        stack.bedrock.faults.append(Fault(status=503, times=2))
        messages = [{"role": "user", "content": _openai_content(image_url)}]
        outcome = await openai_chat(stack.url, "claude-fallback", messages, stream=False)
        assert "I see 1 image(s)" in outcome.text
        sent = stack.anthropic.requests[-1].body["messages"][0]["content"]
        sources = [block["source"] for block in sent if block["type"] == "image"]
        assert sources == [{"type": "url", "url": image_url}]
        assert len(images.hits) == 2
