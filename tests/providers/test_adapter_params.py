"""Request builders of the Gemini, Cohere and Bedrock adapters write logprobs, top_k and budgets.

The official SDKs judge the rendered fields: google-genai's ``GenerationConfig`` (which
rejects unknown fields), the parameters of Cohere's ``ClientV2.chat`` and botocore's
Converse input shape.
"""

from __future__ import annotations

import inspect
from typing import Any

import botocore.session
import cohere
import pytest
from botocore.validate import ParamValidator
from google.genai import types as genai_types

from smartflow.core.errors import InvalidRequest
from smartflow.core.types import ChatRequest, Message, Sampling, TextPart
from smartflow.dialects.bedrock.requests import build_converse_request
from smartflow.dialects.cohere import requests as cohere_requests
from smartflow.dialects.gemini import requests as gemini_requests


def _request(**sampling: Any) -> ChatRequest:
    return ChatRequest(
        model="public-model",
        messages=[Message(role="user", content=[TextPart(text="What is the capital of France?")])],
        sampling=Sampling(**sampling),
    )


# --- Gemini -----------------------------------------------------------------------------


def _gemini_config(**sampling: Any) -> dict[str, Any]:
    body = gemini_requests.build_request(_request(**sampling), "gemini-2.5-flash")
    config = body.get("generationConfig", {})
    # The SDK model rejects unknown fields, so a misspelt name fails here.
    genai_types.GenerationConfig.model_validate(config)
    return config


def test_gemini_logprobs_with_top_logprobs() -> None:
    config = _gemini_config(logprobs=True, top_logprobs=3)
    assert config["responseLogprobs"] is True
    assert config["logprobs"] == 3


def test_gemini_logprobs_without_top_logprobs() -> None:
    config = _gemini_config(logprobs=True)
    assert config["responseLogprobs"] is True
    assert "logprobs" not in config


def test_gemini_logprobs_false() -> None:
    config = _gemini_config(logprobs=False)
    assert config["responseLogprobs"] is False
    assert "logprobs" not in config


def test_gemini_logprobs_unset() -> None:
    config = _gemini_config(temperature=0.5)
    assert "responseLogprobs" not in config
    assert "logprobs" not in config


@pytest.mark.parametrize("logprobs", [None, False])
def test_gemini_top_logprobs_needs_logprobs(logprobs: bool | None) -> None:
    with pytest.raises(InvalidRequest) as raised:
        gemini_requests.build_request(
            _request(logprobs=logprobs, top_logprobs=2), "gemini-2.5-flash"
        )
    assert raised.value.param == "top_logprobs"


# --- Cohere -----------------------------------------------------------------------------

_COHERE_CHAT_PARAMS = set(inspect.signature(cohere.ClientV2.chat).parameters)


@pytest.mark.parametrize("logprobs", [True, False])
def test_cohere_logprobs_written(logprobs: bool) -> None:
    body = cohere_requests.build_request(_request(logprobs=logprobs), "command-a-03-2025")
    assert body["logprobs"] is logprobs
    unknown = set(body) - _COHERE_CHAT_PARAMS
    assert not unknown, f"ClientV2.chat takes no {sorted(unknown)}"


def test_cohere_logprobs_unset() -> None:
    body = cohere_requests.build_request(_request(temperature=0.3), "command-a-03-2025")
    assert "logprobs" not in body


# --- Bedrock ----------------------------------------------------------------------------

_CONVERSE_INPUT = (
    botocore.session.get_session()
    .get_service_model("bedrock-runtime")
    .operation_model("Converse")
    .input_shape
)


def _converse(model_id: str, **sampling: Any) -> dict[str, Any]:
    body = build_converse_request(_request(**sampling), model_id)
    report = ParamValidator().validate({"modelId": model_id, **body}, _CONVERSE_INPUT)
    assert not report.has_errors(), report.generate_report()
    return body


TOP_K_FIELDS = [
    ("amazon.nova-pro-v1:0", {"inferenceConfig": {"topK": 20}}),
    ("us.amazon.nova-lite-v1:0", {"inferenceConfig": {"topK": 20}}),
    ("amazon.nova-2-lite-v1:0", {"inferenceConfig": {"topK": 20}}),
    ("cohere.command-r-plus-v1:0", {"k": 20}),
    ("cohere.command-r-v1:0", {"k": 20}),
    ("mistral.mistral-large-2407-v1:0", {"top_k": 20}),
    ("mistral.mixtral-8x7b-instruct-v0:1", {"top_k": 20}),
    ("anthropic.claude-3-haiku-20240307-v1:0", {"top_k": 20}),
    ("us.anthropic.claude-sonnet-4-20250514-v1:0", {"top_k": 20}),
]


@pytest.mark.parametrize(("model_id", "expected"), TOP_K_FIELDS)
def test_bedrock_top_k_field_names(model_id: str, expected: dict[str, Any]) -> None:
    body = _converse(model_id, top_k=20)
    assert body["additionalModelRequestFields"] == expected


@pytest.mark.parametrize(
    "model_id",
    ["meta.llama3-8b-instruct-v1:0", "amazon.titan-text-express-v1", "deepseek.r1-v1:0"],
)
def test_bedrock_top_k_not_sent_elsewhere(model_id: str) -> None:
    body = _converse(model_id, top_k=20)
    assert "additionalModelRequestFields" not in body


CLAUDE_THINKING = "us.anthropic.claude-sonnet-4-20250514-v1:0"


def test_bedrock_budget_zero_sends_no_thinking() -> None:
    body = _converse(CLAUDE_THINKING, thinking_budget=0, reasoning_effort="none")
    assert "additionalModelRequestFields" not in body


def test_bedrock_budget_zero_keeps_top_k() -> None:
    body = _converse(CLAUDE_THINKING, thinking_budget=0, top_k=5)
    assert body["additionalModelRequestFields"] == {"top_k": 5}


def test_bedrock_budget_enables_thinking() -> None:
    body = _converse(CLAUDE_THINKING, thinking_budget=2048, max_tokens=4096)
    thinking = body["additionalModelRequestFields"]["thinking"]
    assert thinking == {"type": "enabled", "budget_tokens": 2048}


def test_bedrock_budget_not_sent_to_nova() -> None:
    body = _converse("amazon.nova-pro-v1:0", thinking_budget=2048)
    assert "additionalModelRequestFields" not in body
