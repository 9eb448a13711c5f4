"""The decision record of one request and its compact header form, which contain no values."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from smartflow.core.errors import SmartflowError

__all__ = [
    "POLICY_HEADER",
    "Decision",
    "PolicyCounters",
    "PolicyEvaluationFailed",
    "ResidencyRejected",
    "RuleHit",
]

POLICY_HEADER = "x-smartflow-policy"


class PolicyEvaluationFailed(SmartflowError):
    """A detector or rule raised, and the policy fails closed, so the text was not let through."""

    status = 500
    code = "policy_evaluation_failed"
    log_level = logging.ERROR


class ResidencyRejected(SmartflowError):
    """No deployment of the model is allowed for the request's classification labels."""

    status = 403
    code = "residency_violation"
    log_level = logging.INFO


@dataclass(frozen=True, slots=True)
class RuleHit:
    """A content rule that fired: its document, name, kind, direction and match count."""

    policy: str
    rule: str
    kind: str
    direction: str
    count: int
    enforced: bool


@dataclass(slots=True)
class Decision:
    """The record of what the policies did to one request and its response, without values.

    ``request_entities`` and ``response_entities`` count the findings of every entity type
    that a rule or label mapping in scope names, enforced or not. ``actions`` maps each
    entity type that was acted on to its action; it stays empty in audit mode.
    """

    policies: tuple[str, ...] = ()
    audit_policies: tuple[str, ...] = ()
    labels: set[str] = field(default_factory=set)
    request_entities: Counter[str] = field(default_factory=Counter)
    response_entities: Counter[str] = field(default_factory=Counter)
    actions: dict[str, str] = field(default_factory=dict)
    rules: list[RuleHit] = field(default_factory=list)
    blocked_by: str | None = None
    """``<document>/<rule or entity type>`` that blocked the request or response."""
    errors: int = 0
    """Evaluation errors let through because every policy in scope fails open."""
    store_bodies: bool = True
    """False when a compliance rule for one of ``labels`` forbids storing bodies."""
    residency: str | None = None
    """The compliance rules that narrowed the deployments, as ``label:document`` names."""

    @property
    def enforced(self) -> bool:
        return bool(self.policies) and set(self.policies) != set(self.audit_policies)

    def record_rule(self, hit: RuleHit) -> None:
        """Add ``hit`` unless the same rule already fired in the same direction."""
        for index, existing in enumerate(self.rules):
            if (existing.policy, existing.rule, existing.direction) == (
                hit.policy,
                hit.rule,
                hit.direction,
            ):
                if hit.count > existing.count:
                    self.rules[index] = hit
                return
        self.rules.append(hit)

    def header(self) -> str:
        """Render the decision for the ``x-smartflow-policy`` header, or ``none``.

        Items are ``key=value`` pairs joined by ``;``: the policies in scope, entity counts
        per direction as ``TYPE:count``, the actions, the content rules that fired, the
        labels, the compliance rules applied, whether bodies may be stored, what blocked,
        audit-mode policies, and evaluation errors let through.
        """
        if not self.policies:
            return "none"
        items = [f"policies={','.join(self.policies)}"]
        if self.request_entities:
            items.append(f"request={_counts(self.request_entities)}")
        if self.response_entities:
            items.append(f"response={_counts(self.response_entities)}")
        if self.actions:
            actions = ",".join(
                f"{entity}:{self.actions[entity]}" for entity in sorted(self.actions)
            )
            items.append(f"actions={actions}")
        if self.rules:
            items.append("rules=" + ",".join(f"{hit.policy}/{hit.rule}" for hit in self.rules))
        if self.labels:
            items.append(f"labels={','.join(sorted(self.labels))}")
        if self.residency:
            items.append(f"residency={self.residency}")
        if not self.store_bodies:
            items.append("store_bodies=false")
        if self.blocked_by:
            items.append(f"blocked={self.blocked_by}")
        if self.audit_policies:
            items.append(f"audit={','.join(self.audit_policies)}")
        if self.errors:
            items.append(f"errors={self.errors}")
        return ";".join(items)


def _counts(counter: Counter[str]) -> str:
    return ",".join(f"{entity}:{counter[entity]}" for entity in sorted(counter))


@dataclass(slots=True)
class PolicyCounters:
    """Totals since the evaluator was compiled, for logs and metrics."""

    requests: int = 0
    blocked: int = 0
    rewritten: int = 0
    residency_rejected: int = 0
    errors_blocked: int = 0
    """Evaluation errors that blocked a request or response (failure: closed)."""
    errors_let_through: int = 0
    """Evaluation errors that let the text through (failure: open, or audit mode)."""
