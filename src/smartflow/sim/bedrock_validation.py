"""Helpers that word request-validation failures the way Bedrock's two layers do.

Bedrock checks a Converse request first against the service model's constraints and
reports them in the AWS (Coral) style, with 1-based list positions::

    1 validation error detected: Value '1.5' at 'inferenceConfig.temperature' failed to
    satisfy constraint: Member must have value less than or equal to 1

Its own semantic checks then use 0-based positions (``messages.0.content.1``).
InvokeModel bodies are checked against each model's JSON schema and reported as
``Malformed input request: #/path: problem, please reformat your input and try again.``
"""

from __future__ import annotations

from typing import Any

from smartflow.sim.bedrock_errors import BedrockError, validation_error
from smartflow.sim.bedrock_models import ModelSpec

__all__ = [
    "MIN_THINKING_BUDGET",
    "ConstraintViolations",
    "claude_thinking_budget",
    "expect_type",
    "malformed_input",
    "type_name",
]


def type_name(value: Any) -> str:
    """Name a JSON value's type as the JSON-schema validator behind InvokeModel does."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int):
        return "Integer"
    if isinstance(value, float):
        return "Number"
    if isinstance(value, str):
        return "String"
    if isinstance(value, list):
        return "JSONArray"
    return "JSONObject"


_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "list": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def expect_type(value: Any, kind: str, path: str) -> None:
    """Raise a ValidationException naming ``path`` unless ``value`` is of JSON type ``kind``.

    NOTE: real Bedrock reports a JSON type mismatch as a SerializationException whose
    message does not name the member. The simulator names it to make failures readable.
    """
    allowed = _PYTHON_TYPES[kind]
    wrong_bool = isinstance(value, bool) and kind in ("integer", "number")
    if not isinstance(value, allowed) or wrong_bool:
        raise validation_error(
            f"Invalid type for '{path}': expected {kind}, found {type_name(value).lower()}."
        )


class ConstraintViolations:
    """Collects service-model constraint failures and raises them as one message."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, value: Any, constraint: str, *, show_value: bool = True) -> None:
        if value is None:
            subject = "Value null at"
        elif show_value:
            subject = f"Value '{_format_value(value)}' at"
        else:
            subject = "Value at"
        self.items.append(f"{subject} '{path}' failed to satisfy constraint: {constraint}")

    def check_range(
        self, path: str, value: float, minimum: float | None, maximum: float | None
    ) -> None:
        if minimum is not None and value < minimum:
            self.add(path, value, f"Member must have value greater than or equal to {minimum}")
        if maximum is not None and value > maximum:
            self.add(path, value, f"Member must have value less than or equal to {maximum}")

    def check_length(
        self, path: str, value: str | list[Any], minimum: int | None, maximum: int | None
    ) -> None:
        if minimum is not None and len(value) < minimum:
            self.add(path, value, f"Member must have length greater than or equal to {minimum}")
        if maximum is not None and len(value) > maximum:
            self.add(path, value, f"Member must have length less than or equal to {maximum}")

    def check_enum(
        self, path: str, value: Any, allowed: list[str], *, show_value: bool = True
    ) -> None:
        if value not in allowed:
            constraint = f"Member must satisfy enum value set: [{', '.join(allowed)}]"
            self.add(path, value, constraint, show_value=show_value)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        count = len(self.items)
        noun = "error" if count == 1 else "errors"
        raise validation_error(f"{count} validation {noun} detected: " + "; ".join(self.items))


def _format_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(item) for item in value) + "]"
    return str(value)


def malformed_input(problem: str) -> BedrockError:
    """Word an InvokeModel body-schema failure, such as ``#: required key [x] not found``."""
    return validation_error(
        f"Malformed input request: {problem}, please reformat your input and try again."
    )


MIN_THINKING_BUDGET = 1024


def claude_thinking_budget(
    thinking: Any, spec: ModelSpec, *, max_tokens: int, temperature: Any
) -> int | None:
    """Check Claude's ``thinking`` request field and return the token budget, if enabled.

    Raises ``ValueError`` with Anthropic's own message; callers add Bedrock's wrapping.
    """
    if thinking is None:
        return None
    if not isinstance(thinking, dict):
        raise ValueError("thinking: Input should be a valid dictionary")
    if not spec.thinking:
        raise ValueError("thinking: Extra inputs are not permitted")
    kind = thinking.get("type")
    if kind == "disabled":
        return None
    if kind not in ("enabled", "adaptive"):
        raise ValueError("thinking.type: Input should be 'enabled', 'adaptive' or 'disabled'")
    default = MIN_THINKING_BUDGET if kind == "adaptive" else None
    budget = thinking.get("budget_tokens", default)
    if not isinstance(budget, int) or isinstance(budget, bool):
        raise ValueError("thinking.enabled.budget_tokens: Field required")
    if budget < MIN_THINKING_BUDGET:
        raise ValueError(
            "thinking.enabled.budget_tokens: Input should be greater than or equal to "
            f"{MIN_THINKING_BUDGET}"
        )
    if max_tokens <= budget:
        raise ValueError("`max_tokens` must be greater than `thinking.budget_tokens`.")
    if temperature not in (None, 1):
        raise ValueError("`temperature` may only be set to 1 when thinking is enabled.")
    return budget
