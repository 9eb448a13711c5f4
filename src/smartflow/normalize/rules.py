"""Rule vocabulary, canonical parameter table and the per-value rule functions.

A rule decides what happens to one canonical parameter on its way to one target
model family; ``RULE_DESCRIPTIONS`` describes each rule. Every change a rule makes
is recorded with a reason that names the target's limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from smartflow.normalize.compiled import CompiledParam
    from smartflow.normalize.policy import Policy
    from smartflow.normalize.report import Recorder

__all__ = [
    "CANONICAL",
    "CHANGE_RULES",
    "EFFORTS",
    "EFFORT_RANK",
    "KEPT_RULES",
    "RULES",
    "RULE_DESCRIPTIONS",
    "SAMPLING_ORDER",
    "CanonicalParam",
    "Rule",
    "apply_param",
    "clamp_value",
    "format_number",
    "is_neutral",
    "scale_value",
]

Rule = Literal[
    "pass", "rename", "pin", "clamp", "scale", "truncate", "derive", "default", "drop", "reject"
]

RULE_DESCRIPTIONS: Final[dict[str, str]] = {
    "pass": "the target takes the value as it is, under the same name.",
    "rename": "the target takes the value as it is, under another wire name.",
    "pin": "a pinned tuning from configuration replaced or added the value.",
    "clamp": (
        "the value was outside the target's range and moved to the nearest bound, or an "
        "effort level the target lacks moved to the nearest level it has."
    ),
    "scale": (
        "the value was mapped linearly from the canonical range onto the target's range "
        "(only when the policy asks for it, per parameter)."
    ),
    "truncate": "a list was cut to the target's maximum count, or lost items the target rejects.",
    "derive": (
        "the value was computed from another parameter: an effort level from a thinking "
        "budget and back, JSON mode from a schema, a forced tool from a schema, or a "
        "max_tokens that leaves room for thinking."
    ),
    "default": "the target requires the parameter and the request did not set it.",
    "drop": "the target has no such parameter, or it conflicts with another one.",
    "reject": "no equivalent keeps the meaning, so the request fails with InvalidRequest.",
}

RULES: Final[tuple[str, ...]] = tuple(RULE_DESCRIPTIONS)

# Rules that keep the value as the request had it; every other rule is a change.
KEPT_RULES: Final[frozenset[str]] = frozenset({"pass", "rename"})
CHANGE_RULES: Final[frozenset[str]] = frozenset(RULES) - KEPT_RULES

# Canonical effort levels from least to most reasoning. ``none`` turns reasoning off.
EFFORTS: Final[tuple[str, ...]] = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
EFFORT_RANK: Final[dict[str, int]] = {name: rank for rank, name in enumerate(EFFORTS)}


@dataclass(frozen=True, slots=True)
class CanonicalParam:
    """A parameter of the canonical request and the facts that hold for every target.

    ``scale_range`` is the canonical range that ``scale`` maps from, which is the
    OpenAI Chat Completions range. ``neutral`` is the value that has no effect, so
    dropping it loses nothing. ``minimum`` is the lowest valid canonical value; a
    lower one is a caller error on every target.
    """

    name: str
    kind: Literal["float", "int", "bool", "str", "str_list"]
    scale_range: tuple[float, float] | None = None
    neutral: Any = None
    minimum: float | None = None
    on_unsupported: Literal["drop", "reject"] = "drop"


# Sampling parameters in the order the engine visits them; ``user`` is a request field.
CANONICAL: Final[dict[str, CanonicalParam]] = {
    p.name: p
    for p in (
        CanonicalParam("temperature", "float", scale_range=(0.0, 2.0), minimum=0.0),
        CanonicalParam("top_p", "float", scale_range=(0.0, 1.0), minimum=0.0),
        CanonicalParam("top_k", "int", minimum=0),
        CanonicalParam("max_tokens", "int", minimum=1),
        CanonicalParam("stop", "str_list", neutral=()),
        CanonicalParam("frequency_penalty", "float", scale_range=(-2.0, 2.0), neutral=0.0),
        CanonicalParam("presence_penalty", "float", scale_range=(-2.0, 2.0), neutral=0.0),
        CanonicalParam("seed", "int"),
        # More than one choice cannot be emulated by one upstream call, so a target
        # without ``n`` rejects n > 1 unless the policy sets drop.
        CanonicalParam("n", "int", neutral=1, minimum=1, on_unsupported="reject"),
        CanonicalParam("logprobs", "bool", neutral=False),
        CanonicalParam("top_logprobs", "int", minimum=0),
        CanonicalParam("parallel_tool_calls", "bool", neutral=True),
        CanonicalParam("user", "str"),
    )
}

SAMPLING_ORDER: Final[tuple[str, ...]] = tuple(CANONICAL)


def clamp_value(value: float, low: float | None, high: float | None) -> float:
    """Return ``value`` moved into ``[low, high]``; a ``None`` bound is open."""
    if low is not None and value < low:
        return low
    if high is not None and value > high:
        return high
    return value


def scale_value(value: float, source: tuple[float, float], low: float, high: float) -> float:
    """Map ``value`` linearly from ``source`` onto ``[low, high]`` and clamp the result.

    The result is rounded to 6 decimal places so reports do not show float noise.
    """
    src_low, src_high = source
    scaled = low + (value - src_low) * (high - low) / (src_high - src_low)
    return round(clamp_value(scaled, low, high), 6)


def format_number(value: float, integer: bool = False) -> str:
    """Format a bound for a message: whole numbers of integer parameters without a
    fraction, other floats with one."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if integer and float(value).is_integer():
        return str(int(value))
    if float(value).is_integer():
        return f"{float(value):.1f}"
    return f"{value:g}"


def is_neutral(name: str, value: Any) -> bool:
    """Return whether ``value`` has no effect, so dropping it loses nothing."""
    if CANONICAL[name].kind == "str_list":
        return not value
    neutral = CANONICAL[name].neutral
    return neutral is not None and value == neutral


def apply_param(
    param: CompiledParam, value: Any, recorder: Recorder, policy: Policy, source: str
) -> Any:
    """Apply the target's rule for one set parameter; return the new value or ``None``."""
    if not param.supported:
        return _apply_unsupported(param, value, recorder, policy, source)
    kind = CANONICAL[param.name].kind
    if kind == "float" or kind == "int":
        return _apply_number(param, value, kind, recorder, policy, source)
    if kind == "str_list":
        return _apply_list(param, value, recorder, policy, source)
    recorder.keep(param.name, param.kept_rule, value, param.wire, source)
    return value


def _apply_unsupported(
    param: CompiledParam, value: Any, recorder: Recorder, policy: Policy, source: str
) -> None:
    name = param.name
    neutral = is_neutral(name, value)
    if not neutral and policy.unsupported_rules.get(name, param.on_unsupported) == "reject":
        recorder.reject(name, value, param.unsupported_reason)
    reason = param.unsupported_reason
    if neutral:
        reason += "; the value has no effect"
    recorder.change(name, "drop", value, None, reason, source=source)
    return None


def _apply_number(
    param: CompiledParam,
    value: float,
    kind: str,
    recorder: Recorder,
    policy: Policy,
    source: str,
) -> float | None:
    name = param.name
    low, high = param.low, param.high
    rule = policy.range_rules.get(name, param.out_of_range)
    source_range = CANONICAL[name].scale_range
    if (
        rule == "scale"
        and not recorder.strict
        and source_range is not None
        and low is not None
        and high is not None
        and (low, high) != source_range
    ):
        scaled = scale_value(value, source_range, low, high)
        new = round(scaled) if kind == "int" else scaled
        if new == value:
            recorder.keep(name, param.kept_rule, value, param.wire, source)
        else:
            reason = (
                f"policy scales {name} linearly from the canonical range "
                f"{format_number(source_range[0])} to {format_number(source_range[1])}; "
                f"{param.range_reason}"
            )
            recorder.change(name, "scale", value, new, reason, wire=param.wire, source=source)
        return new
    if (low is None or value >= low) and (high is None or value <= high):
        recorder.keep(name, param.kept_rule, value, param.wire, source)
        return value
    if rule == "reject":
        recorder.reject(name, value, param.range_reason)
    clamped = clamp_value(value, low, high)
    new = int(clamped) if kind == "int" else float(clamped)
    recorder.change(name, "clamp", value, new, param.range_reason, wire=param.wire, source=source)
    return new


def _apply_list(
    param: CompiledParam, value: list[str], recorder: Recorder, policy: Policy, source: str
) -> list[str] | None:
    name = param.name
    items = value
    if param.item_regex is not None:
        regex = param.item_regex
        items = [item for item in value if regex.fullmatch(item)]
        if not items and value:
            recorder.change(name, "drop", value, None, param.pattern_reason, source=source)
            return None
        if len(items) == len(value):
            items = value
        else:
            recorder.change(
                name, "truncate", value, items, param.pattern_reason, wire=param.wire, source=source
            )
    limit = param.max_items
    if limit is not None and len(items) > limit:
        if policy.stop_overflow == "reject":
            recorder.reject(name, items, param.count_reason)
        if limit == 0:
            recorder.change(name, "drop", items, None, param.count_reason, source=source)
            return None
        # NOTE: nothing enforces the cut sequences on the output, so the model may write
        # past one of them. Choose stop_overflow "reject" where that matters.
        cut = items[:limit]
        recorder.change(
            name, "truncate", items, cut, param.count_reason, wire=param.wire, source=source
        )
        return cut
    if items is value:
        recorder.keep(name, param.kept_rule, value, param.wire, source)
        return list(value)
    return items
