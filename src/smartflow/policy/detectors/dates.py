"""Dates of birth: a calendar date reported only next to a birth keyword.

Dates on their own are everywhere (logs, timestamps, invoices). A date therefore counts as
a date of birth only when it starts within 32 characters after a keyword such as "born",
"DOB", "date of birth", "geboren", "né le" or "生年月日". In Chinese and Japanese the
keyword may also follow the date directly ("1985年3月14日生まれ").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date

from smartflow.policy.detectors._base import Finding, ScanContext

__all__ = ["DATE_OF_BIRTH", "DateOfBirthDetector", "parse_date"]

DATE_OF_BIRTH = "DATE_OF_BIRTH"

_MONTHS: Mapping[str, int] = {
    # English
    "january": 1, "jan": 1, "february": 2, "feb": 2, "march": 3, "mar": 3, "april": 4,
    "apr": 4, "may": 5, "june": 6, "jun": 6, "july": 7, "jul": 7, "august": 8, "aug": 8,
    "september": 9, "sept": 9, "sep": 9, "october": 10, "oct": 10, "november": 11,
    "nov": 11, "december": 12, "dec": 12,
    # German
    "januar": 1, "jänner": 1, "februar": 2, "märz": 3, "maerz": 3, "mai": 5, "juni": 6,
    "juli": 7, "oktober": 10, "dezember": 12,
    # French
    "janvier": 1, "février": 2, "fevrier": 2, "mars": 3, "avril": 4, "juin": 6,
    "juillet": 7, "août": 8, "aout": 8, "septembre": 9, "octobre": 10, "novembre": 11,
    "décembre": 12, "decembre": 12,
    # Spanish
    "enero": 1, "febrero": 2, "marzo": 3, "abril": 4, "mayo": 5, "junio": 6, "julio": 7,
    "agosto": 8, "septiembre": 9, "setiembre": 9, "octubre": 10, "noviembre": 11,
    "diciembre": 12,
    # Italian
    "gennaio": 1, "febbraio": 2, "aprile": 4, "maggio": 5, "giugno": 6, "luglio": 7,
    "settembre": 9, "ottobre": 10, "dicembre": 12,
    # Portuguese
    "janeiro": 1, "fevereiro": 2, "março": 3, "maio": 5, "junho": 6, "julho": 7,
    "setembro": 9, "outubro": 10, "dezembro": 12,
}  # fmt: skip

_MONTH = "|".join(sorted(_MONTHS, key=len, reverse=True))
_DATE = re.compile(
    r"(?<!\d)(?:"
    r"(?P<iso_y>\d{4})[-/.](?P<iso_m>\d{1,2})[-/.](?P<iso_d>\d{1,2})"
    r"|(?P<num_a>\d{1,2})[-/.](?P<num_b>\d{1,2})[-/.](?P<num_y>\d{4}|\d{2})"
    r"|(?P<dmy_d>\d{1,2})(?:st|nd|rd|th|er|º|\.)?\s*(?:de\s+)?"
    rf"(?P<dmy_m>{_MONTH})\.?,?\s*(?:de\s+)?(?P<dmy_y>\d{{4}})"
    rf"|(?P<mdy_m>{_MONTH})\.?\s+(?P<mdy_d>\d{{1,2}})(?:st|nd|rd|th)?,?\s+(?P<mdy_y>\d{{4}})"
    r"|(?P<cjk_y>\d{4})\s*[年년]\s*(?P<cjk_m>\d{1,2})\s*[月월]\s*(?P<cjk_d>\d{1,2})\s*[日일]?"
    r")(?!\d)",
    re.IGNORECASE,
)

_BEFORE = "dob_before"
_AFTER = "dob_after"
_MAX_GAP_AFTER_KEYWORD = 32
_MAX_GAP_BEFORE_KEYWORD = 2
_EARLIEST_YEAR = 1900


def _calendar_date(year: int, month: int, day: int) -> date | None:
    if year < _EARLIEST_YEAR or year > date.today().year:
        return None
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _full_year(text: str) -> int:
    year = int(text)
    if len(text) == 2:
        year += 1900 if year > date.today().year % 100 else 2000
    return year


def parse_date(match: re.Match[str]) -> date | None:
    """Return the calendar date of a ``_DATE`` match, or None if no reading of it is valid.

    A numeric date such as ``03/04/1985`` is accepted if either the day-first or the
    month-first reading is a real date.
    """
    parts = match.groupdict()
    if parts["iso_y"]:
        return _calendar_date(int(parts["iso_y"]), int(parts["iso_m"]), int(parts["iso_d"]))
    if parts["num_y"]:
        year = _full_year(parts["num_y"])
        first, second = int(parts["num_a"]), int(parts["num_b"])
        return _calendar_date(year, second, first) or _calendar_date(year, first, second)
    if parts["dmy_y"]:
        month = _MONTHS[parts["dmy_m"].lower()]
        return _calendar_date(int(parts["dmy_y"]), month, int(parts["dmy_d"]))
    if parts["mdy_y"]:
        month = _MONTHS[parts["mdy_m"].lower()]
        return _calendar_date(int(parts["mdy_y"]), month, int(parts["mdy_d"]))
    return _calendar_date(int(parts["cjk_y"]), int(parts["cjk_m"]), int(parts["cjk_d"]))


class DateOfBirthDetector:
    """Calendar dates next to a birth keyword, in numeric, spelled-out and CJK forms."""

    entities = frozenset({DATE_OF_BIRTH})
    keywords: Mapping[str, tuple[str, ...]] = {
        _BEFORE: (
            "born",
            "dob",
            "d.o.b",
            "d.o.b.",
            "date of birth",
            "birth date",
            "birthdate",
            "birthday",
            "geboren",
            "geb.",
            "geburtsdatum",
            "geburtstag",
            "né",
            "née",
            "né(e)",
            "date de naissance",
            "fecha de nacimiento",
            "nacido",
            "nacida",
            "nato",
            "nata",
            "data di nascita",
            "data de nascimento",
            "nascido",
            "nascida",
            "geboortedatum",
            "生年月日",
            "出生日期",
            "出生于",
            "出生於",
            "生日",
            "誕生日",
            "생년월일",
            "дата рождения",
            "родился",
            "родилась",
        ),
        _AFTER: ("生まれ", "生", "出生", "생"),
    }
    anchors: Mapping[str, tuple[str, ...]] = {}

    def find(self, scan: ScanContext) -> list[Finding]:
        text = scan.text
        size = len(text)
        spans: dict[tuple[int, int], str] = {}
        for _, keyword_end in scan.keyword_hits(_BEFORE):
            window_end = min(size, keyword_end + _MAX_GAP_AFTER_KEYWORD + 41)
            match = _DATE.search(text, keyword_end, window_end)
            if match is None or match.start() - keyword_end > _MAX_GAP_AFTER_KEYWORD:
                continue
            if parse_date(match) is not None:
                spans[match.span()] = match.group()
        for keyword_start, _ in scan.keyword_hits(_AFTER):
            for match in _DATE.finditer(text, max(0, keyword_start - 40), keyword_start):
                gap = keyword_start - match.end()
                if gap <= _MAX_GAP_BEFORE_KEYWORD and parse_date(match) is not None:
                    spans[match.span()] = match.group()
        return [Finding(DATE_OF_BIRTH, start, end, value) for (start, end), value in spans.items()]
