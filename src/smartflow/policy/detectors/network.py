"""IPv4 and IPv6 addresses, validated with the standard ``ipaddress`` module.

A dotted quad is also the shape of a four-part version number. An IPv4 candidate is
therefore dropped when version context comes right before it. Version context is ``v`` or
``V``, a package pin operator (``==``, ``>=``, ``~=``), a product name and slash as in a
user agent (``Chrome/120.0.0.0``), or the words version, release, build or firmware within
a few characters. A quad of four one-digit numbers (``1.2.3.4``) is read as a version unless a
network keyword (ip, host, server, ping, ...) is within 40 characters before it.
Unspecified, loopback and broadcast addresses and netmasks name no particular machine, so
they are ignored.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from smartflow.policy.detectors._base import Finding, ScanContext

__all__ = ["IP_ADDRESS", "IpAddressDetector"]

IP_ADDRESS = "IP_ADDRESS"

# The first digit is matched before the look-behind so the regex engine can skip quickly to
# digits. Neither end may continue into a longer dotted number (an OID or a long version).
_IPV4 = re.compile(r"\d(?<![\dA-Za-z.]\d)\d{0,2}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\dA-Za-z]|\.\d)")
_VERSION_BEFORE = re.compile(
    r"(?:(?<![A-Za-z])[vV]\.?\s?|[=<>~!]=\s*|[A-Za-z]/"
    r"|(?<![A-Za-z])(?i:version|release|build|firmware|ver\.?)\s*[:=]?\s*)$"
)
_VERSION_LOOKBACK = 16

# Every IPv6 text form has two colons with at most four hex digits between them.
_IPV6_SEED = re.compile(r":[0-9A-Fa-f]{0,4}:")
_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:.")
_IPV6_LEFT_CHARS = frozenset("0123456789abcdefABCDEF:")
_NETWORK_CONTEXT = "network"
_NETWORK_DISTANCE = 40


def _is_word_char(char: str) -> bool:
    return char.isascii() and (char.isalnum() or char == "_")


def _is_reported(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if address.is_unspecified or address.is_loopback:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        if int(address) == 0xFFFFFFFF:
            return False
        # A netmask (255.255.240.0) is a run of one bits followed by zero bits.
        inverted = ~int(address) & 0xFFFFFFFF
        if address.packed[0] == 255 and inverted & (inverted + 1) == 0:
            return False
    return True


class IpAddressDetector:
    """IPv4 and IPv6 addresses that ``ipaddress`` accepts, less versions and special ones."""

    entities = frozenset({IP_ADDRESS})
    keywords: Mapping[str, tuple[str, ...]] = {
        _NETWORK_CONTEXT: (
            "ip",
            "ips",
            "ipv4",
            "ip address",
            "address",
            "addr",
            "host",
            "hostname",
            "server",
            "ping",
            "connect",
            "connected",
            "gateway",
            "dns",
            "subnet",
            "proxy",
            "router",
            "firewall",
            "listen",
            "bind",
            "ssh",
            "client",
            "peer",
            "remote",
            "ip地址",
            "ipアドレス",
            "adresse ip",
            "ip-adresse",
        )
    }
    anchors: Mapping[str, tuple[str, ...]] = {}

    def find(self, scan: ScanContext) -> list[Finding]:
        return self._find_ipv4(scan) + self._find_ipv6(scan)

    def _find_ipv4(self, scan: ScanContext) -> list[Finding]:
        text = scan.text
        size = len(text)
        findings: list[Finding] = []
        for cluster_start, cluster_end in scan.numeric_clusters():
            if text.find(".", cluster_start, cluster_end) != -1:
                findings.extend(self._ipv4_in(scan, cluster_start, min(size, cluster_end + 2)))
        return findings

    def _ipv4_in(self, scan: ScanContext, start: int, end: int) -> list[Finding]:
        findings: list[Finding] = []
        for match in _IPV4.finditer(scan.text, start, end):
            value = match.group()
            try:
                address = ipaddress.IPv4Address(value)
            except ValueError:
                continue
            if not _is_reported(address) or self._looks_like_version(scan, match.start(), value):
                continue
            findings.append(Finding(IP_ADDRESS, match.start(), match.end(), value))
        return findings

    @staticmethod
    def _looks_like_version(scan: ScanContext, start: int, value: str) -> bool:
        text = scan.text
        if start >= 3 and text[start - 3 : start] == "://":
            return False
        before = text[max(0, start - _VERSION_LOOKBACK) : start]
        if _VERSION_BEFORE.search(before):
            return True
        if len(value) == 7:  # four one-digit numbers
            return not scan.keyword_before(_NETWORK_CONTEXT, start, _NETWORK_DISTANCE)
        return False

    def _find_ipv6(self, scan: ScanContext) -> list[Finding]:
        text = scan.text
        findings: list[Finding] = []
        if "::" not in text and text.count(":") < 7:
            return findings
        size = len(text)
        searched_to = 0
        for seed in _IPV6_SEED.finditer(text):
            if seed.start() < searched_to:
                continue
            start = seed.start()
            while start > 0 and text[start - 1] in _IPV6_LEFT_CHARS:
                start -= 1
            end = seed.end()
            while end < size and text[end] in _IPV6_CHARS:
                end += 1
            searched_to = end
            while end > start and text[end - 1] == ".":
                end -= 1
            finding = self._ipv6_finding(text, start, end)
            if finding is not None:
                findings.append(finding)
        return findings

    @staticmethod
    def _ipv6_finding(text: str, start: int, end: int) -> Finding | None:
        if start > 0 and (_is_word_char(text[start - 1]) or text[start - 1] == "."):
            return None
        if end < len(text) and _is_word_char(text[end]):
            return None
        value = text[start:end]
        groups = [group for group in value.split(":") if group]
        # Python slices (x[1::2]) and Rust or C++ paths (a::b) parse as IPv6 too; a real
        # address has a four-digit group or at least three groups.
        if len(groups) < 3 and not any(len(group) == 4 for group in groups):
            return None
        if not any(char.isdigit() for char in value):
            return None
        try:
            address = ipaddress.IPv6Address(value)
        except ValueError:
            return None
        if not _is_reported(address):
            return None
        return Finding(IP_ADDRESS, start, end, value)
