"""United States social security numbers, with the area, group and serial rules."""

from __future__ import annotations

import re
from collections.abc import Mapping

from smartflow.policy.detectors._base import Finding, ScanContext

__all__ = ["US_SSN", "SsnDetector", "ssn_is_valid"]

US_SSN = "US_SSN"

_SSN = re.compile(r"(?<![\dA-Za-z\-.#/])(\d{3})([\- ]?)(\d{2})\2(\d{4})(?![\dA-Za-z]|[\-.]\d)")

# Numbers the Social Security Administration voided after they appeared in print.
_VOIDED = frozenset({"078051120", "219099999"})

_CONTEXT = "ssn"
_CONTEXT_DISTANCE = 40


def ssn_is_valid(area: str, group: str, serial: str) -> bool:
    """Return whether the parts can form an issued SSN.

    Area 000, 666 and 900-999, group 00 and serial 0000 are never issued.
    """
    if area in ("000", "666") or area[0] == "9":
        return False
    if group == "00" or serial == "0000":
        return False
    return area + group + serial not in _VOIDED


class SsnDetector:
    """US SSNs written ``123-45-6789``; with spaces or no separator only after a keyword
    such as "SSN" or "social security", since bare nine-digit numbers are common ids."""

    entities = frozenset({US_SSN})
    keywords: Mapping[str, tuple[str, ...]] = {
        _CONTEXT: (
            "ssn",
            "ssn#",
            "ss#",
            "ss no",
            "social security",
            "social-security",
            "soc sec",
            "sozialversicherungsnummer",
            "numéro de sécurité sociale",
            "社会保障番号",
            "社会安全号码",
        )
    }
    anchors: Mapping[str, tuple[str, ...]] = {}

    def find(self, scan: ScanContext) -> list[Finding]:
        text = scan.text
        size = len(text)
        findings: list[Finding] = []
        for cluster_start, cluster_end in scan.numeric_clusters():
            if cluster_end - cluster_start < 9:
                continue
            for match in _SSN.finditer(text, cluster_start, min(size, cluster_end + 2)):
                area, separator, group, serial = match.groups()
                if not (area.isascii() and ssn_is_valid(area, group, serial)):
                    continue
                if separator != "-" and not scan.keyword_before(
                    _CONTEXT, match.start(), _CONTEXT_DISTANCE
                ):
                    continue
                findings.append(Finding(US_SSN, match.start(), match.end(), match.group()))
        return findings
