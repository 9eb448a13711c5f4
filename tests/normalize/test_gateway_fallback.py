"""Pinned tunings carried over on fallback, through a running gateway and the official SDKs.

The first deployment of each public model is a Claude model with pinned tunings. The
Anthropic simulator returns 500 for every attempt at it, so the gateway falls back. Each
test checks what the second deployment received and what the ``x-smartflow-params``
report lists.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest

from smartflow.auth.keys import hash_key
from smartflow.config.schema import parse_config
from smartflow.gateway.app import RunningGateway, build_app, start_gateway
from smartflow.sim.anthropic import AnthropicSimulator
from smartflow.sim.base import Fault, Simulator
from smartflow.sim.gemini import GeminiSimulator
from smartflow.sim.openai import OpenAISimulator
from tests.conftest import PROVIDER_KEY, VIRTUAL_KEY

PARAMS_HEADER = "x-smartflow-params"
PROMPT = "What is the capital of France?"
CLAUDE = "claude-sonnet-4-5"
PINS = {"top_k": 40, "thinking_budget": 2048}
ATTEMPTS = 2


@dataclass
class Stack:
    url: str
    anthropic: AnthropicSimulator
    gemini: GeminiSimulator
    openai: OpenAISimulator
    gateway: RunningGateway


def _models() -> dict[str, list[dict[str, Any]]]:
    primary = {"provider": "anthropic", "model": CLAUDE, "pinned": PINS}
    return {
        "tuned-to-gemini": [primary, {"provider": "gemini", "model": "gemini-2.5-flash"}],
        "tuned-to-gpt": [primary, {"provider": "openai", "model": "gpt-5-mini"}],
        "tuned-to-tuned-gemini": [
            primary,
            {"provider": "gemini", "model": "gemini-2.5-flash", "pinned": {"top_k": 8}},
        ],
    }


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    anthropic_sim = AnthropicSimulator(api_keys=[PROVIDER_KEY])
    gemini_sim = GeminiSimulator(api_keys=[PROVIDER_KEY])
    openai_sim = OpenAISimulator(api_keys=[PROVIDER_KEY])
    sims: list[Simulator] = [anthropic_sim, gemini_sim, openai_sim]
    anthropic_url, gemini_url, openai_url = [await sim.start() for sim in sims]

    key = {"api_key_env": "TEST_PROVIDER_KEY"}
    config = {
        "server": {"access_log": False},
        "providers": {
            "anthropic": {"type": "anthropic", "base_url": anthropic_url, **key},
            "gemini": {"type": "gemini", "base_url": gemini_url, **key},
            "openai": {"type": "openai", "base_url": openai_url + "/v1", **key},
        },
        "models": _models(),
        "keys": [{"name": "test", "sha256": hash_key(VIRTUAL_KEY)}],
        "retry": {
            "attempts_per_deployment": ATTEMPTS,
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.02,
        },
        "timeouts": {"connect_s": 2, "read_s": 5},
    }
    app = build_app(parse_config(config), environ={"TEST_PROVIDER_KEY": PROVIDER_KEY})
    gateway = await start_gateway(app, "127.0.0.1", 0)

    # More failures than the gateway tries, so every attempt at Claude fails.
    anthropic_sim.faults.append(Fault(status=500, times=10 * ATTEMPTS))
    try:
        yield Stack(gateway.url, anthropic_sim, gemini_sim, openai_sim, gateway)
    finally:
        await gateway.stop()
        for sim in sims:
            await sim.stop()


@dataclass
class Reply:
    params: str
    deployment: str
    text: str


async def send(ingress: str, url: str, model: str, **params: Any) -> Reply:
    """Send one user turn with the ingress's SDK; return the report, deployment and text."""
    messages: Any = [{"role": "user", "content": PROMPT}]
    raw: Any
    if ingress == "openai":
        async with openai.AsyncOpenAI(
            base_url=url + "/v1", api_key=VIRTUAL_KEY, max_retries=0
        ) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model=model, messages=messages, max_completion_tokens=4096, **params
            )
            text = raw.parse().choices[0].message.content or ""
    else:
        async with anthropic.AsyncAnthropic(
            base_url=url, api_key=VIRTUAL_KEY, max_retries=0
        ) as client:
            raw = await client.messages.with_raw_response.create(
                model=model, messages=messages, max_tokens=4096, **params
            )
            message = await raw.parse()
            text = "".join(block.text for block in message.content if block.type == "text")
    return Reply(
        raw.headers.get(PARAMS_HEADER, ""), raw.headers.get("x-smartflow-deployment", ""), text
    )


def entries(header: str) -> list[str]:
    return [] if header == "none" else header.split(";")


def assert_primary_tried(stack: Stack) -> None:
    """Check that every attempt at Claude carried the pinned thinking budget."""
    attempts = stack.anthropic.requests
    assert len(attempts) == ATTEMPTS
    for attempt in attempts:
        assert attempt.body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
        # Claude rejects top_k while thinking, so the pinned top_k is dropped there.
        assert "top_k" not in attempt.body


INGRESSES = ["openai", "anthropic"]


@pytest.mark.parametrize("ingress", INGRESSES)
async def test_pins_reach_gemini_after_fallback(stack: Stack, ingress: str) -> None:
    reply = await send(ingress, stack.url, "tuned-to-gemini")

    assert reply.deployment == "gemini/gemini-2.5-flash"
    assert reply.text.startswith("Hello from gemini-2.5-flash")
    assert entries(reply.params) == ["top_k=pin(->40)", "thinking_budget=pin(->2048)"]
    config = stack.gemini.requests[-1].body["generationConfig"]
    assert config["topK"] == 40
    assert config["thinkingConfig"]["thinkingBudget"] == 2048
    assert len(stack.gemini.requests) == 1
    assert_primary_tried(stack)


async def test_fallback_pins_override_primary_pins(stack: Stack) -> None:
    reply = await send("anthropic", stack.url, "tuned-to-tuned-gemini")

    assert reply.deployment == "gemini/gemini-2.5-flash"
    assert "top_k=pin(->8)" in entries(reply.params)
    assert "thinking_budget=pin(->2048)" in entries(reply.params)
    config = stack.gemini.requests[-1].body["generationConfig"]
    assert config["topK"] == 8
    assert config["thinkingConfig"]["thinkingBudget"] == 2048


async def test_pins_mapped_for_gpt_translated(stack: Stack) -> None:
    reply = await send("anthropic", stack.url, "tuned-to-gpt")

    assert reply.deployment == "openai/gpt-5-mini"
    assert reply.text.startswith("Hello from gpt-5-mini")
    report = entries(reply.params)
    assert "thinking_budget=derive(2048->reasoning_effort:low)" in report
    assert "top_k=drop(40)" in report
    body = stack.openai.requests[-1].body
    assert body["reasoning_effort"] == "low"
    assert "top_k" not in body
    assert_primary_tried(stack)


async def test_pins_mapped_for_gpt_passthrough(stack: Stack) -> None:
    reply = await send("openai", stack.url, "tuned-to-gpt")

    assert reply.deployment == "openai/gpt-5-mini"
    assert "thinking_budget=derive(2048->reasoning_effort:low)" in entries(reply.params)
    assert stack.openai.requests[-1].body.get("reasoning_effort") == "low"
