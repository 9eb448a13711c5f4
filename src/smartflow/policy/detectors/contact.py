"""Email addresses and phone numbers (phone numbers checked by the ``phonenumbers`` matcher)."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence

import phonenumbers

from smartflow.core.errors import ConfigError
from smartflow.policy.detectors._base import Finding, ScanContext

__all__ = ["EMAIL", "PHONE", "EmailDetector", "PhoneNumberDetector"]

EMAIL = "EMAIL"
PHONE = "PHONE"

# ASCII letters and digits plus Latin-1 and Latin Extended-A/B letters, so accented names
# ("renée.dupont@") stay whole while CJK text glued to an address stays outside it.
_LATIN = r"A-Za-z0-9\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u024F"
_EMAIL = re.compile(
    rf"(?<![{_LATIN}._%+\-])"
    rf"[{_LATIN}_%+\-](?:[{_LATIN}._%+\-]{{0,63}})"
    r"@"
    rf"(?:[{_LATIN}](?:[{_LATIN}\-]{{0,61}}[{_LATIN}])?\.)+"
    r"[A-Za-z]{2,24}"
    rf"(?![{_LATIN}\-])"
)
_LOCAL_PART_MAX = 64
_DOMAIN_MAX = 255
_LOCAL_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-"
    + "".join(chr(code) for code in range(0xC0, 0x250) if code not in (0xD7, 0xF7))
)
# "icon@2x.png" is an image name at a screen density, not an address.
_DENSITY_SUFFIX = re.compile(r"@\d+(?:\.\d+)?x\.")


class EmailDetector:
    """Email addresses with a dotted domain and an alphabetic top-level domain."""

    entities = frozenset({EMAIL})
    keywords: Mapping[str, tuple[str, ...]] = {}
    anchors: Mapping[str, tuple[str, ...]] = {}

    def find(self, scan: ScanContext) -> list[Finding]:
        text = scan.text
        findings: list[Finding] = []
        at = text.find("@")
        while at != -1:
            match = self._match_at(text, at)
            if match is not None and self._is_address(text, match):
                findings.append(Finding(EMAIL, match.start(), match.end(), match.group()))
                at = text.find("@", match.end())
            else:
                at = text.find("@", at + 1)
        return findings

    @staticmethod
    def _match_at(text: str, at: int) -> re.Match[str] | None:
        """Match the address around the ``@`` at ``at``: walk back over the local part, then
        match forward from its start."""
        start = at
        low = max(0, at - _LOCAL_PART_MAX - 1)
        while start > low and text[start - 1] in _LOCAL_CHARS:
            start -= 1
        while start < at and text[start] == ".":
            start += 1
        if start == at:
            return None
        return _EMAIL.match(text, start, min(len(text), at + _DOMAIN_MAX + 1))

    @staticmethod
    def _is_address(text: str, match: re.Match[str]) -> bool:
        if _DENSITY_SUFFIX.search(match.group()):
            return False
        # "git@host:team/repo.git" is an SSH remote in scp syntax, not a mailbox.
        end = match.end()
        return not (end + 1 < len(text) and text[end] == ":" and not text[end + 1].isspace())


# Characters that may not directly precede a phone number: they mark ids, versions,
# amounts, paths and handles.
_STOP_BEFORE = frozenset("#/.-_@$€£%")
_PHONE_SEPARATORS = re.compile(r"[ \-.()]+")
_TRAILING_SEPARATORS = " -.()"
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_CONTEXT = "phone"
_CONTEXT_DISTANCE = 32
_INTERNATIONAL_DIGITS = range(7, 18)


def _national_digit_counts(regions: Sequence[str]) -> frozenset[int]:
    """Return the digit counts that a national number of ``regions`` can have, written
    alone, after the national prefix, or after the country code, from the library's
    metadata (for "US": 10 and 11)."""
    counts: set[int] = set()
    for region in regions:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
        if metadata is None:
            raise ConfigError(f"unknown phone region {region!r}", param="phone_regions")
        prefix = len(metadata.national_prefix or "")
        country_code = len(str(metadata.country_code))
        lengths = metadata.general_desc.possible_length if metadata.general_desc else ()
        for length in lengths:
            counts.update((length, length + prefix, length + country_code))
    return frozenset(counts)


def _has_group_sequence(
    groups: Sequence[str], counts: Collection[int], *, from_start: bool
) -> bool:
    """Return whether consecutive groups add up to one of ``counts`` digits.

    Any run of groups counts, not only all of them, because the matcher may find a number
    inside a longer cluster, such as a phone number followed by a year.
    """
    starts = range(1) if from_start else range(len(groups))
    for first in starts:
        total = 0
        for group in groups[first:]:
            total += len(group)
            if total in counts:
                return True
    return False


class PhoneNumberDetector:
    """Phone numbers found by the ``phonenumbers`` matcher at the VALID leniency.

    The matcher is pure Python and costs 20 to 100 microseconds a call (measured on this
    project's 2-core x86-64 machine), so it only runs on numeric clusters that look like a
    phone number: an international number (``+``), a
    number grouped by separators in groups of at most four digits, or any cluster within
    32 characters after a keyword such as "phone", "tel" or "電話". The digit count must
    also fit a number of ``regions`` by the library's metadata. A national number without
    ``+`` is read in each of ``regions`` in turn, so a number of another country needs its
    region listed or its ``+`` prefix.

    A text full of phone-shaped numbers (a contact table) would cost the matcher's time for
    each of them, which an attacker could use to burn CPU. So at most ``max_matcher_calls``
    distinct candidates per text go to the matcher. Candidates past that limit are reported
    on their shape and digit count alone, which errs toward redacting too much.
    """

    entities = frozenset({PHONE})
    keywords: Mapping[str, tuple[str, ...]] = {
        _CONTEXT: (
            "phone",
            "phone number",
            "telephone",
            "tel",
            "tel.",
            "mobile",
            "cell",
            "call",
            "call me",
            "text me",
            "fax",
            "whatsapp",
            "telefon",
            "telefonnummer",
            "handy",
            "téléphone",
            "portable",
            "teléfono",
            "móvil",
            "celular",
            "telefono",
            "cellulare",
            "电话",
            "手机",
            "電話",
            "携帯",
            "전화",
            "☎",
        )
    }
    anchors: Mapping[str, tuple[str, ...]] = {}

    def __init__(self, regions: Sequence[str] = ("US",), *, max_matcher_calls: int = 64) -> None:
        if not regions:
            raise ConfigError("phone_regions must name at least one region", param="phone_regions")
        self._regions = tuple(region.upper() for region in regions)
        self._national_counts = _national_digit_counts(self._regions)
        self._max_matcher_calls = max_matcher_calls

    def find(self, scan: ScanContext) -> list[Finding]:
        text = scan.text
        findings: list[Finding] = []
        # One text often repeats a number (a conversation resends its history), so each
        # distinct candidate goes to the matcher once per scan.
        matched: dict[str, list[tuple[int, int, str]]] = {}
        matcher_calls = 0
        for cluster_start, cluster_end in scan.numeric_clusters():
            start = self._extend_left(text, cluster_start)
            end = cluster_end
            while end > cluster_start and text[end - 1] in _TRAILING_SEPARATORS:
                end -= 1
            if start is None or scan.overlaps_claimed(start, end):
                continue
            candidate = text[start:end]
            if candidate not in matched:
                if not self._is_candidate(scan, start, candidate):
                    matched[candidate] = []
                elif matcher_calls < self._max_matcher_calls:
                    matcher_calls += 1
                    matched[candidate] = self._match(candidate)
                else:
                    matched[candidate] = [(0, len(candidate), candidate)]
            findings.extend(
                Finding(PHONE, start + low, start + high, raw)
                for low, high, raw in matched[candidate]
            )
        return findings

    @staticmethod
    def _extend_left(text: str, start: int) -> int | None:
        """Move ``start`` over a leading ``(`` and ``+``; None if an id or word precedes."""
        if start > 0 and text[start - 1] == "(":
            start -= 1
        if start > 0 and text[start - 1] == "+":
            start -= 1
        if start > 0:
            before = text[start - 1]
            if (before.isascii() and before.isalnum()) or before in _STOP_BEFORE:
                return None
        return start

    def _is_candidate(self, scan: ScanContext, start: int, candidate: str) -> bool:
        groups = [group for group in _PHONE_SEPARATORS.split(candidate.lstrip("+")) if group]
        if _ISO_DATE.match(candidate):
            return False
        if candidate.startswith("+"):
            return _has_group_sequence(groups, _INTERNATIONAL_DIGITS, from_start=True)
        if not _has_group_sequence(groups, self._national_counts, from_start=False):
            return False
        if len(groups) >= 3 and all(len(group) <= 4 for group in groups):
            return True
        return scan.keyword_before(_CONTEXT, start, _CONTEXT_DISTANCE)

    def _match(self, candidate: str) -> list[tuple[int, int, str]]:
        for region in self._regions:
            matcher = phonenumbers.PhoneNumberMatcher(
                candidate, region, leniency=phonenumbers.Leniency.VALID
            )
            found = [(match.start, match.end, match.raw_string) for match in matcher]
            if found:
                return found
        return []
