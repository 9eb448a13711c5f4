"""Detectors that a policy defines: named regular expressions and named word lists."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import ahocorasick  # type: ignore[import-not-found]  # the package ships no stubs

from smartflow.core.errors import ConfigError
from smartflow.policy.detectors._base import Finding, ScanContext, is_spaceless_script
from smartflow.policy.patterns import PolicyRegex, PolicyRegexError, compile_policy_regex

__all__ = ["CustomPatternDetector", "WordListDetector", "validate_entity_name"]

_ENTITY_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


def validate_entity_name(name: str) -> str:
    """Return ``name`` upper-cased, or raise ConfigError if it is not a valid entity name.

    Entity names become redaction labels and placeholders (``[EMPLOYEE_ID]``,
    ``<EMPLOYEE_ID_1>``), so they are limited to letters, digits and underscores.
    """
    upper = name.upper()
    if not _ENTITY_NAME.fullmatch(upper):
        raise ConfigError(
            f"invalid entity name {name!r}: use a letter followed by up to 63 letters, "
            "digits or underscores",
            param="entity",
        )
    return upper


class CustomPatternDetector:
    """Regular expressions from the policy, each reporting its own entity name.

    A pattern with a named group ``value`` reports only that group, so context can be part
    of the match (``employee id: (?P<value>E\\d{6})``).
    """

    keywords: Mapping[str, tuple[str, ...]] = {}
    anchors: Mapping[str, tuple[str, ...]] = {}

    def __init__(self, patterns: Mapping[str, str]) -> None:
        compiled: list[tuple[str, PolicyRegex]] = []
        for name, pattern in patterns.items():
            entity = validate_entity_name(name)
            try:
                regex = compile_policy_regex(pattern)
            except PolicyRegexError as exc:
                raise ConfigError(
                    f"custom entity {entity}: {exc}", param="custom_patterns"
                ) from exc
            compiled.append((entity, regex))
        self._patterns = tuple(compiled)
        self.entities = frozenset(entity for entity, _ in compiled)

    def find(self, scan: ScanContext) -> list[Finding]:
        findings: list[Finding] = []
        text = scan.text
        for entity, regex in self._patterns:
            for start, end in regex.spans(text):
                if start < end:
                    findings.append(Finding(entity, start, end, text[start:end]))
        return findings


def _is_boundary(text: str, index: int, edge_char: str) -> bool:
    """Return whether ``text[index]`` (a neighbour of a match) ends the word there."""
    if index < 0 or index >= len(text):
        return True
    neighbour = text[index]
    if not (neighbour.isalnum() or neighbour == "_"):
        return True
    return is_spaceless_script(neighbour) or is_spaceless_script(edge_char)


class WordListDetector:
    """Word lists from the policy, matched case-insensitively as whole words.

    Whole-word matching does not apply next to CJK, kana, Hangul or Thai characters,
    because those scripts do not put spaces between words.
    """

    keywords: Mapping[str, tuple[str, ...]] = {}
    anchors: Mapping[str, tuple[str, ...]] = {}

    def __init__(self, word_lists: Mapping[str, Iterable[str]]) -> None:
        self._automaton = ahocorasick.Automaton()
        entities: set[str] = set()
        entries: dict[str, list[str]] = {}
        for name, words in word_lists.items():
            entity = validate_entity_name(name)
            entities.add(entity)
            for word in words:
                key = word.strip().lower()
                if key and entity not in entries.setdefault(key, []):
                    entries[key].append(entity)
        for key, key_entities in entries.items():
            self._automaton.add_word(key, (len(key), tuple(key_entities)))
        self._empty = not entries
        if not self._empty:
            self._automaton.make_automaton()
        self.entities = frozenset(entities)

    def find(self, scan: ScanContext) -> list[Finding]:
        if self._empty:
            return []
        text = scan.text
        findings: list[Finding] = []
        for last, (length, key_entities) in self._automaton.iter(scan.lower):
            end = last + 1
            start = end - length
            if not (
                _is_boundary(text, start - 1, text[start])
                and _is_boundary(text, end, text[end - 1])
            ):
                continue
            for entity in key_entities:
                findings.append(Finding(entity, start, end, text[start:end]))
        return findings
