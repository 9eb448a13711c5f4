"""The detector set: builds the chosen detectors once and returns sorted, non-overlapping
findings for a text."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from smartflow.core.errors import ConfigError
from smartflow.policy.detectors._base import Detector, Finding, KeywordIndex, ScanContext
from smartflow.policy.detectors.contact import (
    EMAIL,
    PHONE,
    EmailDetector,
    PhoneNumberDetector,
)
from smartflow.policy.detectors.custom import CustomPatternDetector, WordListDetector
from smartflow.policy.detectors.dates import DATE_OF_BIRTH, DateOfBirthDetector
from smartflow.policy.detectors.financial import CREDIT_CARD, IBAN, CardDetector, IbanDetector
from smartflow.policy.detectors.government import US_SSN, SsnDetector
from smartflow.policy.detectors.network import IP_ADDRESS, IpAddressDetector
from smartflow.policy.detectors.secrets import (
    ANTHROPIC_API_KEY,
    AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY,
    BEARER_TOKEN,
    CONNECTION_STRING,
    GITHUB_TOKEN,
    GOOGLE_API_KEY,
    JWT,
    OPENAI_API_KEY,
    PRIVATE_KEY,
    SECRET_ENTITIES,
    SLACK_TOKEN,
    SecretDetector,
)

__all__ = ["BUILTIN_ENTITIES", "ENTITY_GROUPS", "PII_ENTITIES", "DetectorSet"]

logger = logging.getLogger(__name__)

PII_ENTITIES: frozenset[str] = frozenset(
    {EMAIL, PHONE, CREDIT_CARD, IBAN, US_SSN, IP_ADDRESS, DATE_OF_BIRTH}
)

# When two findings overlap and have the same length, the entity listed first wins: a
# specific provider key beats a JWT, which beats a plain bearer token.
_PRIORITY: tuple[str, ...] = (
    PRIVATE_KEY,
    ANTHROPIC_API_KEY,
    OPENAI_API_KEY,
    AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY,
    GOOGLE_API_KEY,
    GITHUB_TOKEN,
    SLACK_TOKEN,
    JWT,
    CONNECTION_STRING,
    BEARER_TOKEN,
    CREDIT_CARD,
    IBAN,
    US_SSN,
    EMAIL,
    IP_ADDRESS,
    DATE_OF_BIRTH,
    PHONE,
)
BUILTIN_ENTITIES: frozenset[str] = frozenset(_PRIORITY)
ENTITY_GROUPS: Mapping[str, frozenset[str]] = {
    "all": BUILTIN_ENTITIES,
    "pii": PII_ENTITIES,
    "secrets": SECRET_ENTITIES,
}


def _resolve_entities(entities: Iterable[str] | None) -> frozenset[str]:
    if entities is None:
        return BUILTIN_ENTITIES
    resolved: set[str] = set()
    for name in entities:
        group = ENTITY_GROUPS.get(name.lower())
        if group is not None:
            resolved |= group
        elif name.upper() in BUILTIN_ENTITIES:
            resolved.add(name.upper())
        else:
            known = ", ".join(sorted(BUILTIN_ENTITIES | set(ENTITY_GROUPS)))
            raise ConfigError(
                f"unknown entity {name!r}; expected one of: {known}", param="entities"
            )
    return frozenset(resolved)


def _builtin_detectors(
    entities: frozenset[str], phone_regions: Sequence[str], phone_matcher_limit: int
) -> list[Detector]:
    """Return the built-in detectors in run order: cheap and checksummed ones first, so the
    phone matcher, the costliest, can skip what they already claimed."""
    detectors: list[Detector] = []
    secrets = entities & SECRET_ENTITIES
    if secrets:
        detectors.append(SecretDetector(secrets))
    if CREDIT_CARD in entities:
        detectors.append(CardDetector())
    if IBAN in entities:
        detectors.append(IbanDetector())
    if US_SSN in entities:
        detectors.append(SsnDetector())
    if IP_ADDRESS in entities:
        detectors.append(IpAddressDetector())
    if EMAIL in entities:
        detectors.append(EmailDetector())
    if DATE_OF_BIRTH in entities:
        detectors.append(DateOfBirthDetector())
    if PHONE in entities:
        detectors.append(PhoneNumberDetector(phone_regions, max_matcher_calls=phone_matcher_limit))
    return detectors


def _remove_overlaps(findings: list[Finding], rank: Mapping[str, int]) -> list[Finding]:
    """Keep the longest of overlapping findings (ties go to the higher-ranked entity)."""
    fallback = len(rank)
    ordered = sorted(
        findings, key=lambda f: (f.start, -(f.end - f.start), rank.get(f.entity, fallback))
    )
    selected: list[Finding] = []
    for finding in ordered:
        if selected and finding.start < selected[-1].end:
            last = selected[-1]
            last_key = (last.end - last.start, -rank.get(last.entity, fallback))
            new_key = (finding.end - finding.start, -rank.get(finding.entity, fallback))
            if new_key > last_key:
                selected[-1] = finding
            continue
        selected.append(finding)
    return selected


@dataclass(frozen=True, slots=True)
class DetectorSet:
    """A compiled set of detectors; build it once per policy version and reuse it.

    Deeper recognisers (Presidio with an NER model for names and addresses) plug in through
    ``extra_detectors``: a policy switches them on in ``spec.recognizers``, see
    ``smartflow.policy.recognizers``.
    """

    detectors: tuple[Detector, ...]
    keyword_index: KeywordIndex | None
    rank: Mapping[str, int]

    @classmethod
    def build(
        cls,
        entities: Iterable[str] | None = None,
        custom_patterns: Mapping[str, str] | None = None,
        word_lists: Mapping[str, Iterable[str]] | None = None,
        *,
        phone_regions: Sequence[str] = ("US",),
        phone_matcher_limit: int = 64,
        extra_detectors: Sequence[Detector] = (),
    ) -> DetectorSet:
        """Compile the detectors for ``entities`` (built-in names or the groups "pii",
        "secrets", "all"; None means all) plus the policy's custom patterns and word lists.

        ``phone_regions`` are the regions whose national phone numbers are recognised
        without a ``+`` prefix. ``phone_matcher_limit`` caps the phone candidates per text
        that the ``phonenumbers`` matcher checks; the rest are judged by shape alone.

        Raises:
            ConfigError: an unknown entity, an invalid custom name or regular expression.
        """
        detectors = _builtin_detectors(
            _resolve_entities(entities), phone_regions, phone_matcher_limit
        )
        detectors.extend(extra_detectors)
        if custom_patterns:
            detectors.append(CustomPatternDetector(custom_patterns))
        if word_lists:
            detectors.append(WordListDetector(word_lists))
        keywords: dict[str, list[str]] = {}
        anchors: dict[str, list[str]] = {}
        for detector in detectors:
            for group, words in detector.keywords.items():
                keywords.setdefault(group, []).extend(words)
            for group, words in detector.anchors.items():
                anchors.setdefault(group, []).extend(words)
        index = KeywordIndex(keywords, anchors) if keywords or anchors else None
        rank = {entity: position for position, entity in enumerate(_PRIORITY)}
        built = cls(tuple(detectors), index, rank)
        logger.debug(
            "built detector set: %d detectors, entities %s",
            len(detectors),
            ", ".join(sorted(built.entities)),
        )
        return built

    @property
    def entities(self) -> frozenset[str]:
        """Every entity name that this set can report."""
        return frozenset().union(*(detector.entities for detector in self.detectors))

    def find(self, text: str) -> list[Finding]:
        """Return the findings in ``text``, sorted by start, with no two overlapping."""
        if not text:
            return []
        scan = ScanContext(text, self.keyword_index)
        findings: list[Finding] = []
        for detector in self.detectors:
            found = detector.find(scan)
            if found:
                findings.extend(found)
                scan.claimed.extend((finding.start, finding.end) for finding in found)
        if len(findings) < 2:
            return findings
        return _remove_overlaps(findings, self.rank)
