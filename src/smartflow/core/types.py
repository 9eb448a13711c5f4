"""Provider-neutral model of chat requests, responses and usage.

Every dialect converts to and from these types, so any ingress reaches any provider
and a new dialect costs one module. Nothing here does I/O or names a provider.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ChatRequest",
    "ChatResponse",
    "FinishReason",
    "ImagePart",
    "Message",
    "Part",
    "ReasoningPart",
    "ResponseFormat",
    "Role",
    "Sampling",
    "TextPart",
    "Tool",
    "ToolCall",
    "ToolChoice",
    "Usage",
]

Role = Literal["system", "user", "assistant", "tool"]

# "stop" covers both a natural end and a matched stop sequence; the matched text,
# when known, is in ChatResponse.stop_sequence.
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "refusal", "error"]


@dataclass(slots=True)
class TextPart:
    text: str


@dataclass(slots=True)
class ImagePart:
    """An image given either by URL or as base64 data with its media type."""

    url: str | None = None
    data: str | None = None
    media_type: str | None = None
    detail: str | None = None


@dataclass(slots=True)
class ReasoningPart:
    """Model reasoning text, with the provider's signature when it issues one."""

    text: str
    signature: str | None = None
    redacted_data: str | None = None


Part = TextPart | ImagePart | ReasoningPart


@dataclass(slots=True)
class ToolCall:
    """A function call made by the model; ``arguments`` is the JSON text of the input."""

    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class Message:
    """One conversation turn.

    A ``tool`` message carries the result of the call named by ``tool_call_id``.
    """

    role: Role
    content: list[Part] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    is_error: bool = False
    name: str | None = None

    def text(self) -> str:
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


@dataclass(slots=True)
class Tool:
    """A function the model may call.

    ``builtin`` contains the raw definition of a provider's own tool (a server tool such
    as web search); such a tool can only go unchanged to the dialect it came from.
    """

    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    strict: bool | None = None
    builtin: dict[str, Any] | None = None
    builtin_dialect: str | None = None


@dataclass(slots=True)
class ToolChoice:
    """Tool use allowed to the model: ``auto``, ``none``, ``required`` or one ``tool``."""

    mode: Literal["auto", "none", "required", "tool"]
    name: str | None = None


@dataclass(slots=True)
class ResponseFormat:
    type: Literal["text", "json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool | None = None


@dataclass(slots=True)
class Sampling:
    """Generation parameters under their canonical names; ``None`` means unset."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    n: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    reasoning_effort: str | None = None
    thinking_budget: int | None = None
    parallel_tool_calls: bool | None = None


@dataclass(slots=True)
class ChatRequest:
    """A chat request after parsing, with the system prompt as leading ``system`` turns."""

    model: str
    messages: list[Message]
    sampling: Sampling = field(default_factory=Sampling)
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None
    stream: bool = False
    include_usage: bool = False
    user: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def system_text(self) -> str:
        return "\n\n".join(m.text() for m in self.messages if m.role == "system")


@dataclass(slots=True)
class Usage:
    """Token counts. ``input_tokens`` includes cached ones; ``output_tokens`` includes
    reasoning ones, so the detail counts are never added on top."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(slots=True)
class ChatResponse:
    id: str
    model: str
    content: list[Part] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: FinishReason = "stop"
    stop_sequence: str | None = None
    usage: Usage = field(default_factory=Usage)
    created: int = 0

    def text(self) -> str:
        return "".join(p.text for p in self.content if isinstance(p, TextPart))
