"""Payment card numbers (issuer prefix, length and Luhn) and IBANs (country length and mod 97)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from smartflow.policy.detectors._base import Finding, ScanContext

__all__ = [
    "CREDIT_CARD",
    "IBAN",
    "IBAN_LENGTHS",
    "CardDetector",
    "IbanDetector",
    "card_brand",
    "iban_is_valid",
    "luhn_is_valid",
]

CREDIT_CARD = "CREDIT_CARD"
IBAN = "IBAN"

# 13 to 19 digits, optionally in groups split by single spaces or dashes. Neither end may
# touch a letter, a digit, or a dash or dot that continues the number (part of an id or hash).
_CARD = re.compile(r"(?<![\dA-Za-z\-.])\d(?:[ \-]?\d){12,18}(?![\dA-Za-z]|[\-.]\d)")

# Issuer identification number ranges and the lengths each network issues, from the public
# IIN tables (Visa, Mastercard, American Express, Discover, JCB, Diners Club, UnionPay,
# Maestro, Mir). Each entry is (low prefix, high prefix, lengths).
_BRANDS: tuple[tuple[str, str, str, frozenset[int]], ...] = (
    ("visa", "4", "4", frozenset({13, 16, 19})),
    ("mastercard", "51", "55", frozenset({16})),
    ("mastercard", "2221", "2720", frozenset({16})),
    ("amex", "34", "34", frozenset({15})),
    ("amex", "37", "37", frozenset({15})),
    ("discover", "6011", "6011", frozenset({16, 17, 18, 19})),
    ("discover", "644", "649", frozenset({16, 17, 18, 19})),
    ("discover", "65", "65", frozenset({16, 17, 18, 19})),
    ("jcb", "3528", "3589", frozenset({16, 17, 18, 19})),
    ("diners", "300", "305", frozenset({14, 15, 16, 17, 18, 19})),
    ("diners", "36", "36", frozenset({14, 15, 16, 17, 18, 19})),
    ("diners", "38", "39", frozenset({16, 17, 18, 19})),
    ("unionpay", "62", "62", frozenset({16, 17, 18, 19})),
    ("maestro", "50", "50", frozenset({13, 14, 15, 16, 17, 18, 19})),
    ("maestro", "56", "58", frozenset({13, 14, 15, 16, 17, 18, 19})),
    ("maestro", "67", "67", frozenset({13, 14, 15, 16, 17, 18, 19})),
    ("mir", "2200", "2204", frozenset({16, 17, 18, 19})),
)


# The Luhn digit sum of 2 * d for each digit d.
_LUHN_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def luhn_is_valid(digits: str) -> bool:
    """Return whether the ASCII digit string passes the Luhn (mod 10) check."""
    undoubled = sum(map(int, digits[-1::-2]))
    doubled = sum(_LUHN_DOUBLED[int(char)] for char in digits[-2::-2])
    return (undoubled + doubled) % 10 == 0


def card_brand(digits: str) -> str | None:
    """Return the card network whose prefix range and lengths fit ``digits``, if any."""
    for brand, low, high, lengths in _BRANDS:
        prefix = digits[: len(low)]
        if low <= prefix <= high and len(digits) in lengths:
            return brand
    return None


def _ascii_digits(value: str) -> str:
    digits = value.replace(" ", "").replace("-", "")
    if digits.isascii():
        return digits
    return "".join(chr(48 + int(char)) for char in digits)


def _grouping_is_plausible(value: str) -> bool:
    """Accept no separators, or one separator kind in the groupings that cards print with."""
    has_space = " " in value
    has_dash = "-" in value
    if not has_space and not has_dash:
        return True
    if has_space and has_dash:
        return False
    groups = [len(group) for group in value.split(" " if has_space else "-")]
    if groups in ([4, 6, 5], [4, 6, 4]):
        return True
    return all(size == 4 for size in groups[:-1]) and 1 <= groups[-1] <= 4


class CardDetector:
    """Payment card numbers that pass the issuer prefix, length and Luhn checks."""

    entities = frozenset({CREDIT_CARD})
    keywords: Mapping[str, tuple[str, ...]] = {}
    anchors: Mapping[str, tuple[str, ...]] = {}

    def find(self, scan: ScanContext) -> list[Finding]:
        text = scan.text
        size = len(text)
        findings: list[Finding] = []
        for cluster_start, cluster_end in scan.numeric_clusters():
            if cluster_end - cluster_start < 13:
                continue
            for match in _CARD.finditer(text, cluster_start, min(size, cluster_end + 2)):
                value = match.group()
                if not _grouping_is_plausible(value):
                    continue
                digits = _ascii_digits(value)
                if card_brand(digits) is not None and luhn_is_valid(digits):
                    findings.append(Finding(CREDIT_CARD, match.start(), match.end(), value))
        return findings


# Registered IBAN lengths per country (SWIFT IBAN registry, checked against the IbanNet
# country table in 2025).
IBAN_LENGTHS: Mapping[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20,
    "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
    "YE": 30,
}  # fmt: skip

# Country code, check digits, then 10 to 30 upper-case letters or digits, optionally in
# groups split by single spaces. The first letter is matched before the look-behind so the
# regex engine can skip quickly to upper-case letters.
_IBAN = re.compile(r"[A-Z](?<![\dA-Za-z][A-Z])[A-Z]\d\d(?:[ ]?[\dA-Z]){10,30}")


# ISO 7064 replaces A with 10, B with 11, ... Z with 35.
_LETTER_VALUES = str.maketrans({chr(65 + index): str(10 + index) for index in range(26)})


def iban_is_valid(compact: str) -> bool:
    """Return whether an IBAN without spaces has its country's length and passes mod 97."""
    expected = IBAN_LENGTHS.get(compact[:2])
    if expected is None or len(compact) != expected:
        return False
    rearranged = compact[4:] + compact[:4]
    return int(rearranged.translate(_LETTER_VALUES)) % 97 == 1


class IbanDetector:
    """IBANs of registered countries that pass the ISO 7064 mod 97-10 check."""

    entities = frozenset({IBAN})
    keywords: Mapping[str, tuple[str, ...]] = {}
    anchors: Mapping[str, tuple[str, ...]] = {}

    def find(self, scan: ScanContext) -> list[Finding]:
        text = scan.text
        findings: list[Finding] = []
        for match in _IBAN.finditer(text):
            end = self._trimmed_end(text, match.start(), match.end())
            if end is None:
                continue
            value = text[match.start() : end]
            if iban_is_valid(value.replace(" ", "")):
                findings.append(Finding(IBAN, match.start(), end, value))
        return findings

    @staticmethod
    def _trimmed_end(text: str, start: int, end: int) -> int | None:
        """Cut the match to its country's length, or return None if it cannot be an IBAN.

        The regex may run on into a following upper-case word, so the match is cut after
        the country's number of characters, and what follows the cut must not continue it.
        """
        expected = IBAN_LENGTHS.get(text[start : start + 2])
        if expected is None:
            return None
        count = 0
        position = start
        while position < end and count < expected:
            if text[position] != " ":
                count += 1
            position += 1
        if count < expected:
            return None
        if position < len(text) and text[position].isascii() and text[position].isalnum():
            return None
        return position
