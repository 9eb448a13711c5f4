"""Smartflow: an AI gateway that speaks the OpenAI and Anthropic APIs to its callers
and routes, translates and accounts for their calls to six LLM providers."""

__version__ = "0.1.0"
