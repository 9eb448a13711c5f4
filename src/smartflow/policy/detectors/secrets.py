"""Credentials: provider API keys, private keys, JWTs, bearer tokens, connection strings.

Each pattern is tried only where the shared keyword index found its literal prefix
(``sk-``, ``AKIA``, ``-----BEGIN``, ``eyJ``, ``://``) or its keyword ("bearer",
"aws_secret_access_key"), so text without them costs no regex scan. Placeholders that
documentation uses in place of a secret (``${TOKEN}``, ``<password>``, ``sk-xxxx``) are not
reported.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from smartflow.policy.detectors._base import Finding, ScanContext

__all__ = [
    "ANTHROPIC_API_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "BEARER_TOKEN",
    "CONNECTION_STRING",
    "GITHUB_TOKEN",
    "GOOGLE_API_KEY",
    "JWT",
    "OPENAI_API_KEY",
    "PRIVATE_KEY",
    "SECRET_ENTITIES",
    "SLACK_TOKEN",
    "SecretDetector",
    "jwt_header_is_valid",
]

OPENAI_API_KEY = "OPENAI_API_KEY"
ANTHROPIC_API_KEY = "ANTHROPIC_API_KEY"
AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
GOOGLE_API_KEY = "GOOGLE_API_KEY"
GITHUB_TOKEN = "GITHUB_TOKEN"
SLACK_TOKEN = "SLACK_TOKEN"
PRIVATE_KEY = "PRIVATE_KEY"
JWT = "JWT"
BEARER_TOKEN = "BEARER_TOKEN"
CONNECTION_STRING = "CONNECTION_STRING"

# Token characters that may not touch either end of a key. The left check is written as a
# look-behind after the literal prefix, so the regex engine can search for the prefix fast.
_TOKEN_CHARS = r"A-Za-z0-9_\-"
_TOKEN_RIGHT = rf"(?![{_TOKEN_CHARS}])"


def _prefixed(prefix: str, body: str) -> re.Pattern[str]:
    """Compile ``prefix`` + ``body`` with no token character right before the prefix."""
    literal = re.escape(prefix)
    return re.compile(rf"{literal}(?<![{_TOKEN_CHARS}]{literal}){body}{_TOKEN_RIGHT}")


def _has_variety(value: str) -> bool:
    """Return whether ``value`` mixes digits and letters and has at least 8 distinct
    characters, as a real key does and a placeholder such as ``sk-xxxxxxxxxxxx`` does not."""
    has_digit = any(char.isdigit() for char in value)
    has_alpha = any(char.isalpha() for char in value)
    return has_digit and has_alpha and len(set(value)) >= 8


def _always(value: str) -> bool:
    return True


def jwt_header_is_valid(token: str) -> bool:
    """Return whether the first part of ``token`` decodes to a JSON object with ``alg``."""
    header = token.split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
        parsed = json.loads(decoded)
    except (binascii.Error, ValueError):
        return False
    return isinstance(parsed, dict) and "alg" in parsed


_PLACEHOLDER = re.compile(r"^(?:\$\{?[A-Za-z_].*|<.*>|\{.*\}|%s|\*+|x+|X+|\.\.\.)$")


def _password_is_real(url: str) -> bool:
    password = url.split("://", 1)[1].rsplit("@", 1)[0].split(":", 1)[1]
    return bool(password) and not _PLACEHOLDER.match(password)


@dataclass(frozen=True, slots=True)
class _Pattern:
    """A secret pattern that starts with one of ``prefixes``, and a check of the value.

    ``regex`` is matched at each prefix position that the keyword index reports.
    """

    entity: str
    prefixes: tuple[str, ...]
    regex: re.Pattern[str]
    accept: Callable[[str], bool] = _always


_PATTERNS: tuple[_Pattern, ...] = (
    _Pattern(
        ANTHROPIC_API_KEY,
        ("sk-ant-",),
        _prefixed("sk-ant-", r"[A-Za-z0-9_\-]{20,}"),
        _has_variety,
    ),
    _Pattern(
        OPENAI_API_KEY,
        ("sk-",),
        _prefixed("sk-", r"(?!ant-)[A-Za-z0-9_\-]{20,}"),
        _has_variety,
    ),
    _Pattern(
        AWS_ACCESS_KEY_ID,
        ("AKIA", "ASIA", "ABIA", "ACCA"),
        re.compile(r"A(?<![A-Za-z0-9]A)(?:KIA|SIA|BIA|CCA)[A-Z0-9]{16}(?![A-Za-z0-9])"),
        lambda value: len(set(value[4:])) >= 4,  # not a placeholder like AKIAXXXXXXXXXXXXXXXX
    ),
    _Pattern(
        GOOGLE_API_KEY,
        ("AIza",),
        _prefixed("AIza", r"[A-Za-z0-9_\-]{35}"),
    ),
    _Pattern(
        GITHUB_TOKEN,
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        re.compile(
            r"g(?<![A-Za-z0-9_]g)(?:h[pousr]_[A-Za-z0-9]{36,255}|ithub_pat_[A-Za-z0-9_]{22,255})"
            r"(?![A-Za-z0-9_])"
        ),
    ),
    _Pattern(
        SLACK_TOKEN,
        ("xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-"),
        _prefixed("xox", r"[bpars]-[A-Za-z0-9\-]{10,}"),
        _has_variety,
    ),
    _Pattern(
        PRIVATE_KEY,
        ("-----BEGIN",),
        # The whole block; if the END line is missing (a truncated paste), the header and
        # the base64 lines that follow it.
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
            r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
            r"|(?:[ \t]*(?:\r?\n|\\n)[ \t]*[A-Za-z0-9+/=]{8,})*)"
        ),
    ),
    _Pattern(
        JWT,
        ("eyJ",),
        re.compile(
            r"eyJ(?<![A-Za-z0-9_\-.]eyJ)[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]*"
            r"(?![A-Za-z0-9_\-]|\.[A-Za-z0-9_\-])"
        ),
        jwt_header_is_valid,
    ),
)

_BEARER = "bearer"
_BEARER_TOKEN = re.compile(r"\s+([A-Za-z0-9\-._~+/]{16,}=*)(?![A-Za-z0-9\-._~+/=])")
_AWS_SECRET = "aws_secret"
_AWS_SECRET_VALUE = re.compile(r"(?<![A-Za-z0-9/+])([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])")
_AWS_SECRET_DISTANCE = 24

# ://[user]:password@host[:port][/path]. The password may not contain "@", which a URL
# must percent-encode. The scheme before "://" is found by walking back from the match.
_CONNECTION_ANCHOR = "anchor:connection"
_CONNECTION = re.compile(
    r"://[^\s:/@'\"<>]*:[^\s/@'\"<>]+@[A-Za-z0-9.\-_:\[\]%]+"
    r"(?:[/?#][A-Za-z0-9\-._~!$&()*+,;=:@%/?#]*)?"
)
# Punctuation that ends the sentence around a URL rather than the URL itself.
_URL_TRAILING = ".,;:!?)"
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
_SCHEME_MAX = 20

SECRET_ENTITIES: frozenset[str] = frozenset(
    {pattern.entity for pattern in _PATTERNS}
    | {BEARER_TOKEN, AWS_SECRET_ACCESS_KEY, CONNECTION_STRING}
)


def _anchor_group(pattern: _Pattern) -> str:
    return f"anchor:{pattern.entity}"


def _looks_like_aws_secret(value: str) -> bool:
    # 40 characters of base64 with both letter cases; a SHA-1 hex digest has one case.
    return any(char.isupper() for char in value) and any(char.islower() for char in value)


class SecretDetector:
    """Provider API keys, private keys, JWTs, bearer tokens and connection strings."""

    keywords: Mapping[str, tuple[str, ...]] = {
        _BEARER: ("bearer",),
        _AWS_SECRET: (
            "aws_secret_access_key",
            "aws_secret_key",
            "secret_access_key",
            "secretaccesskey",
            "aws secret access key",
            "aws secret key",
            "aws secret",
        ),
    }

    def __init__(self, entities: frozenset[str] = SECRET_ENTITIES) -> None:
        unknown = entities - SECRET_ENTITIES
        if unknown:
            raise ValueError(f"unknown secret entities: {sorted(unknown)}")
        self.entities = entities
        self._patterns = tuple(pattern for pattern in _PATTERNS if pattern.entity in entities)
        self._anchored = tuple((pattern, _anchor_group(pattern)) for pattern in self._patterns)
        anchors = {_anchor_group(pattern): pattern.prefixes for pattern in self._patterns}
        if CONNECTION_STRING in entities:
            anchors[_CONNECTION_ANCHOR] = ("://",)
        self.anchors: Mapping[str, tuple[str, ...]] = anchors

    def find(self, scan: ScanContext) -> list[Finding]:
        text = scan.text
        findings: list[Finding] = []
        for pattern, group in self._anchored:
            hits = scan.keyword_hits(group)
            if not hits:
                continue
            tried: set[int] = set()
            for start, _ in hits:
                if start in tried:
                    continue
                tried.add(start)
                match = pattern.regex.match(text, start)
                if match is not None and pattern.accept(match.group()):
                    findings.append(Finding(pattern.entity, start, match.end(), match.group()))
        if BEARER_TOKEN in self.entities:
            findings.extend(self._bearer_tokens(scan))
        if AWS_SECRET_ACCESS_KEY in self.entities:
            findings.extend(self._aws_secret_keys(scan))
        if CONNECTION_STRING in self.entities:
            findings.extend(self._connection_strings(scan))
        return findings

    @staticmethod
    def _connection_strings(scan: ScanContext) -> list[Finding]:
        text = scan.text
        findings: list[Finding] = []
        for anchor_start, _ in scan.keyword_hits(_CONNECTION_ANCHOR):
            match = _CONNECTION.match(text, anchor_start)
            if match is None:
                continue
            start = anchor_start
            while start > 0 and text[start - 1] in _SCHEME_CHARS:
                start -= 1
            scheme = text[start:anchor_start]
            if not (1 <= len(scheme) <= _SCHEME_MAX and scheme[0].isalpha()):
                continue
            value = text[start : match.end()].rstrip(_URL_TRAILING)
            if _password_is_real(value):
                findings.append(Finding(CONNECTION_STRING, start, start + len(value), value))
        return findings

    @staticmethod
    def _bearer_tokens(scan: ScanContext) -> list[Finding]:
        findings: list[Finding] = []
        for _, keyword_end in scan.keyword_hits(_BEARER):
            match = _BEARER_TOKEN.match(scan.text, keyword_end)
            if match is not None and _has_variety(match.group(1)):
                findings.append(Finding(BEARER_TOKEN, match.start(1), match.end(1), match.group(1)))
        return findings

    @staticmethod
    def _aws_secret_keys(scan: ScanContext) -> list[Finding]:
        text = scan.text
        findings: list[Finding] = []
        # "aws_secret_access_key" also contains the keywords "aws_secret" and
        # "secret_access_key", so one value can be reached from several hits.
        seen: set[int] = set()
        for _, keyword_end in scan.keyword_hits(_AWS_SECRET):
            # One character past the longest value, so the look-ahead can check what follows it.
            window_end = min(len(text), keyword_end + _AWS_SECRET_DISTANCE + 41)
            match = _AWS_SECRET_VALUE.search(text, keyword_end, window_end)
            if match is None or match.start() - keyword_end > _AWS_SECRET_DISTANCE:
                continue
            if match.start(1) not in seen and _looks_like_aws_secret(match.group(1)):
                seen.add(match.start(1))
                findings.append(
                    Finding(AWS_SECRET_ACCESS_KEY, match.start(1), match.end(1), match.group(1))
                )
        return findings
