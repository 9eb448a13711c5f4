"""Change records, the recorder that collects them, and their header and JSON forms."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from smartflow.core.errors import InvalidRequest
from smartflow.normalize.rules import KEPT_RULES

__all__ = ["Change", "Recorder", "changes_to_dicts", "report_header"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._:+-]")
_MAX_TOKEN_CHARS = 40
# Parameters whose values identify a person; reports show them as "*".
_REDACTED = frozenset({"user"})


@dataclass(frozen=True, slots=True)
class Change:
    """The record of one rule applied to one parameter.

    ``before`` is the value the rule received and ``after`` the value it produced
    (``None`` when the parameter was dropped). ``into`` names the parameter that
    receives a derived value when it is not ``param`` itself. ``wire`` is the target's
    name for the parameter. ``source`` is ``request``, ``pinned`` or ``profile``.
    """

    param: str
    rule: str
    before: Any
    after: Any
    reason: str
    wire: str | None = None
    source: str = "request"
    into: str | None = None


class Recorder:
    """Collects the accounting of one normalize call.

    In strict mode every rule that would change the request raises ``InvalidRequest``
    naming the parameter and the target's limit. ``pin`` does not raise, because pinned
    tunings come from configuration rather than from the caller.
    """

    __slots__ = ("entries", "model", "strict")

    def __init__(self, model: str, strict: bool) -> None:
        self.entries: list[Change] = []
        self.model = model
        self.strict = strict

    def keep(self, param: str, rule: str, value: Any, wire: str | None, source: str) -> None:
        self.entries.append(Change(param, rule, value, value, "", wire, source))

    def change(
        self,
        param: str,
        rule: str,
        before: Any,
        after: Any,
        reason: str,
        *,
        wire: str | None = None,
        source: str = "request",
        into: str | None = None,
    ) -> None:
        if self.strict and rule != "pin":
            if before is None:
                # A value the target needs but the request left unset, such as a default.
                raise InvalidRequest(
                    f"{param} is not set, and {self.model} needs a value: {reason}. Strict "
                    f"mode adds nothing; set {param} or turn strict mode off.",
                    param=param,
                )
            raise InvalidRequest(
                f"{param}={_describe(before)} cannot be sent to {self.model} unchanged: "
                f"{reason}. Strict mode changes nothing; fix the request or turn strict "
                "mode off.",
                param=param,
            )
        self.entries.append(Change(param, rule, before, after, reason, wire, source, into))

    def reject(self, param: str, value: Any, reason: str) -> None:
        """Raise ``InvalidRequest`` because no rule keeps the meaning of ``value``."""
        raise InvalidRequest(
            f"{param}={_describe(value)} cannot be sent to {self.model}: {reason}.",
            param=param,
        )


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return f"[{len(value)} items]"
    return repr(value)


def _token(value: Any) -> str:
    """Render one value for the header: ASCII, no separators, bounded length."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(round(value, 6))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return str(len(value))
    return _UNSAFE.sub("_", str(value))[:_MAX_TOKEN_CHARS]


def _entry(change: Change) -> str:
    if change.param in _REDACTED:
        before = "" if change.before is None else "*"
        after = "" if change.after is None else "*"
    else:
        before = _token(change.before)
        after = _token(change.after)
    if change.into is not None:
        after = f"{change.into}:{after}"
    if change.rule == "drop":
        body = before
    elif change.rule == "default":
        body = after
    elif change.before is None:
        body = f"->{after}"
    else:
        body = f"{before}->{after}"
    return f"{change.param}={change.rule}({body})"


def report_header(changes: list[Change], max_length: int = 1024) -> str:
    """Render changes as a compact header value, e.g. ``temperature=clamp(1.5->1.0)``.

    Entries are joined by ``;``. Kept parameters are skipped, lists show their length
    and ``user`` values show as ``*``. The value is printable ASCII without spaces, so
    it is safe in an HTTP header. When it would exceed
    ``max_length`` characters, the tail becomes ``more=N`` with the count left out.
    """
    entries = [_entry(c) for c in changes if c.rule not in KEPT_RULES]
    header = ";".join(entries)
    if len(header) <= max_length:
        return header
    shown: list[str] = []
    used = 0
    for position, entry in enumerate(entries):
        suffix = f";more={len(entries) - position}"
        if used + len(entry) + 1 + len(suffix) > max_length:
            return ";".join(shown) + (suffix if shown else suffix[1:])
        shown.append(entry)
        used += len(entry) + 1
    return ";".join(shown)


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(item) for item in value]
    return str(value)


def _redact(param: str, value: Any) -> Any:
    if param in _REDACTED and value is not None:
        return "*"
    return _json_value(value)


def changes_to_dicts(changes: list[Change]) -> list[dict[str, Any]]:
    """Return the changes as JSON-ready dicts for the usage event.

    Values of ``user`` become ``"*"``, because they identify a person.
    """
    return [
        {
            "param": c.param,
            "rule": c.rule,
            "before": _redact(c.param, c.before),
            "after": _redact(c.param, c.after),
            "into": c.into,
            "reason": c.reason,
            "wire": c.wire,
            "source": c.source,
        }
        for c in changes
    ]
