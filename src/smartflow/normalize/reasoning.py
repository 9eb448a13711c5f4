"""Reasoning controls: effort levels and thinking budgets across targets.

The canonical request carries ``reasoning_effort`` (``none`` … ``max``) and
``thinking_budget`` (tokens; 0 turns reasoning off; -1 lets the model decide). A target
takes one of the two, or neither. Conversion uses the effort table of the profiles:

- effort to budget: the table's budget for that effort, clamped to the target's range;
  ``none`` becomes 0 where reasoning can be turned off.
- budget to effort: among the levels the target accepts, the one whose table budget
  is nearest on a logarithmic scale. A tie goes to the higher level.
- an effort the target lacks becomes the nearest level it has. A tie goes to the higher
  level, and a request for reasoning never gets ``none``.

When both are set, the one the target takes wins and the other is dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from smartflow.normalize.compiled import CompiledFamily, CompiledReasoning
from smartflow.normalize.report import Recorder
from smartflow.normalize.rules import EFFORT_RANK, clamp_value

__all__ = ["ReasoningState", "disable_reasoning", "resolve_reasoning"]

EFFORT = "reasoning_effort"
BUDGET = "thinking_budget"


@dataclass(slots=True)
class ReasoningState:
    """The reasoning fields of the normalized request and whether the model will reason.

    ``active`` also covers a model that reasons by default when neither field is set.
    """

    effort: str | None
    budget: int | None
    active: bool
    source: str = "request"


def _kept_rule(wire: str | None, name: str) -> str:
    return "pass" if wire is None or wire.rsplit(".", 1)[-1] == name else "rename"


def nearest_effort(reasoning: CompiledReasoning, effort: str) -> str:
    """Return the accepted level nearest to ``effort``; ties go to the higher level."""
    levels = [level for level in reasoning.efforts if level != "none"]
    if effort == "none" or not levels:
        return reasoning.efforts[0] if not levels else levels[0]
    rank = EFFORT_RANK[effort]
    return min(levels, key=lambda level: (abs(EFFORT_RANK[level] - rank), -EFFORT_RANK[level]))


def effort_for_budget(reasoning: CompiledReasoning, budget: int) -> str:
    """Return the accepted level whose table budget is nearest to ``budget`` (log scale)."""
    levels = [level for level in reasoning.efforts if level != "none"]
    if budget == 0:
        return "none" if "none" in reasoning.efforts else levels[0]
    table = reasoning.effort_budgets
    target = math.log(budget)
    return min(
        levels, key=lambda level: (abs(math.log(table[level]) - target), -EFFORT_RANK[level])
    )


def budget_for_effort(reasoning: CompiledReasoning, effort: str) -> int:
    """Return the table budget for ``effort``, clamped to the target's budget range."""
    if effort == "none":
        return 0 if reasoning.allow_disable else int(reasoning.budget_min or 0)
    budget = reasoning.effort_budgets[effort]
    return int(clamp_value(budget, reasoning.budget_min, reasoning.budget_max))


def resolve_reasoning(
    family: CompiledFamily,
    effort: str | None,
    budget: int | None,
    recorder: Recorder,
    sources: dict[str, str],
) -> ReasoningState:
    """Convert the request's reasoning fields to what the target takes, recording why."""
    reasoning = family.reasoning
    if reasoning.mode == "none":
        for name, value in ((EFFORT, effort), (BUDGET, budget)):
            if value is None:
                continue
            reason = f"{family.id} has no reasoning control"
            if value in ("none", 0):
                reason += "; the value turns reasoning off, which is already the case"
            recorder.change(name, "drop", value, None, reason, source=sources.get(name, "request"))
        return ReasoningState(None, None, False)
    if reasoning.mode == "effort":
        return _to_effort(family, effort, budget, recorder, sources)
    return _to_budget(family, effort, budget, recorder, sources)


def _to_effort(
    family: CompiledFamily,
    effort: str | None,
    budget: int | None,
    recorder: Recorder,
    sources: dict[str, str],
) -> ReasoningState:
    reasoning = family.reasoning
    source = sources.get(EFFORT, "request")
    derived = False
    if budget is not None:
        budget_source = sources.get(BUDGET, "request")
        if effort is not None:
            reason = f"{family.id} takes an effort level, and reasoning_effort is set too"
            recorder.change(BUDGET, "drop", budget, None, reason, source=budget_source)
        elif budget == -1:
            reason = f"{family.id} has no dynamic budget; the model's default effort applies"
            recorder.change(BUDGET, "drop", budget, None, reason, source=budget_source)
        else:
            effort = effort_for_budget(reasoning, budget)
            reason = (
                f"{family.id} takes an effort level; {budget} tokens is nearest to {effort} "
                "in the effort table"
            )
            if budget == 0 and effort != "none":
                reason = f"{family.id} cannot turn reasoning off; its lowest level is used"
            recorder.change(
                BUDGET,
                "derive",
                budget,
                effort,
                reason,
                wire=reasoning.wire,
                source=budget_source,
                into=EFFORT,
            )
            derived = True
            source = budget_source
    if effort is None:
        return ReasoningState(None, None, reasoning.default_active)
    if effort not in reasoning.efforts:
        new = nearest_effort(reasoning, effort)
        reason = f"{family.id} accepts reasoning_effort {', '.join(reasoning.efforts)}"
        if effort == "none":
            reason = f"{family.id} cannot turn reasoning off; its lowest level is used"
        recorder.change(EFFORT, "clamp", effort, new, reason, wire=reasoning.wire, source=source)
        effort = new
    elif not derived:
        recorder.keep(EFFORT, _kept_rule(reasoning.wire, EFFORT), effort, reasoning.wire, source)
    return ReasoningState(effort, None, effort != "none", source)


def _to_budget(
    family: CompiledFamily,
    effort: str | None,
    budget: int | None,
    recorder: Recorder,
    sources: dict[str, str],
) -> ReasoningState:
    reasoning = family.reasoning
    source = sources.get(BUDGET, "request")
    if effort is not None:
        effort_source = sources.get(EFFORT, "request")
        if budget is not None:
            reason = f"{family.id} takes a thinking budget, and thinking_budget is set too"
            recorder.change(EFFORT, "drop", effort, None, reason, source=effort_source)
        else:
            budget = budget_for_effort(reasoning, effort)
            if effort == "none" and budget != 0:
                reason = f"{family.id} cannot turn thinking off; its minimum budget is used"
            else:
                reason = (
                    f"{family.id} takes a thinking budget; effort {effort} is {budget} tokens "
                    f"by the effort table and the budget range {_budget_range(reasoning)}"
                )
            recorder.change(
                EFFORT,
                "derive",
                effort,
                budget,
                reason,
                wire=reasoning.wire,
                source=effort_source,
                into=BUDGET,
            )
            return ReasoningState(None, budget, budget != 0, effort_source)
    if budget is None:
        return ReasoningState(None, None, reasoning.default_active)
    return _check_budget(family, budget, recorder, source)


def _budget_range(reasoning: CompiledReasoning) -> str:
    low = reasoning.budget_min
    high = reasoning.budget_max
    return f"{low} to {high} tokens" if high is not None else f"{low} tokens and up"


def _check_budget(
    family: CompiledFamily, budget: int, recorder: Recorder, source: str
) -> ReasoningState:
    reasoning = family.reasoning
    wire = reasoning.wire
    if budget == 0 and not reasoning.allow_disable:
        new = int(reasoning.budget_min or 1)
        reason = f"{family.id} cannot turn thinking off; its minimum budget is used"
        recorder.change(BUDGET, "clamp", budget, new, reason, wire=wire, source=source)
        return ReasoningState(None, new, True, source)
    if budget == -1 and not reasoning.allow_dynamic:
        reason = f"{family.id} has no dynamic budget; the model's default applies"
        recorder.change(BUDGET, "drop", budget, None, reason, source=source)
        return ReasoningState(None, None, reasoning.default_active, source)
    if budget > 0:
        new = int(clamp_value(budget, reasoning.budget_min, reasoning.budget_max))
        if new != budget:
            reason = f"{family.id} accepts thinking budgets from {_budget_range(reasoning)}"
            recorder.change(BUDGET, "clamp", budget, new, reason, wire=wire, source=source)
            return ReasoningState(None, new, True, source)
    recorder.keep(BUDGET, _kept_rule(wire, BUDGET), budget, wire, source)
    return ReasoningState(None, budget, budget != 0, source)


def disable_reasoning(
    family: CompiledFamily, state: ReasoningState, recorder: Recorder, reason: str
) -> bool:
    """Turn reasoning off for a conflict with another parameter; return False if impossible.

    A model that reasons by default gets an explicit off value (effort ``none`` or
    budget 0); otherwise the reasoning field is dropped.
    """
    reasoning = family.reasoning
    before: str | int | None
    if reasoning.mode == "effort" and "none" in reasoning.efforts:
        name, before = EFFORT, state.effort
        effort_off = "none" if reasoning.default_active else None
        state.effort, state.budget = effort_off, None
        off: str | int | None = effort_off
    elif reasoning.mode == "budget" and reasoning.allow_disable:
        name, before = BUDGET, state.budget
        budget_off = 0 if reasoning.default_active else None
        state.effort, state.budget = None, budget_off
        off = budget_off
    else:
        return False
    if off is None:
        recorder.change(name, "drop", before, None, reason, source=state.source)
    else:
        source = state.source if before is not None else "profile"
        recorder.change(name, "derive", before, off, reason, wire=reasoning.wire, source=source)
    state.active = False
    return True
