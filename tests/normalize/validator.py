"""A validator of normalized requests built directly from the profile data.

It reads the resolved pydantic specs, not the compiled tables the engine uses, so a
bug in compiling or applying the rules shows up as a violation here.
"""

from __future__ import annotations

import re
from typing import Any

from smartflow.core.types import ChatRequest
from smartflow.normalize.schema import ParamSpec, ResolvedFamily

SAMPLING_PARAMS = (
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "stop",
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "n",
    "logprobs",
    "top_logprobs",
    "parallel_tool_calls",
)


def _effective(spec: ResolvedFamily, name: str, active: bool, effort: str | None) -> ParamSpec:
    layers: list[dict[str, ParamSpec]] = []
    if active:
        layers.append(spec.when_reasoning)
    if effort is not None and effort in spec.when_effort:
        layers.append(spec.when_effort[effort])
    param = spec.params[name]
    for layer in layers:
        overlay = layer.get(name)
        if overlay is None:
            continue
        data = param.model_dump()
        data.update({field: getattr(overlay, field) for field in overlay.model_fields_set})
        param = ParamSpec(**data)
    return param


def _reasoning_problems(spec: ResolvedFamily, request: ChatRequest) -> tuple[list[str], bool]:
    """Return the reasoning problems and whether the model will reason."""
    rule = spec.reasoning
    effort = request.sampling.reasoning_effort
    budget = request.sampling.thinking_budget
    problems: list[str] = []

    if rule.mode == "none":
        if effort is not None or budget is not None:
            problems.append("reasoning field set on a family without reasoning")
        return problems, False
    if rule.mode == "effort":
        if budget is not None:
            problems.append("thinking_budget set on an effort family")
        if effort is None:
            return problems, rule.default_active
        if effort not in rule.efforts:
            problems.append(f"effort {effort} not in {rule.efforts}")
        return problems, effort != "none"

    if effort is not None:
        problems.append("reasoning_effort set on a budget family")
    if budget is None:
        return problems, rule.default_active
    if budget == 0:
        if not rule.allow_disable:
            problems.append("budget 0 on a family that cannot turn thinking off")
        return problems, False
    if budget == -1:
        if not rule.allow_dynamic:
            problems.append("budget -1 on a family without dynamic budgets")
        return problems, True

    if rule.budget_min is not None and budget < rule.budget_min:
        problems.append(f"budget {budget} below {rule.budget_min}")
    if rule.budget_max is not None and budget > rule.budget_max:
        problems.append(f"budget {budget} above {rule.budget_max}")
    limit = request.sampling.max_tokens
    if rule.budget_below_max_tokens and (limit is None or budget >= limit):
        problems.append(f"budget {budget} not below max_tokens {limit}")
    return problems, True


def _param_problems(name: str, value: Any, param: ParamSpec, request: ChatRequest) -> list[str]:
    if not param.supported:
        return [f"{name}={value!r} sent to a family without it"]
    problems = []
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if param.min is not None and value < param.min:
            problems.append(f"{name}={value} below {param.min}")
        if param.max is not None and value > param.max:
            problems.append(f"{name}={value} above {param.max}")
    if isinstance(value, list):
        if param.max_items is not None and len(value) > param.max_items:
            problems.append(f"{name} has {len(value)} items, more than {param.max_items}")
        if param.item_pattern is not None:
            bad = [item for item in value if not re.fullmatch(param.item_pattern, item)]
            if bad:
                problems.append(f"{name} items {bad!r} do not match {param.item_pattern}")
    if param.requires is not None and getattr(request.sampling, param.requires) is not True:
        problems.append(f"{name} set without {param.requires}=true")
    return problems


def _format_problems(spec: ResolvedFamily, request: ChatRequest, active: bool) -> list[str]:
    problems = []
    tools = spec.tools
    if request.tools and not tools.supported:
        problems.append("tools sent to a family without tools")
    choice = request.tool_choice
    if choice is not None:
        if not request.tools:
            problems.append("tool_choice without tools")
        if choice.mode not in tools.choice_modes:
            problems.append(f"tool_choice {choice.mode} not in {tools.choice_modes}")
        if choice.mode in ("required", "tool") and active and not spec.reasoning.forced_tool_choice:
            problems.append("forced tool_choice while reasoning")
        if choice.mode == "tool" and choice.name not in {t.name for t in request.tools}:
            problems.append(f"tool_choice names missing tool {choice.name}")
    response_format = request.response_format
    if response_format is not None and response_format.type != "text":
        options = getattr(spec.response_format, response_format.type)
        if "native" not in options:
            problems.append(f"response_format {response_format.type} is not native here")
        if request.tools and not spec.response_format.with_tools:
            problems.append("response_format together with tools")
    return problems


def violations(spec: ResolvedFamily, request: ChatRequest) -> list[str]:
    """Return every way ``request`` breaks the constraints of family ``spec``."""
    problems, active = _reasoning_problems(spec, request)
    effort = request.sampling.reasoning_effort
    values = {name: getattr(request.sampling, name) for name in SAMPLING_PARAMS}
    values["user"] = request.user
    for name, value in values.items():
        param = _effective(spec, name, active, effort)
        if value is None:
            if param.required:
                problems.append(f"required {name} missing")
            continue
        problems += _param_problems(name, value, param, request)
    for group in spec.exclusive:
        present = [name for name in group.params if values.get(name) is not None]
        if len(present) > 1:
            problems.append(f"exclusive parameters {present} sent together")
    problems += _format_problems(spec, request, active)
    return problems
