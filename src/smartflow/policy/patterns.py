"""Regular expressions from policy documents, matched in linear time with RE2.

A policy author's pattern runs on every prompt and response, on the event loop. Python's
``re`` backtracks, so a pattern such as ``(a+)+$`` can take minutes on a short input and
stall every request of the instance. RE2 matches in time linear in the input, and rejects
the features that need backtracking: backreferences and lookaround. Its syntax is otherwise
close to Python's; one difference authors may notice is that ``\\d`` and ``\\w`` match ASCII
characters only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import re2  # type: ignore[import-untyped]  # google-re2 ships no stubs

__all__ = ["PolicyRegex", "PolicyRegexError", "compile_policy_regex"]

_VALUE_GROUP = "value"


class PolicyRegexError(ValueError):
    """A pattern RE2 cannot compile; the message gives the reason and the fix."""


@dataclass(frozen=True, slots=True)
class PolicyRegex:
    """A compiled policy pattern.

    ``spans`` yields the span of the named group ``value`` when the pattern has one, so
    context can be part of the match without being part of the finding.
    """

    pattern: str
    compiled: Any
    value_group: int

    def spans(self, text: str) -> Iterator[tuple[int, int]]:
        """Yield the ``(start, end)`` of each match in ``text``, left to right."""
        group = self.value_group
        for match in self.compiled.finditer(text):
            yield match.span(group)


def compile_policy_regex(pattern: str, *, ignore_case: bool = False) -> PolicyRegex:
    """Compile ``pattern`` with RE2.

    Raises:
        PolicyRegexError: the pattern is invalid or uses backreferences or lookaround.
    """
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = not ignore_case
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise PolicyRegexError(
            f"invalid regular expression ({detail}). Policy patterns use RE2 syntax, which "
            "matches in linear time and has no backreferences or lookaround"
        ) from None
    return PolicyRegex(pattern, compiled, compiled.groupindex.get(_VALUE_GROUP, 0))
