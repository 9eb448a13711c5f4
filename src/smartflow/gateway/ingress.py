"""The two API dialects the gateway serves, as plug-in descriptions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from smartflow.core.errors import SmartflowError
from smartflow.core.types import ChatRequest, ChatResponse
from smartflow.dialects.anthropic import errors as anthropic_errors
from smartflow.dialects.anthropic import requests as anthropic_requests
from smartflow.dialects.anthropic import responses as anthropic_responses
from smartflow.dialects.anthropic import streaming as anthropic_streaming
from smartflow.dialects.openai import errors as openai_errors
from smartflow.dialects.openai import requests as openai_requests
from smartflow.dialects.openai import responses as openai_responses
from smartflow.dialects.openai import streaming as openai_streaming
from smartflow.gateway.upstream import Encoder

__all__ = ["ANTHROPIC", "OPENAI", "Ingress"]


@dataclass(slots=True, frozen=True)
class Ingress:
    name: str
    parse_request: Callable[[dict[str, Any]], ChatRequest]
    render_response: Callable[[ChatResponse], bytes]
    render_error: Callable[[SmartflowError], tuple[int, bytes, dict[str, str]]]
    make_encoder: Callable[[ChatRequest], Encoder]
    request_id_header: str


OPENAI = Ingress(
    name="openai",
    parse_request=openai_requests.parse_request,
    render_response=openai_responses.render_response,
    render_error=openai_errors.render_error,
    make_encoder=lambda request: openai_streaming.StreamEncoder(
        request.model, include_usage=request.include_usage
    ),
    request_id_header="x-request-id",
)

ANTHROPIC = Ingress(
    name="anthropic",
    parse_request=anthropic_requests.parse_request,
    render_response=anthropic_responses.render_response,
    render_error=anthropic_errors.render_error,
    make_encoder=lambda request: anthropic_streaming.StreamEncoder(request.model),
    request_id_header="request-id",
)
