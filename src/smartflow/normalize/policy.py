"""Policy: the choices a route makes where more than one rule keeps a request's meaning."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

__all__ = ["DEFAULT_POLICY", "Policy"]


@dataclass(frozen=True, slots=True)
class Policy:
    """Rule choices for one route; the defaults suit most traffic.

    ``range_rules`` overrides, per parameter, what happens to a value outside the
    target's range: ``clamp`` (the default), ``scale`` (map the canonical range
    linearly onto the target's range, for every value) or ``reject``. Scaling keeps
    the neutral value only where both ranges put it at the same relative place: it
    suits temperature 0..2 onto 0..1, but maps a penalty of 0 in -2..2 to 0.5 in 0..1.
    ``unsupported_rules`` overrides, per parameter, what happens when the target lacks
    the parameter: ``drop`` or ``reject``.
    ``stop_overflow`` handles more stop sequences than the target takes.
    ``thinking_fit`` handles a thinking budget that is not below ``max_tokens``:
    ``lower_budget`` keeps the caller's ``max_tokens`` where it can and
    ``raise_max_tokens`` keeps the budget. Both leave ``answer_tokens`` for the reply.
    ``schema_to_json_object`` allows JSON mode without the schema as the equivalent of a
    JSON schema on a target that has only JSON mode.
    ``json_tool_name`` names the tool that carries a JSON reply when a forced tool call
    replaces a response format.
    """

    range_rules: Mapping[str, Literal["clamp", "scale", "reject"]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    unsupported_rules: Mapping[str, Literal["drop", "reject"]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    stop_overflow: Literal["truncate", "reject"] = "truncate"
    thinking_fit: Literal["lower_budget", "raise_max_tokens"] = "lower_budget"
    answer_tokens: int = 1024
    schema_to_json_object: bool = True
    json_tool_name: str = "json_output"

    def __post_init__(self) -> None:
        if self.answer_tokens < 1:
            raise ValueError(f"answer_tokens must be at least 1, not {self.answer_tokens}")


DEFAULT_POLICY = Policy()
