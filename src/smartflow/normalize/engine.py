"""The normalize step: one call per attempt adapts a canonical request to a target.

The result is a request the target model family accepts, with a full account of every
parameter. The steps run in this order:

1. validate the canonical values and apply pinned tunings;
2. convert the reasoning fields, then settle tool choice and response format;
3. apply each sampling parameter's rule for the resulting reasoning state;
4. apply the cross-parameter rules (``requires``, exclusive groups, thinking budget
   below ``max_tokens``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from smartflow.core.errors import ConfigError, InvalidRequest
from smartflow.core.types import ChatRequest, Sampling
from smartflow.normalize.compiled import CompiledFamily, CompiledParam, ProfileSet
from smartflow.normalize.formats import FormatResult, apply_response_format, apply_tool_choice
from smartflow.normalize.loader import default_profiles
from smartflow.normalize.policy import DEFAULT_POLICY, Policy
from smartflow.normalize.reasoning import ReasoningState, resolve_reasoning
from smartflow.normalize.report import Change, Recorder, report_header
from smartflow.normalize.rules import CANONICAL, EFFORT_RANK, KEPT_RULES, apply_param

__all__ = ["PINNABLE", "Normalized", "normalize", "normalize_detailed"]

_SAMPLING_NAMES = tuple(name for name in CANONICAL if name != "user")
_REASONING_NAMES = ("reasoning_effort", "thinking_budget")
PINNABLE = frozenset((*CANONICAL, *_REASONING_NAMES))


@dataclass(slots=True)
class Normalized:
    """Result of one normalize call.

    ``accounting`` has at least one entry for every parameter set in the request or the
    pinned tunings, and for every parameter the step added. ``json_tool`` names the
    forced tool that replaces the response format and carries the JSON reply. The
    gateway then returns that tool's input as the reply text.
    """

    request: ChatRequest
    accounting: list[Change]
    family: str
    json_tool: str | None = None

    @property
    def changes(self) -> list[Change]:
        """The entries whose rule changed the request (all but ``pass`` and ``rename``)."""
        return [c for c in self.accounting if c.rule not in KEPT_RULES]

    def header(self) -> str:
        return report_header(self.accounting)


def normalize(
    request: ChatRequest,
    target_model: str,
    provider: str,
    *,
    pinned: Mapping[str, Any] | None = None,
    strict: bool = False,
    policy: Policy | None = None,
    profiles: ProfileSet | None = None,
) -> tuple[ChatRequest, list[Change]]:
    """Return the request adapted to ``target_model`` on ``provider`` and the changes made.

    See ``normalize_detailed`` for the arguments and errors.
    """
    result = normalize_detailed(
        request,
        target_model,
        provider,
        pinned=pinned,
        strict=strict,
        policy=policy,
        profiles=profiles,
    )
    return result.request, result.changes


def normalize_detailed(
    request: ChatRequest,
    target_model: str,
    provider: str,
    *,
    pinned: Mapping[str, Any] | None = None,
    strict: bool = False,
    policy: Policy | None = None,
    profiles: ProfileSet | None = None,
) -> Normalized:
    """Adapt ``request`` to ``target_model`` on ``provider`` and account for every parameter.

    ``target_model`` is the provider's model id (for Azure, the deployment's base model,
    whose name the family patterns know). ``pinned`` maps canonical parameter names to
    per-model tunings from configuration. They replace the caller's values before any
    target rule runs, so on a fallback the same pinned values pass through the rules of
    the new target. Setting one of ``reasoning_effort``/``thinking_budget`` in
    ``pinned`` replaces the caller's reasoning setting entirely.

    The input is never mutated. The result contains new lists of messages and tools whose
    items are shared with the input, so treat them as read-only.

    Raises ``InvalidRequest`` for a canonical value that no target accepts, for a
    parameter that has no equivalent on the target (the rule ``reject``), and in strict
    mode for any change other than ``pin``. Raises ``ConfigError`` for an unknown
    provider or an invalid pinned tuning.
    """
    family = (profiles or default_profiles()).family_for(provider, target_model)
    policy = policy or DEFAULT_POLICY
    recorder = Recorder(target_model, strict)
    values, sources = _collect(request)
    if pinned:
        _apply_pinned(values, sources, pinned, recorder)
    state = resolve_reasoning(
        family,
        values.pop("reasoning_effort", None),
        values.pop("thinking_budget", None),
        recorder,
        sources,
    )
    tools, choice = apply_tool_choice(
        family, request.messages, list(request.tools), request.tool_choice, state, recorder
    )
    formats = apply_response_format(
        family, request.response_format, tools, choice, state, recorder, policy
    )
    table = family.table(state.effort, state.active)
    out = _apply_sampling(family, table, values, sources, state, recorder, policy)
    _apply_requires(table, out, sources, recorder)
    _drop_parallel_without_calls(table, out, formats, sources, recorder)
    _apply_exclusive(family, table, out, sources, recorder)
    _fit_budget(family, table, out, state, sources, recorder, policy)
    normalized = _build_request(request, target_model, out, state, formats)
    return Normalized(normalized, recorder.entries, family.id, formats.json_tool)


def _build_request(
    request: ChatRequest,
    target_model: str,
    out: dict[str, Any],
    state: ReasoningState,
    formats: FormatResult,
) -> ChatRequest:
    """Return a copy of ``request`` with the normalized values.

    The constructors are called directly, because ``dataclasses.replace`` costs several
    microseconds on every request. The checks below the function keep the two field
    lists complete when a field is added.
    """
    sampling = Sampling(
        **{name: out.get(name) for name in _SAMPLING_NAMES},
        reasoning_effort=state.effort,
        thinking_budget=state.budget,
    )
    return ChatRequest(
        model=target_model,
        messages=list(request.messages),
        sampling=sampling,
        tools=formats.tools,
        tool_choice=formats.tool_choice,
        response_format=formats.response_format,
        stream=request.stream,
        include_usage=request.include_usage,
        user=out.get("user"),
        metadata=dict(request.metadata),
    )


# _build_request sets every field of these two types; a new field must be added there.
if {f.name for f in fields(Sampling)} != {*_SAMPLING_NAMES, *_REASONING_NAMES}:
    raise AssertionError("_build_request does not set every field of Sampling")
_REQUEST_FIELDS = {"model", "messages", "sampling", "tools", "tool_choice", "response_format"}
_REQUEST_FIELDS |= {"stream", "include_usage", "user", "metadata"}
if {f.name for f in fields(ChatRequest)} != _REQUEST_FIELDS:
    raise AssertionError("_build_request does not set every field of ChatRequest")


def _drop_parallel_without_calls(
    table: dict[str, CompiledParam],
    out: dict[str, Any],
    formats: FormatResult,
    sources: dict[str, str],
    recorder: Recorder,
) -> None:
    """Drop ``parallel_tool_calls`` where no tool call can happen or the wire has no place.

    A target that sends it inside ``tool_choice`` (Anthropic's
    ``disable_parallel_tool_use``) cannot send it with tool choice ``none``, because that
    object has no such field. No tool can be called then, so the value has no effect.
    """
    if "parallel_tool_calls" not in out:
        return
    wire = table["parallel_tool_calls"].wire or ""
    choice = formats.tool_choice
    if not formats.tools:
        reason = "the request has no tools, so parallel tool calls do not apply"
    elif choice is not None and choice.mode == "none" and wire.startswith("tool_choice."):
        reason = (
            f"tool_choice none allows no tool call, and {wire} cannot be sent with it, "
            "so parallel tool calls do not apply"
        )
    else:
        return
    recorder.change(
        "parallel_tool_calls",
        "drop",
        out.pop("parallel_tool_calls"),
        None,
        reason,
        source=sources.get("parallel_tool_calls", "request"),
    )


def _collect(request: ChatRequest) -> tuple[dict[str, Any], dict[str, str]]:
    """Return the set canonical values of the request, validated, and their sources."""
    sampling = request.sampling
    values: dict[str, Any] = {}
    for name in _SAMPLING_NAMES:
        value = getattr(sampling, name)
        if value is not None:
            values[name] = value
    for name in _REASONING_NAMES:
        value = getattr(sampling, name)
        if value is not None:
            values[name] = value
    if request.user is not None:
        values["user"] = request.user
    for name, value in values.items():
        problem = _invalid(name, value)
        if problem:
            raise InvalidRequest(f"{name}={value!r} is invalid: {problem}", param=name)
    return values, {}


def _invalid(name: str, value: Any) -> str | None:
    """Return why ``value`` is no valid canonical value for ``name``, or ``None``."""
    if name == "reasoning_effort":
        if value not in EFFORT_RANK:
            return f"expected one of {', '.join(EFFORT_RANK)}"
        return None
    if name == "thinking_budget":
        if isinstance(value, bool) or not isinstance(value, int) or value < -1:
            return "expected an integer of at least -1 (-1 lets the model decide, 0 is off)"
        return None
    canonical = CANONICAL[name]
    kind = canonical.kind
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "expected a number"
        if not math.isfinite(value):
            return "expected a finite number"
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return "expected an integer"
    elif kind == "bool":
        return None if isinstance(value, bool) else "expected true or false"
    elif kind == "str":
        return None if isinstance(value, str) else "expected a string"
    else:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            return "expected a list of strings"
        return None
    if canonical.minimum is not None and value < canonical.minimum:
        return f"expected at least {canonical.minimum:g}"
    return None


def _apply_pinned(
    values: dict[str, Any],
    sources: dict[str, str],
    pinned: Mapping[str, Any],
    recorder: Recorder,
) -> None:
    """Replace request values with pinned tunings and record each replacement."""
    reason = "pinned tuning for this model from configuration"
    pins_reasoning = any(name in pinned for name in _REASONING_NAMES)
    for name in _REASONING_NAMES:
        if pins_reasoning and name not in pinned and name in values:
            replaced = "a pinned reasoning setting replaces the request's one"
            recorder.change(name, "pin", values.pop(name), None, replaced)
    for name, value in pinned.items():
        if name not in PINNABLE:
            known = ", ".join(sorted(PINNABLE))
            raise ConfigError(
                f"pinned tuning {name!r} is not a canonical parameter; known: {known}"
            )
        problem = _invalid(name, value)
        if problem:
            raise ConfigError(f"pinned tuning {name}={value!r} is invalid: {problem}")
        recorder.change(name, "pin", values.get(name), value, reason, source="pinned")
        values[name] = value
        sources[name] = "pinned"


def _apply_sampling(
    family: CompiledFamily,
    table: dict[str, CompiledParam],
    values: dict[str, Any],
    sources: dict[str, str],
    state: ReasoningState,
    recorder: Recorder,
    policy: Policy,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, param in table.items():
        value = values.get(name)
        if value is None:
            if param.required and param.supported:
                out[name] = _required_default(family, param, state, recorder, policy)
            continue
        new = apply_param(param, value, recorder, policy, sources.get(name, "request"))
        if new is not None:
            out[name] = new
    return out


def _required_default(
    family: CompiledFamily,
    param: CompiledParam,
    state: ReasoningState,
    recorder: Recorder,
    policy: Policy,
) -> Any:
    """Return the profile default of a required parameter, leaving room for thinking."""
    value = param.default
    reason = f"{family.id} requires {param.name}; the profile default is {value}"
    budget = state.budget or 0
    if param.name == "max_tokens" and family.reasoning.below_max_tokens and budget >= value:
        value = budget + policy.answer_tokens
        if param.high is not None:
            value = min(value, int(param.high))
        reason += f", raised to {value} to leave room for the thinking budget"
    recorder.change(param.name, "default", None, value, reason, wire=param.wire, source="profile")
    return value


def _apply_requires(
    table: dict[str, CompiledParam],
    out: dict[str, Any],
    sources: dict[str, str],
    recorder: Recorder,
) -> None:
    """Set or check the boolean parameter another one needs (top_logprobs needs logprobs)."""
    for name in list(out):
        needed = table[name].requires
        if needed is None or out.get(needed) is True:
            continue
        source = sources.get(name, "request")
        if needed in out or not table[needed].supported:
            reason = f"{name} needs {needed} set to true, which the request or the target rules out"
            recorder.change(name, "drop", out.pop(name), None, reason, source=source)
            continue
        reason = f"{name} needs {needed} set to true"
        recorder.change(
            needed, "derive", None, True, reason, wire=table[needed].wire, source=source
        )
        out[needed] = True


def _apply_exclusive(
    family: CompiledFamily,
    table: dict[str, CompiledParam],
    out: dict[str, Any],
    sources: dict[str, str],
    recorder: Recorder,
) -> None:
    """Keep one parameter of each exclusive group.

    The preferred one stays, unless it is at the target's default and another one is
    not: then that other one stays, because it is the one that has an effect.
    """
    for params, prefer, reason in family.exclusive:
        present = [name for name in params if name in out]
        if len(present) < 2:
            continue
        keep = prefer if prefer in out else present[0]
        explanation = f"; {keep} is the preferred one"
        if out.get(prefer) == table[prefer].default:
            active = [n for n in present if n != prefer and out[n] != table[n].default]
            if active:
                keep = active[0]
                explanation = f"; {keep} is kept because {prefer} is at its default"
        for name in present:
            if name != keep:
                recorder.change(
                    name,
                    "drop",
                    out.pop(name),
                    None,
                    reason + explanation,
                    source=sources.get(name, "request"),
                )


def _fit_budget(
    family: CompiledFamily,
    table: dict[str, CompiledParam],
    out: dict[str, Any],
    state: ReasoningState,
    sources: dict[str, str],
    recorder: Recorder,
    policy: Policy,
) -> None:
    """Make a thinking budget that must be below ``max_tokens`` fit, per the policy.

    ``lower_budget`` lowers the budget to ``max_tokens - answer_tokens``. When that is
    below the target's minimum budget, the budget becomes the minimum and ``max_tokens``
    rises to the minimum plus ``answer_tokens``. ``raise_max_tokens`` raises
    ``max_tokens`` to the budget plus ``answer_tokens``, up to the target's maximum, and
    lowers the budget only if that maximum forces it.
    """
    reasoning = family.reasoning
    budget = state.budget
    limit = out.get("max_tokens")
    if not reasoning.below_max_tokens or not budget or budget < 0 or limit is None:
        return
    if budget < limit:
        return
    reserve = policy.answer_tokens
    high = table["max_tokens"].high
    minimum = int(reasoning.budget_min or 1)
    if policy.thinking_fit == "raise_max_tokens":
        new_limit = budget + reserve
        if high is not None:
            new_limit = min(new_limit, int(high))
        new_budget = min(budget, new_limit - reserve)
    else:
        new_limit = limit
        new_budget = limit - reserve
    if new_budget < minimum:
        new_budget = minimum
        new_limit = max(new_limit, minimum + reserve)
    reason = (
        f"{family.id} needs the thinking budget below max_tokens; policy "
        f"{policy.thinking_fit} leaves {reserve} tokens for the answer"
    )
    if new_budget != budget:
        recorder.change(
            "thinking_budget",
            "clamp",
            budget,
            new_budget,
            reason,
            wire=reasoning.wire,
            source=state.source,
        )
        state.budget = new_budget
    if new_limit != limit:
        recorder.change(
            "max_tokens",
            "derive",
            limit,
            new_limit,
            reason,
            wire=table["max_tokens"].wire,
            source=sources.get("max_tokens", "request"),
            into=None,
        )
        out["max_tokens"] = new_limit
