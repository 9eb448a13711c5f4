"""The local stack behind ``smartflow up``: a gateway on built-in defaults.

A provider whose credentials are in the environment is used for real. Every other
provider is replaced by its simulator on 127.0.0.1. So the stack runs with nothing
configured, and it never contacts a provider without credentials.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.credentials import Credentials  # type: ignore[import-untyped]

from smartflow.auth.keys import hash_key
from smartflow.config.schema import parse_config
from smartflow.gateway.app import RunningGateway, build_app, start_gateway
from smartflow.providers.anthropic import AnthropicProvider
from smartflow.providers.base import Provider, Secret
from smartflow.providers.bedrock import BedrockProvider
from smartflow.providers.cohere import CohereProvider
from smartflow.providers.gemini import GeminiProvider
from smartflow.providers.openai import AzureOpenAIProvider, OpenAIProvider
from smartflow.sim.anthropic import AnthropicSimulator
from smartflow.sim.azure import AzureOpenAISimulator
from smartflow.sim.base import Simulator
from smartflow.sim.bedrock import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY, BedrockSimulator
from smartflow.sim.cohere import CohereSimulator
from smartflow.sim.gemini import GeminiSimulator
from smartflow.sim.openai import OpenAISimulator

__all__ = ["DEFAULT_MODELS", "LocalStack", "start_local_stack"]

logger = logging.getLogger(__name__)

# Public model name -> (provider, upstream model or Azure deployment), in fallback order.
DEFAULT_MODELS: dict[str, list[tuple[str, str]]] = {
    "gpt-4o": [("openai", "gpt-4o"), ("azure", "gpt-4o")],
    "gpt-4o-mini": [("openai", "gpt-4o-mini"), ("azure", "gpt-4o-mini")],
    "gpt-4.1": [("openai", "gpt-4.1")],
    "o3-mini": [("openai", "o3-mini")],
    "azure-gpt-4o": [("azure", "gpt-4o")],
    "claude-sonnet-4-5": [("anthropic", "claude-sonnet-4-5")],
    "claude-haiku-4-5": [("anthropic", "claude-haiku-4-5")],
    "claude-opus-4-6": [("anthropic", "claude-opus-4-6")],
    "bedrock-claude-3-5-sonnet": [("bedrock", "anthropic.claude-3-5-sonnet-20241022-v2:0")],
    "bedrock-llama-3-1-70b": [("bedrock", "meta.llama3-1-70b-instruct-v1:0")],
    "gemini-2.5-flash": [("gemini", "gemini-2.5-flash")],
    "gemini-2.5-pro": [("gemini", "gemini-2.5-pro")],
    "command-a": [("cohere", "command-a-03-2025")],
    "command-a-vision": [("cohere", "command-a-vision-07-2025")],
    "text-embedding-3-small": [("openai", "text-embedding-3-small")],
}

# The key the gateway sends to the stack's simulators, which accept any non-empty key.
_SIMULATOR_KEY = "sim-local-key"
_SIMULATOR_REGION = "us-east-1"


@dataclass(slots=True, frozen=True)
class _ProviderSpec:
    """How to run one provider for real, or else simulated."""

    name: str
    real_when: tuple[str, ...]
    """Environment variables that must all be set to use the real provider."""
    real_config: Callable[[Mapping[str, str]], dict[str, Any]]
    simulator: Callable[[], Simulator]
    adapter: Callable[[str], Provider]
    """Builds the adapter that talks to the simulator at the given base URL."""


def _bedrock_adapter(url: str) -> Provider:
    credentials = Credentials(DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY)
    return BedrockProvider(
        "bedrock", region=_SIMULATOR_REGION, credentials=credentials, endpoint_url=url
    )


_PROVIDERS = (
    _ProviderSpec(
        "openai",
        ("OPENAI_API_KEY",),
        lambda env: {"type": "openai", "api_key_env": "OPENAI_API_KEY"},
        OpenAISimulator,
        lambda url: OpenAIProvider("openai", api_key=Secret(_SIMULATOR_KEY), base_url=url + "/v1"),
    ),
    _ProviderSpec(
        "azure",
        ("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT"),
        lambda env: {
            "type": "azure_openai",
            "base_url": env["AZURE_OPENAI_ENDPOINT"],
            "api_version": env.get("OPENAI_API_VERSION", "2024-10-21"),
            "api_key_env": "AZURE_OPENAI_API_KEY",
        },
        AzureOpenAISimulator,
        lambda url: AzureOpenAIProvider(
            "azure", api_key=Secret(_SIMULATOR_KEY), base_url=url, api_version="2024-10-21"
        ),
    ),
    _ProviderSpec(
        "anthropic",
        ("ANTHROPIC_API_KEY",),
        lambda env: {"type": "anthropic", "api_key_env": "ANTHROPIC_API_KEY"},
        AnthropicSimulator,
        lambda url: AnthropicProvider("anthropic", api_key=Secret(_SIMULATOR_KEY), base_url=url),
    ),
    _ProviderSpec(
        "bedrock",
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"),
        lambda env: {"type": "bedrock", "region": env["AWS_REGION"]},
        BedrockSimulator,
        _bedrock_adapter,
    ),
    _ProviderSpec(
        "gemini",
        ("GEMINI_API_KEY",),
        lambda env: {"type": "gemini", "api_key_env": "GEMINI_API_KEY"},
        GeminiSimulator,
        lambda url: GeminiProvider("gemini", api_key=Secret(_SIMULATOR_KEY), base_url=url),
    ),
    _ProviderSpec(
        "cohere",
        ("CO_API_KEY",),
        lambda env: {"type": "cohere", "api_key_env": "CO_API_KEY"},
        CohereSimulator,
        lambda url: CohereProvider("cohere", api_key=Secret(_SIMULATOR_KEY), base_url=url),
    ),
)


@dataclass(slots=True)
class LocalStack:
    gateway: RunningGateway
    dev_key: str
    simulators: dict[str, tuple[Simulator, str]] = field(default_factory=dict)
    real: list[str] = field(default_factory=list)

    def summary(self, *, show_key: bool = True) -> str:
        lines = [f"Smartflow gateway ready at {self.gateway.url}", "", "Models served:"]
        for model, deployments in DEFAULT_MODELS.items():
            chain = " -> ".join(f"{provider}:{name}" for provider, name in deployments)
            lines.append(f"  {model:<26} {chain}")
        lines.append("")
        for name, (_, url) in self.simulators.items():
            lines.append(f"Provider {name}: simulated at {url} (no credentials set)")
        for name in self.real:
            lines.append(f"Provider {name}: real API (credentials from the environment)")
        lines.append("")
        if show_key:
            lines.append(f"Development virtual key: {self.dev_key}")
        else:
            lines.append(
                "Development virtual key: the one given with --dev-key or $SMARTFLOW_DEV_KEY"
            )
        lines.append("")
        lines.append("Try it:")
        key = self.dev_key if show_key else "<your key>"
        body = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}'
        lines.append(
            f'  curl {self.gateway.url}/v1/chat/completions -H "Authorization: Bearer {key}" '
            f"-H 'Content-Type: application/json' -d '{body}'"
        )
        return "\n".join(lines)

    async def stop(self) -> None:
        await self.gateway.stop()
        for simulator, _ in self.simulators.values():
            await simulator.stop()


async def start_local_stack(
    *, host: str, port: int, dev_key: str, environ: Mapping[str, str] | None = None
) -> LocalStack:
    env = os.environ if environ is None else environ
    simulators: dict[str, tuple[Simulator, str]] = {}
    real: list[str] = []
    adapters: dict[str, Provider] = {}
    provider_config: dict[str, Any] = {}

    try:
        for spec in _PROVIDERS:
            if all(env.get(variable) for variable in spec.real_when):
                provider_config[spec.name] = spec.real_config(env)
                real.append(spec.name)
                continue
            simulator = spec.simulator()
            url = await simulator.start()
            simulators[spec.name] = (simulator, url)
            adapters[spec.name] = spec.adapter(url)
            # Declared so that routes can name it; the ready adapter replaces it.
            provider_config[spec.name] = {"type": "openai", "api_key_env": "UNUSED"}

        # Real providers go through the config, so their credentials resolve as in a
        # configured gateway. Simulated ones are injected as ready adapters.
        config = parse_config(
            {
                "server": {"host": host, "port": port},
                "policy_files": ["builtin:default"],
                "providers": provider_config,
                "models": {
                    model: [{"provider": p, "model": m} for p, m in deployments]
                    for model, deployments in DEFAULT_MODELS.items()
                },
                "keys": [
                    {"name": "development", "sha256": hash_key(dev_key), "team": "development"}
                ],
            },
            "built-in defaults",
        )
        app = build_app(config, env, providers=adapters)
        gateway = await start_gateway(app, host, port)
    except BaseException:
        for simulator, _ in simulators.values():
            await simulator.stop()
        raise
    return LocalStack(gateway=gateway, dev_key=dev_key, simulators=simulators, real=real)
