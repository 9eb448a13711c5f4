"""Pydantic schema of the capability profiles, as written in ``profiles/*.yaml``.

A profile document describes one provider: its model families, each matched by
model-name patterns, and for each family the parameters the target accepts. A family
may ``extends`` another one, also of another provider; the loader merges the two
before it validates the result against ``ResolvedFamily``.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from smartflow.normalize.rules import CANONICAL, EFFORTS

__all__ = [
    "PROVIDERS",
    "Confidence",
    "DefaultsDocument",
    "ExclusiveGroup",
    "ParamSpec",
    "ProviderDocument",
    "ReasoningSpec",
    "ResolvedFamily",
    "ResponseFormatSpec",
    "ToolsSpec",
]

PROVIDERS = ("openai", "azure", "anthropic", "bedrock", "gemini", "cohere")

Confidence = Literal["confirmed", "secondary", "unconfirmed"]
Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]
ToolChoiceMode = Literal["auto", "none", "required", "tool"]
JsonObjectOption = Literal["native", "tool"]
JsonSchemaOption = Literal["native", "tool", "json_object"]


def _native_object() -> list[JsonObjectOption]:
    return ["native"]


def _native_schema() -> list[JsonSchemaOption]:
    return ["native"]


def _all_modes() -> list[ToolChoiceMode]:
    return ["auto", "none", "required", "tool"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParamSpec(_Strict):
    """The constraints of one target on one canonical parameter.

    ``min``/``max`` bound numbers; ``max_items`` bounds a list and ``item_pattern`` is a
    regular expression every list item must match. ``out_of_range`` is the target's
    preferred rule for a value outside the range, which a policy may override.
    ``requires`` names a boolean parameter that must be true for this one to count.
    """

    supported: bool = True
    wire: str | None = None
    type: str | None = None
    min: float | None = None
    max: float | None = None
    default: float | int | bool | str | None = None
    required: bool = False
    max_items: int | None = Field(default=None, ge=0)
    item_pattern: str | None = None
    out_of_range: Literal["clamp", "scale", "reject"] | None = None
    on_unsupported: Literal["drop", "reject"] | None = None
    requires: str | None = None
    reason: str | None = None
    confidence: Confidence | None = None

    @model_validator(mode="after")
    def _check_range(self) -> ParamSpec:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if self.requires is not None and self.requires not in CANONICAL:
            raise ValueError(f"requires names an unknown parameter {self.requires!r}")
        return self


class ReasoningSpec(_Strict):
    """The target's reasoning control.

    ``effort`` mode takes a level from ``efforts`` (``none`` among them when reasoning
    can be turned off). ``budget`` mode takes a token budget in
    ``[budget_min, budget_max]``. A budget of 0 turns reasoning off when
    ``allow_disable``, and -1 lets the model decide when ``allow_dynamic``.
    ``default_active`` is true when the model reasons although the request sets nothing.
    ``forced_tool_choice`` is true when a forced ``tool_choice`` is accepted while
    reasoning is on.
    """

    mode: Literal["none", "effort", "budget"] = "none"
    wire: str | None = None
    efforts: list[Effort] = Field(default_factory=list)
    default_effort: Effort | None = None
    default_active: bool = False
    budget_min: int | None = Field(default=None, ge=1)
    budget_max: int | None = Field(default=None, ge=1)
    budget_below_max_tokens: bool = False
    allow_disable: bool = True
    allow_dynamic: bool = False
    effort_budgets: dict[Effort, int] | None = None
    forced_tool_choice: bool = True
    reason: str | None = None
    confidence: Confidence | None = None

    @model_validator(mode="after")
    def _check_mode(self) -> ReasoningSpec:
        if self.mode == "effort" and not self.efforts:
            raise ValueError("effort mode needs a non-empty 'efforts' list")
        if self.mode == "budget" and self.budget_min is None:
            raise ValueError("budget mode needs 'budget_min'")
        if (
            self.budget_min is not None
            and self.budget_max is not None
            and self.budget_min > self.budget_max
        ):
            raise ValueError("budget_min is above budget_max")
        ordered = sorted(self.efforts, key=EFFORTS.index)
        if list(self.efforts) != ordered:
            raise ValueError(f"efforts must be listed from lowest to highest: {ordered}")
        return self


class ResponseFormatSpec(_Strict):
    """Ordered options for each JSON response format; an empty list means none exists.

    ``native`` sends the format as it is. ``tool`` forces a single tool whose input
    schema is the requested schema. ``json_object`` keeps JSON mode but loses the schema.
    ``with_tools`` is false when the target rejects a response format next to tools.
    """

    wire: str | None = None
    json_object: list[JsonObjectOption] = Field(default_factory=_native_object)
    json_schema: list[JsonSchemaOption] = Field(default_factory=_native_schema)
    with_tools: bool = True
    reason: str | None = None
    confidence: Confidence | None = None


class ToolsSpec(_Strict):
    """Whether the target takes tools, and the ``tool_choice`` modes it accepts."""

    supported: bool = True
    wire: str | None = None
    choice_modes: list[ToolChoiceMode] = Field(default_factory=_all_modes)
    reason: str | None = None
    confidence: Confidence | None = None


class ExclusiveGroup(_Strict):
    """Parameters the target rejects together; ``prefer`` names the one kept."""

    params: list[str] = Field(min_length=2)
    prefer: str
    reason: str | None = None
    confidence: Confidence | None = None

    @model_validator(mode="after")
    def _check_prefer(self) -> ExclusiveGroup:
        unknown = [p for p in self.params if p not in CANONICAL]
        if unknown:
            raise ValueError(f"unknown parameters in exclusive group: {unknown}")
        if self.prefer not in self.params:
            raise ValueError(f"prefer {self.prefer!r} is not one of {self.params}")
        return self


def _check_param_names(params: dict[str, Any], where: str) -> None:
    unknown = sorted(set(params) - set(CANONICAL))
    if unknown:
        raise ValueError(f"unknown parameters in {where}: {unknown}; known: {sorted(CANONICAL)}")


class ResolvedFamily(_Strict):
    """One model family after inheritance, ready to compile."""

    id: str
    provider: str
    abstract: bool = False
    description: str | None = None
    match: list[str] = Field(default_factory=list)
    examples: list[str] = Field(default_factory=list)
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    when_reasoning: dict[str, ParamSpec] = Field(default_factory=dict)
    when_effort: dict[Effort, dict[str, ParamSpec]] = Field(default_factory=dict)
    reasoning: ReasoningSpec = Field(default_factory=ReasoningSpec)
    exclusive: list[ExclusiveGroup] = Field(default_factory=list)
    response_format: ResponseFormatSpec = Field(default_factory=ResponseFormatSpec)
    tools: ToolsSpec = Field(default_factory=ToolsSpec)

    @model_validator(mode="after")
    def _check_names(self) -> ResolvedFamily:
        _check_param_names(self.params, f"{self.id} params")
        _check_param_names(self.when_reasoning, f"{self.id} when_reasoning")
        for effort, overrides in self.when_effort.items():
            _check_param_names(overrides, f"{self.id} when_effort.{effort}")
        missing = sorted(set(CANONICAL) - set(self.params))
        if missing and not self.abstract:
            raise ValueError(f"{self.id} does not describe parameters {missing}")
        if not self.abstract and not self.examples:
            raise ValueError(f"{self.id} needs at least one example model name")
        for name, spec in self.params.items():
            if spec.required and spec.default is None:
                raise ValueError(f"{self.id} requires {name} but gives no default")
        return self


class ProviderDocument(_Strict):
    """One profile file before inheritance: raw families stay dicts until merged.

    ``default_family`` may be left out of an override of a provider that already exists.
    """

    provider: Literal["openai", "azure", "anthropic", "bedrock", "gemini", "cohere"]
    default_family: str | None = None
    wire: dict[str, str] = Field(default_factory=dict)
    families: list[dict[str, Any]] = Field(default_factory=list)


class DefaultsDocument(_Strict):
    """Settings shared by all providers: the effort to thinking-budget table."""

    effort_budgets: dict[Effort, int]

    @model_validator(mode="after")
    def _check_table(self) -> DefaultsDocument:
        levels: list[Effort] = [e for e in get_args(Effort) if e != "none"]
        missing = [e for e in levels if e not in self.effort_budgets]
        if missing:
            raise ValueError(f"effort_budgets lacks levels {missing}")
        budgets = [self.effort_budgets[e] for e in levels]
        if budgets != sorted(budgets) or len(set(budgets)) != len(budgets):
            raise ValueError("effort_budgets must grow strictly from minimal to max")
        return self
