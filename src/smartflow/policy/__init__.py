"""Policy engine hot path: PII and secret detection, content rules, rewrite actions and
the streaming hold-back window. Pure functions and small classes, no I/O."""

from __future__ import annotations

from smartflow.policy.actions import (
    Action,
    ActionResult,
    EntityBlocked,
    TokenVault,
    apply_actions,
    block,
    detokenize,
    mask,
    mask_value,
    redact,
    tokenize,
)
from smartflow.policy.content import (
    ContentMatch,
    ContentRules,
    RegexRule,
    RuleKind,
    TopicRule,
    WordRule,
)
from smartflow.policy.detectors import (
    BUILTIN_ENTITIES,
    PII_ENTITIES,
    SECRET_ENTITIES,
    Detector,
    DetectorSet,
    Finding,
)
from smartflow.policy.streaming import StreamDetokenizer, StreamScanner

__all__ = [
    "BUILTIN_ENTITIES",
    "PII_ENTITIES",
    "SECRET_ENTITIES",
    "Action",
    "ActionResult",
    "ContentMatch",
    "ContentRules",
    "Detector",
    "DetectorSet",
    "EntityBlocked",
    "Finding",
    "RegexRule",
    "RuleKind",
    "StreamDetokenizer",
    "StreamScanner",
    "TokenVault",
    "TopicRule",
    "WordRule",
    "apply_actions",
    "block",
    "detokenize",
    "mask",
    "mask_value",
    "redact",
    "tokenize",
]
