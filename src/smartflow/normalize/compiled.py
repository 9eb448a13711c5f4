"""Profiles precompiled into lookup tables for the request path.

Compiling turns each resolved family into plain slotted objects with the reason
texts already rendered, so ``normalize`` does dictionary lookups and comparisons
only. ``ProfileSet.family_for`` caches the family of each (provider, model) pair.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from smartflow.core.errors import ConfigError
from smartflow.normalize.rules import CANONICAL, EFFORT_RANK, format_number
from smartflow.normalize.schema import ParamSpec, ResolvedFamily

__all__ = ["CompiledFamily", "CompiledParam", "CompiledReasoning", "ProfileSet"]

logger = logging.getLogger(__name__)

# Distinct (provider, model) pairs remembered by ProfileSet.family_for before the
# cache is cleared; model names come from configuration, so the set stays small.
_CACHE_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class CompiledParam:
    """One parameter of one family in one reasoning state, with its reasons rendered."""

    name: str
    supported: bool
    wire: str | None
    kept_rule: str
    low: float | None
    high: float | None
    default: Any
    required: bool
    max_items: int | None
    item_regex: re.Pattern[str] | None
    out_of_range: str
    on_unsupported: str
    requires: str | None
    range_reason: str
    unsupported_reason: str
    count_reason: str
    pattern_reason: str


@dataclass(frozen=True, slots=True)
class CompiledReasoning:
    """The reasoning control of a family; see ``ReasoningSpec`` for the fields."""

    mode: str
    wire: str | None
    efforts: tuple[str, ...]
    default_effort: str | None
    default_active: bool
    budget_min: int | None
    budget_max: int | None
    below_max_tokens: bool
    allow_disable: bool
    allow_dynamic: bool
    effort_budgets: dict[str, int]
    forced_tool_choice: bool


@dataclass(slots=True)
class CompiledFamily:
    """A model family ready for the engine: parameter tables per reasoning state."""

    id: str
    provider: str
    spec: ResolvedFamily
    inactive: dict[str, CompiledParam]
    active: dict[str, CompiledParam]
    by_effort: dict[str, dict[str, CompiledParam]]
    reasoning: CompiledReasoning
    exclusive: tuple[tuple[tuple[str, ...], str, str], ...]
    json_object_options: tuple[str, ...]
    json_schema_options: tuple[str, ...]
    format_with_tools: bool
    format_reason: str
    tools_supported: bool
    choice_modes: frozenset[str]
    tools_reason: str

    def table(self, effort: str | None, active: bool) -> dict[str, CompiledParam]:
        """Return the parameter table for the reasoning state of one request."""
        if effort is not None:
            table = self.by_effort.get(effort)
            if table is not None:
                return table
        return self.active if active else self.inactive


def _overlay(base: ParamSpec, overlay: ParamSpec | None) -> ParamSpec:
    """Return ``base`` with the fields that ``overlay`` sets explicitly."""
    if overlay is None:
        return base
    update = {name: getattr(overlay, name) for name in overlay.model_fields_set}
    return base.model_copy(update=update)


def _range_text(spec: ParamSpec, integer: bool) -> str:
    low = None if spec.min is None else format_number(spec.min, integer)
    high = None if spec.max is None else format_number(spec.max, integer)
    if low is not None and high is not None:
        return f"from {low} to {high}"
    if low is not None:
        return f"from {low} up"
    if high is not None:
        return f"up to {high}"
    return "any value"


def _compile_param(family_id: str, name: str, spec: ParamSpec) -> CompiledParam:
    canonical = CANONICAL[name]
    wire = spec.wire or name
    leaf = wire.rsplit(".", 1)[-1]
    detail = f" ({spec.reason})" if spec.reason else ""
    unsupported = f"{family_id} does not accept {name}{detail}"
    integer = canonical.kind == "int"
    range_reason = f"{family_id} accepts {name} {_range_text(spec, integer)}{detail}"
    count = f"{family_id} accepts at most {spec.max_items} {name} items"
    pattern = f"{family_id} accepts only {name} items matching {spec.item_pattern}{detail}"
    regex = re.compile(spec.item_pattern) if spec.item_pattern is not None else None
    return CompiledParam(
        name=name,
        supported=spec.supported,
        wire=wire if spec.supported else None,
        kept_rule="pass" if leaf == name else "rename",
        low=spec.min,
        high=spec.max,
        default=spec.default,
        required=spec.required,
        max_items=spec.max_items,
        item_regex=regex,
        out_of_range=spec.out_of_range or "clamp",
        on_unsupported=spec.on_unsupported or canonical.on_unsupported,
        requires=spec.requires,
        range_reason=range_reason,
        unsupported_reason=unsupported,
        count_reason=count,
        pattern_reason=pattern,
    )


def _compile_table(
    family: ResolvedFamily, *overlays: dict[str, ParamSpec]
) -> dict[str, CompiledParam]:
    table = {}
    for name in CANONICAL:
        spec = family.params[name]
        for overlay in overlays:
            spec = _overlay(spec, overlay.get(name))
        table[name] = _compile_param(family.id, name, spec)
    return table


def _compile_reasoning(family: ResolvedFamily, budgets: dict[str, int]) -> CompiledReasoning:
    spec = family.reasoning
    table = dict(budgets)
    table.update({str(effort): budget for effort, budget in (spec.effort_budgets or {}).items()})
    return CompiledReasoning(
        mode=spec.mode,
        wire=spec.wire,
        efforts=tuple(sorted(spec.efforts, key=EFFORT_RANK.__getitem__)),
        default_effort=spec.default_effort,
        default_active=spec.default_active,
        budget_min=spec.budget_min,
        budget_max=spec.budget_max,
        below_max_tokens=spec.budget_below_max_tokens,
        allow_disable=spec.allow_disable,
        allow_dynamic=spec.allow_dynamic,
        effort_budgets=table,
        forced_tool_choice=spec.forced_tool_choice,
    )


def compile_family(family: ResolvedFamily, budgets: dict[str, int]) -> CompiledFamily:
    """Compile one concrete family; ``budgets`` is the shared effort-to-budget table."""
    # Every effort but ``none`` means reasoning is on, so its overrides stack on the
    # reasoning overrides.
    by_effort: dict[str, dict[str, CompiledParam]] = {
        str(effort): (
            _compile_table(family, overrides)
            if effort == "none"
            else _compile_table(family, family.when_reasoning, overrides)
        )
        for effort, overrides in family.when_effort.items()
    }
    exclusive = tuple(
        (
            tuple(group.params),
            group.prefer,
            f"{family.id} accepts only one of {', '.join(group.params)}"
            + (f" ({group.reason})" if group.reason else ""),
        )
        for group in family.exclusive
    )
    formats = family.response_format
    tools = family.tools
    return CompiledFamily(
        id=family.id,
        provider=family.provider,
        spec=family,
        inactive=_compile_table(family),
        active=_compile_table(family, family.when_reasoning),
        by_effort=by_effort,
        reasoning=_compile_reasoning(family, budgets),
        exclusive=exclusive,
        json_object_options=tuple(formats.json_object),
        json_schema_options=tuple(formats.json_schema),
        format_with_tools=formats.with_tools,
        format_reason=formats.reason or "",
        tools_supported=tools.supported,
        choice_modes=frozenset(tools.choice_modes),
        tools_reason=tools.reason or "",
    )


@dataclass(slots=True)
class _ProviderTable:
    patterns: tuple[tuple[re.Pattern[str], CompiledFamily], ...]
    default: CompiledFamily


@dataclass(slots=True)
class ProfileSet:
    """All compiled families, looked up by provider and model name.

    ``specs`` keeps every resolved family, abstract ones too, for the docs generator
    and for validators built from the profile data. ``order`` lists each provider's
    concrete families in match order and ``default_family`` names its fallback.
    """

    families: dict[str, CompiledFamily]
    specs: dict[str, ResolvedFamily]
    effort_budgets: dict[str, int]
    order: dict[str, tuple[str, ...]] = field(default_factory=dict)
    default_family: dict[str, str] = field(default_factory=dict)
    _providers: dict[str, _ProviderTable] = field(default_factory=dict)
    _cache: dict[tuple[str, str], CompiledFamily] = field(default_factory=dict)

    def add_provider(self, provider: str, order: list[str], default: str) -> None:
        """Register the match order of one provider's families and its default family."""
        patterns = []
        for family_id in order:
            family = self.families[family_id]
            for pattern in family.spec.match:
                patterns.append((re.compile(pattern, re.IGNORECASE), family))
        self._providers[provider] = _ProviderTable(tuple(patterns), self.families[default])
        self.order[provider] = tuple(order)
        self.default_family[provider] = default

    @property
    def providers(self) -> tuple[str, ...]:
        return tuple(self._providers)

    def family_for(self, provider: str, model: str) -> CompiledFamily:
        """Return the first family of ``provider`` whose pattern occurs in ``model``.

        A model that matches no pattern gets the provider's default family. Raises
        ``ConfigError`` for a provider without profiles.
        """
        key = (provider, model)
        family = self._cache.get(key)
        if family is not None:
            return family
        table = self._providers.get(provider)
        if table is None:
            known = ", ".join(sorted(self._providers))
            raise ConfigError(f"no capability profiles for provider {provider!r}; known: {known}")
        family = table.default
        for regex, candidate in table.patterns:
            if regex.search(model):
                family = candidate
                break
        else:
            logger.info(
                "model %r matches no %s family pattern; using default family %s",
                model,
                provider,
                family.id,
            )
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = family
        return family
