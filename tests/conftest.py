"""Fixtures shared by the gateway tests: simulators and a gateway, all on 127.0.0.1."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from smartflow.auth.keys import hash_key
from smartflow.config.schema import parse_config
from smartflow.gateway.app import RunningGateway, build_app, start_gateway
from smartflow.sim.anthropic import AnthropicSimulator
from smartflow.sim.azure import AzureOpenAISimulator
from smartflow.sim.openai import OpenAISimulator

VIRTUAL_KEY = "sk-sf-test-0123456789abcdef"
PROVIDER_KEY = "provider-test-key"

# Never let a test reach a real provider because a developer has credentials set.
for _variable in (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "AZURE_OPENAI_API_KEY",
    "AZURE_OPENAI_ENDPOINT",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "CO_API_KEY",
    "COHERE_API_KEY",
    "VERTEX_ACCESS_TOKEN",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
):
    os.environ.pop(_variable, None)


@pytest.fixture(autouse=True)
def _private_state_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run each test in its own directory, so the default relative state directory of a
    gateway (policy versions, usage queue) never leaks between tests or into the checkout."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@dataclass
class Stack:
    url: str
    openai: OpenAISimulator
    azure: AzureOpenAISimulator
    anthropic: AnthropicSimulator
    gateway: RunningGateway

    def sim(self, provider: str) -> Any:
        return {"openai": self.openai, "azure": self.azure, "anthropic": self.anthropic}[provider]


# Public model per provider, used by the matrix: (public name, provider, upstream name).
MODELS = {
    "openai": ("gpt-4o", "gpt-4o"),
    "azure": ("azure-gpt-4o", "gpt-4o"),
    "anthropic": ("claude-sonnet-4-5", "claude-sonnet-4-5"),
}


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stack_config(
    openai_url: str, azure_url: str, anthropic_url: str, **overrides: Any
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server": {"access_log": False},
        "providers": {
            "openai": {
                "type": "openai",
                "base_url": openai_url + "/v1",
                "api_key_env": "TEST_PROVIDER_KEY",
            },
            "azure": {
                "type": "azure_openai",
                "base_url": azure_url,
                "api_version": "2024-10-21",
                "api_key_env": "TEST_PROVIDER_KEY",
            },
            "anthropic": {
                "type": "anthropic",
                "base_url": anthropic_url,
                "api_key_env": "TEST_PROVIDER_KEY",
            },
        },
        "models": {
            **{public: [{"provider": p, "model": m}] for p, (public, m) in MODELS.items()},
            "gpt-4o-mini": [{"provider": "openai", "model": "gpt-4o-mini"}],
            "with-fallback": [
                {"provider": "openai", "model": "gpt-4o-mini"},
                {"provider": "anthropic", "model": "claude-haiku-4-5"},
            ],
        },
        "keys": [{"name": "test", "sha256": hash_key(VIRTUAL_KEY), "team": "qa", "user": "tester"}],
        "retry": {"attempts_per_deployment": 2, "backoff_initial_s": 0.01, "backoff_max_s": 0.05},
        "timeouts": {"connect_s": 2, "read_s": 5},
    }
    for section, values in overrides.items():
        config[section] = {**config.get(section, {}), **values}
    return config


async def start_stack(**overrides: Any) -> Stack:
    openai_sim = OpenAISimulator(api_keys=[PROVIDER_KEY])
    azure_sim = AzureOpenAISimulator(api_keys=[PROVIDER_KEY])
    anthropic_sim = AnthropicSimulator(api_keys=[PROVIDER_KEY])
    urls = [await s.start() for s in (openai_sim, azure_sim, anthropic_sim)]
    config = parse_config(stack_config(*urls, **overrides))
    app = build_app(config, environ={"TEST_PROVIDER_KEY": PROVIDER_KEY})
    gateway = await start_gateway(app, "127.0.0.1", 0, idle_timeout_s=config.server.idle_timeout_s)
    return Stack(gateway.url, openai_sim, azure_sim, anthropic_sim, gateway)


async def stop_stack(stack: Stack) -> None:
    await stack.gateway.stop()
    for sim in (stack.openai, stack.azure, stack.anthropic):
        await sim.stop()


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    running = await start_stack()
    try:
        yield running
    finally:
        await stop_stack(running)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
