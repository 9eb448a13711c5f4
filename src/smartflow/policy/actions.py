"""Actions that rewrite text at the findings: redact, mask, tokenize and detokenize, block."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from smartflow.core.errors import PolicyViolation
from smartflow.policy.detectors import Finding

__all__ = [
    "Action",
    "ActionResult",
    "EntityBlocked",
    "TokenVault",
    "apply_actions",
    "block",
    "detokenize",
    "mask",
    "mask_value",
    "redact",
    "tokenize",
]


class Action(StrEnum):
    """The rewrite or block applied to the findings of one entity type."""

    REDACT = "redact"
    MASK = "mask"
    TOKENIZE = "tokenize"
    BLOCK = "block"


class EntityBlocked(PolicyViolation):
    """A request or response contained an entity type that a rule blocks.

    The message names the rule and the entity type, never the value found.
    """

    def __init__(self, rule: str, entity: str) -> None:
        super().__init__(f"Blocked by policy rule {rule!r}: the text contains {entity}.")
        self.rule = rule
        self.entity = entity


def _rewrite(text: str, findings: Sequence[Finding], replace: Callable[[Finding], str]) -> str:
    """Replace each finding's span with ``replace(finding)``.

    ``findings`` must be sorted by start and must not overlap, as ``DetectorSet.find``
    returns them.
    """
    if not findings:
        return text
    parts: list[str] = []
    position = 0
    for finding in findings:
        parts.append(text[position : finding.start])
        parts.append(replace(finding))
        position = finding.end
    parts.append(text[position:])
    return "".join(parts)


def redact(text: str, findings: Sequence[Finding]) -> str:
    """Replace each finding with its entity label, for example ``[EMAIL]``."""
    return _rewrite(text, findings, lambda finding: f"[{finding.entity}]")


_MASK_KEEP = 4
_MASK_MIN_HIDDEN = 4


def mask_value(value: str) -> str:
    """Mask letters and digits with ``*`` except the last four, keeping separators.

    At least four letters or digits are always masked, so a short value keeps fewer than
    four: ``4111 1111 1111 1111`` becomes ``**** **** **** 1111``, ``AB12345`` becomes
    ``****345``.
    """
    alnum_count = sum(1 for char in value if char.isalnum())
    keep = min(_MASK_KEEP, max(0, alnum_count - _MASK_MIN_HIDDEN))
    hide = alnum_count - keep
    out: list[str] = []
    for char in value:
        if char.isalnum():
            out.append("*" if hide > 0 else char)
            hide -= 1
        else:
            out.append(char)
    return "".join(out)


def mask(text: str, findings: Sequence[Finding]) -> str:
    """Replace each finding with ``mask_value`` of it."""
    return _rewrite(text, findings, lambda finding: mask_value(finding.text))


_PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*)_(\d+)>")


@dataclass(slots=True)
class TokenVault(Mapping[str, str]):
    """The placeholders of one request, mapped to the values they replace.

    One vault serves one request and its response: the same value always gets the same
    placeholder, numbered per entity type from 1 (``<EMAIL_1>``, ``<EMAIL_2>``).

    NOTE: a placeholder that the original text already contained (a user typing
    ``<EMAIL_1>``) is restored like any other in the response.
    """

    _originals: dict[str, str] = field(default_factory=dict)
    _placeholders: dict[str, str] = field(default_factory=dict)
    _counters: dict[str, int] = field(default_factory=dict)

    def placeholder_for(self, entity: str, value: str) -> str:
        """Return the placeholder of ``value``, creating one on its first sight."""
        existing = self._placeholders.get(value)
        if existing is not None:
            return existing
        number = self._counters.get(entity, 0) + 1
        self._counters[entity] = number
        placeholder = f"<{entity}_{number}>"
        self._placeholders[value] = placeholder
        self._originals[placeholder] = value
        return placeholder

    @property
    def max_placeholder_length(self) -> int:
        return max((len(placeholder) for placeholder in self._originals), default=0)

    def __getitem__(self, placeholder: str) -> str:
        return self._originals[placeholder]

    def __iter__(self) -> Iterator[str]:
        return iter(self._originals)

    def __len__(self) -> int:
        return len(self._originals)


def tokenize(
    text: str, findings: Sequence[Finding], vault: TokenVault | None = None
) -> tuple[str, TokenVault]:
    """Replace each finding with its placeholder and return the text and the vault.

    Pass the same ``vault`` for every message of a request, so one value gets one
    placeholder across them.
    """
    if vault is None:
        vault = TokenVault()
    active = vault
    rewritten = _rewrite(
        text, findings, lambda finding: active.placeholder_for(finding.entity, finding.text)
    )
    return rewritten, vault


def detokenize(text: str, vault: Mapping[str, str]) -> str:
    """Restore the original values of the vault's placeholders in ``text``.

    Placeholders that are not in the vault are left as they are.
    """
    if not vault or "<" not in text:
        return text
    return _PLACEHOLDER.sub(lambda match: vault.get(match.group(0), match.group(0)), text)


def block(findings: Sequence[Finding], *, rule: str) -> None:
    """Raise EntityBlocked (a PolicyViolation) for the first finding, if there is one."""
    if findings:
        raise EntityBlocked(rule, findings[0].entity)


@dataclass(frozen=True, slots=True)
class ActionResult:
    """The rewritten text, the vault if any finding was tokenized, and counts per entity."""

    text: str
    vault: TokenVault | None
    counts: Mapping[str, int]


def apply_actions(
    text: str,
    findings: Sequence[Finding],
    actions: Mapping[str, Action],
    *,
    rule: str,
    vault: TokenVault | None = None,
) -> ActionResult:
    """Apply each finding's entity action from ``actions``; entities not listed stay as is.

    Blocking is checked first, so a blocked text is never partly rewritten.

    Raises:
        EntityBlocked: a finding's entity has the BLOCK action; it names ``rule``.
    """
    selected = [finding for finding in findings if finding.entity in actions]
    block([finding for finding in selected if actions[finding.entity] is Action.BLOCK], rule=rule)
    token_vault = vault if vault is not None else TokenVault()
    counts: dict[str, int] = {}
    for finding in selected:
        counts[finding.entity] = counts.get(finding.entity, 0) + 1

    def replace(finding: Finding) -> str:
        action = actions[finding.entity]
        if action is Action.REDACT:
            return f"[{finding.entity}]"
        if action is Action.MASK:
            return mask_value(finding.text)
        return token_vault.placeholder_for(finding.entity, finding.text)

    rewritten = _rewrite(text, selected, replace)
    used_vault = token_vault if vault is not None or token_vault else None
    return ActionResult(rewritten, used_vault, counts)
