"""Shared detector types: the finding, the detector protocol and the per-text scan state."""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import ahocorasick  # type: ignore[import-not-found]  # the package ships no stubs

__all__ = [
    "Detector",
    "Finding",
    "KeywordIndex",
    "ScanContext",
    "is_spaceless_script",
    "lower_same_length",
]


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected value: ``text`` is ``scanned[start:end]``, labelled with its entity type.

    ``repr`` leaves the value out, so logging a finding does not print the value.
    """

    entity: str
    start: int
    end: int
    text: str = field(repr=False)


class Detector(Protocol):
    """A recogniser that the registry runs over a ``ScanContext``.

    ``keywords`` maps a group name to context words matched as whole words. ``anchors`` maps
    a group name to literal prefixes matched anywhere. Both are matched case-insensitively.
    The registry folds them into one shared keyword index, and ``find`` reads their
    positions with ``scan.keyword_hits(group)``. Detectors that use the same group name
    share its hits. A deeper recogniser (for example an NER model) plugs in by implementing
    this protocol.
    """

    @property
    def entities(self) -> frozenset[str]: ...

    @property
    def keywords(self) -> Mapping[str, tuple[str, ...]]: ...

    @property
    def anchors(self) -> Mapping[str, tuple[str, ...]]: ...

    def find(self, scan: ScanContext) -> list[Finding]: ...


def lower_same_length(text: str) -> str:
    """Lower-case ``text`` so that every index still points at the same character.

    ``str.lower`` turns a few characters into two (``"İ"`` becomes ``"i̇"``); those keep only
    the first character of their lower-case form.
    """
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(char.lower()[0] for char in text)


_SPACELESS_RANGES = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3400, 0x4DBF),  # CJK Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xAC00, 0xD7AF),  # Hangul syllables
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0xFF66, 0xFF9F),  # half-width Katakana
)


def is_spaceless_script(char: str) -> bool:
    """Return whether ``char`` belongs to a script written without spaces between words."""
    code = ord(char)
    return any(low <= code <= high for low, high in _SPACELESS_RANGES)


def _is_ascii_alnum(char: str) -> bool:
    return char.isascii() and char.isalnum()


@dataclass(frozen=True, slots=True)
class _KeywordEntry:
    length: int
    groups: tuple[str, ...]
    check_start: bool
    check_end: bool


class KeywordIndex:
    """One Aho-Corasick automaton over the lower-cased keywords and anchors of all detectors.

    A keyword whose first or last character is an ASCII letter or digit must sit on a word
    boundary at that end, so ``dob`` does not fire inside ``adobe``. Keywords in scripts
    written without spaces (``生年月日``) and anchors (literal prefixes such as ``sk-``)
    match anywhere.
    """

    def __init__(
        self,
        keywords: Mapping[str, Iterable[str]],
        anchors: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        by_key: dict[tuple[str, bool], list[str]] = {}
        for whole_word, groups in ((True, keywords), (False, anchors or {})):
            for group, words in groups.items():
                for word in words:
                    key = (lower_same_length(word), whole_word)
                    if key[0] and group not in by_key.setdefault(key, []):
                        by_key[key].append(group)
        entries: dict[str, list[_KeywordEntry]] = {}
        for (word, whole_word), key_groups in by_key.items():
            entry = _KeywordEntry(
                len(word),
                tuple(key_groups),
                whole_word and _is_ascii_alnum(word[0]),
                whole_word and _is_ascii_alnum(word[-1]),
            )
            entries.setdefault(word, []).append(entry)
        self._automaton = ahocorasick.Automaton()
        for word, word_entries in entries.items():
            self._automaton.add_word(word, tuple(word_entries))
        self._empty = not entries
        if not self._empty:
            self._automaton.make_automaton()

    def scan(self, lowered: str) -> dict[str, list[tuple[int, int]]]:
        """Return the ``(start, end)`` spans of every keyword in ``lowered``, by group."""
        hits: dict[str, list[tuple[int, int]]] = {}
        if self._empty:
            return hits
        size = len(lowered)
        for last, entries in self._automaton.iter(lowered):
            end = last + 1
            for entry in entries:
                start = end - entry.length
                if entry.check_start and start > 0 and _is_ascii_alnum(lowered[start - 1]):
                    continue
                if entry.check_end and end < size and _is_ascii_alnum(lowered[end]):
                    continue
                for group in entry.groups:
                    hits.setdefault(group, []).append((start, end))
        return hits


# A digit followed by six or more digits or separators from " -.()": the one scan that
# finds candidates for card numbers, phone numbers, social security numbers and IPv4
# addresses. A cluster may end in separators; each detector matches its own shape inside.
# Digits are ASCII or full-width (as typed in Japanese and Chinese text); an explicit class
# scans about a third faster than the Unicode-wide \d.
_NUMERIC_CLUSTER = re.compile(r"[0-9\uff10-\uff19][0-9\uff10-\uff19 \-.()]{6,}")


class ScanContext:
    """Per-text state that detectors share: lower-cased text, keyword hits, numeric clusters.

    Each part is computed on first use, once per scanned text. ``claimed`` collects the spans
    that earlier detectors found, so a costly later detector can skip them.
    """

    __slots__ = (
        "_claimed_count",
        "_claimed_max_ends",
        "_claimed_starts",
        "_hits",
        "_index",
        "_lower",
        "_runs",
        "claimed",
        "text",
    )

    def __init__(self, text: str, index: KeywordIndex | None) -> None:
        self.text = text
        self.claimed: list[tuple[int, int]] = []
        self._index = index
        self._lower: str | None = None
        self._hits: dict[str, list[tuple[int, int]]] | None = None
        self._runs: list[tuple[int, int]] | None = None
        self._claimed_count = -1
        self._claimed_starts: list[int] = []
        self._claimed_max_ends: list[int] = []

    @property
    def lower(self) -> str:
        if self._lower is None:
            self._lower = lower_same_length(self.text)
        return self._lower

    def keyword_hits(self, group: str) -> list[tuple[int, int]]:
        """Return the spans of the keywords of ``group``, in text order."""
        if self._hits is None:
            self._hits = self._index.scan(self.lower) if self._index is not None else {}
        return self._hits.get(group, [])

    def keyword_before(self, group: str, position: int, distance: int) -> bool:
        """Return whether a keyword of ``group`` ends within ``distance`` characters before
        ``position``."""
        return any(
            end <= position and position - end <= distance for _, end in self.keyword_hits(group)
        )

    def numeric_clusters(self) -> list[tuple[int, int]]:
        """Return the spans of clusters of seven or more digits and separators."""
        if self._runs is None:
            self._runs = [match.span() for match in _NUMERIC_CLUSTER.finditer(self.text)]
        return self._runs

    def overlaps_claimed(self, start: int, end: int) -> bool:
        """Return whether ``[start, end)`` overlaps a span in ``claimed``, in O(log n)."""
        if len(self.claimed) != self._claimed_count:
            self._index_claimed()
        # Spans that start before ``end`` are a prefix of the sorted list; one of them
        # overlaps if the furthest end among them lies past ``start``.
        count = bisect.bisect_left(self._claimed_starts, end)
        return count > 0 and self._claimed_max_ends[count - 1] > start

    def _index_claimed(self) -> None:
        ordered = sorted(self.claimed)
        self._claimed_starts = [claimed_start for claimed_start, _ in ordered]
        self._claimed_max_ends = list(itertools.accumulate((end for _, end in ordered), max))
        self._claimed_count = len(self.claimed)
