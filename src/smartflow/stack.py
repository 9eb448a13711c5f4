"""The local stack behind ``smartflow up``: a gateway on built-in defaults.

A provider whose credentials are in the environment is used for real. Every other
provider is replaced by its simulator on 127.0.0.1. So the stack runs with nothing
configured, and it never contacts a provider without credentials.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from smartflow.auth.keys import hash_key
from smartflow.config.schema import parse_config
from smartflow.gateway.app import RunningGateway, build_app, start_gateway
from smartflow.providers.anthropic import AnthropicProvider
from smartflow.providers.base import Provider, Secret
from smartflow.providers.openai import AzureOpenAIProvider, OpenAIProvider
from smartflow.sim.anthropic import AnthropicSimulator
from smartflow.sim.azure import AzureOpenAISimulator
from smartflow.sim.base import Simulator
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
}

# The key the gateway sends to the stack's simulators, which accept any non-empty key.
_SIMULATOR_KEY = "sim-local-key"


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
            lines.append(f"  {model:<20} {chain}")
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
    providers: dict[str, Provider] = {}
    provider_config: dict[str, Any] = {}

    if env.get("OPENAI_API_KEY"):
        provider_config["openai"] = {"type": "openai", "api_key_env": "OPENAI_API_KEY"}
        real.append("openai")
    else:
        sim_openai = OpenAISimulator()
        url = await sim_openai.start()
        simulators["openai"] = (sim_openai, url)
        providers["openai"] = OpenAIProvider(
            "openai", api_key=Secret(_SIMULATOR_KEY), base_url=url + "/v1"
        )

    if env.get("AZURE_OPENAI_API_KEY") and env.get("AZURE_OPENAI_ENDPOINT"):
        provider_config["azure"] = {
            "type": "azure_openai",
            "base_url": env["AZURE_OPENAI_ENDPOINT"],
            "api_version": env.get("OPENAI_API_VERSION", "2024-10-21"),
            "api_key_env": "AZURE_OPENAI_API_KEY",
        }
        real.append("azure")
    else:
        sim_azure = AzureOpenAISimulator()
        url = await sim_azure.start()
        simulators["azure"] = (sim_azure, url)
        providers["azure"] = AzureOpenAIProvider(
            "azure", api_key=Secret(_SIMULATOR_KEY), base_url=url, api_version="2024-10-21"
        )

    if env.get("ANTHROPIC_API_KEY"):
        provider_config["anthropic"] = {"type": "anthropic", "api_key_env": "ANTHROPIC_API_KEY"}
        real.append("anthropic")
    else:
        sim_anthropic = AnthropicSimulator()
        url = await sim_anthropic.start()
        simulators["anthropic"] = (sim_anthropic, url)
        providers["anthropic"] = AnthropicProvider(
            "anthropic", api_key=Secret(_SIMULATOR_KEY), base_url=url
        )

    # Real providers go through the config, so their credentials resolve as in a
    # configured gateway. Simulated ones are injected as ready adapters.
    config = parse_config(
        {
            "server": {"host": host, "port": port},
            "providers": {
                **provider_config,
                **{
                    name: {"type": p.kind, "base_url": "http://127.0.0.1", "api_version": "v1"}
                    if p.kind == "azure_openai"
                    else {"type": p.kind}
                    for name, p in providers.items()
                },
            },
            "models": {
                model: [{"provider": p, "model": m} for p, m in deployments]
                for model, deployments in DEFAULT_MODELS.items()
            },
            "keys": [{"name": "development", "sha256": hash_key(dev_key), "team": "development"}],
        },
        "built-in defaults",
    )
    app = build_app(config, env, providers=providers)
    try:
        gateway = await start_gateway(app, host, port)
    except OSError:
        for simulator, _ in simulators.values():
            await simulator.stop()
        raise
    return LocalStack(gateway=gateway, dev_key=dev_key, simulators=simulators, real=real)
