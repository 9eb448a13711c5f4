"""Provider simulators: each one serves a provider's wire format on 127.0.0.1."""

from smartflow.sim.anthropic import AnthropicSimulator
from smartflow.sim.azure import AzureOpenAISimulator
from smartflow.sim.bedrock import BedrockSimulator
from smartflow.sim.cohere import CohereSimulator
from smartflow.sim.gemini import GeminiSimulator
from smartflow.sim.openai import OpenAISimulator

__all__ = [
    "AnthropicSimulator",
    "AzureOpenAISimulator",
    "BedrockSimulator",
    "CohereSimulator",
    "GeminiSimulator",
    "OpenAISimulator",
]
