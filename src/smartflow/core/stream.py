"""Provider-neutral stream events.

A provider's stream decoder yields these in order: one ``StreamStart``, content and
tool-call deltas, usage updates, then one ``StreamEnd``. An ingress encoder turns
them back into its dialect's wire events. Tool calls are numbered from 0 in the
order the model opens them, whatever content blocks surround them.
"""

from __future__ import annotations

from dataclasses import dataclass

from smartflow.core.types import FinishReason, Usage

__all__ = [
    "ReasoningDelta",
    "StreamEnd",
    "StreamEvent",
    "StreamStart",
    "TextDelta",
    "ToolCallDelta",
    "ToolCallStart",
    "UsageUpdate",
]


@dataclass(slots=True)
class StreamStart:
    id: str
    model: str
    created: int = 0
    usage: Usage | None = None


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ReasoningDelta:
    text: str = ""
    signature: str | None = None


@dataclass(slots=True)
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    arguments: str


@dataclass(slots=True)
class UsageUpdate:
    """Usage so far; later updates replace earlier ones, they are never summed."""

    usage: Usage


@dataclass(slots=True)
class StreamEnd:
    finish_reason: FinishReason
    stop_sequence: str | None = None
    usage: Usage | None = None


StreamEvent = (
    StreamStart
    | TextDelta
    | ReasoningDelta
    | ToolCallStart
    | ToolCallDelta
    | UsageUpdate
    | StreamEnd
)
