"""Classification of IP addresses that a gateway-side fetch must not reach, and its allow-list."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

__all__ = [
    "METADATA_ADDRESSES",
    "AddressPolicy",
    "Blocked",
    "IPAddress",
    "classify_address",
    "host_pattern_matches",
]

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# Instance-metadata services, which return cloud credentials to any local client:
# AWS, Google Cloud, Azure and OpenStack (169.254.169.254, and fd00:ec2::254 on AWS
# Nitro), the Amazon ECS task endpoint (169.254.170.2), Alibaba Cloud (100.100.100.200)
# and Oracle Cloud's legacy endpoint (192.0.0.192). Every one of them is also inside a
# blocked range below. They are listed so that a broad allow-list entry does not open them.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(text)
    for text in (
        "169.254.169.254",
        "169.254.170.2",
        "100.100.100.200",
        "192.0.0.192",
        "fd00:ec2::254",
    )
)

_LOOPBACK = "a loopback address"
_PRIVATE = "a private address"
_LINK_LOCAL = "a link-local address"
_RESERVED = "a reserved address"
_MULTICAST = "a multicast address"
_UNSPECIFIED = "an unspecified address"

# Ranges from the IANA IPv4 and IPv6 special-purpose address registries (RFC 6890 and
# its updates), checked in order, so a narrower range must come before a wider one.
_BLOCKED_RANGES: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(network), reason)
    for network, reason in (
        ("0.0.0.0/8", _UNSPECIFIED),
        ("10.0.0.0/8", _PRIVATE),
        ("100.64.0.0/10", "a carrier-grade NAT address"),
        ("127.0.0.0/8", _LOOPBACK),
        ("169.254.0.0/16", _LINK_LOCAL),
        ("172.16.0.0/12", _PRIVATE),
        ("192.0.0.0/24", _RESERVED),
        ("192.0.2.0/24", _RESERVED),
        ("192.88.99.0/24", _RESERVED),
        ("192.168.0.0/16", _PRIVATE),
        ("198.18.0.0/15", _RESERVED),
        ("198.51.100.0/24", _RESERVED),
        ("203.0.113.0/24", _RESERVED),
        ("224.0.0.0/4", _MULTICAST),
        ("240.0.0.0/4", _RESERVED),
        ("::/128", _UNSPECIFIED),
        ("::1/128", _LOOPBACK),
        ("::/8", _RESERVED),
        ("64:ff9b:1::/48", _RESERVED),
        ("100::/64", _RESERVED),
        ("2001::/23", _RESERVED),
        ("2001:db8::/32", _RESERVED),
        ("3fff::/20", _RESERVED),
        ("5f00::/16", _RESERVED),
        ("fc00::/7", "a unique local address"),
        ("fe80::/10", _LINK_LOCAL),
        ("fec0::/10", _RESERVED),
        ("ff00::/8", _MULTICAST),
    )
)

# IPv6 prefixes that carry an IPv4 address a gateway or relay may forward to.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(slots=True, frozen=True)
class Blocked:
    """Why an address is not public: a reason such as "a private address"."""

    reason: str
    metadata: bool = False


def _unmap(address: IPAddress) -> IPAddress:
    """Return the IPv4 address inside an IPv4-mapped IPv6 address (::ffff:a.b.c.d)."""
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _embedded_ipv4(address: IPv6Address) -> tuple[IPv4Address, str] | None:
    if address.sixtofour is not None:
        return address.sixtofour, "a 6to4 address"
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF), "a NAT64 address"
    return None


def classify_address(address: IPAddress) -> Blocked | None:
    """Return why ``address`` must not be fetched from, or None for a public address.

    An IPv4-mapped IPv6 address is judged as its IPv4 address, and a 6to4 or NAT64
    address also by the IPv4 address it carries.
    """
    address = _unmap(address)
    if address in METADATA_ADDRESSES:
        return Blocked("a cloud metadata address", metadata=True)
    if isinstance(address, IPv6Address):
        # Checked before the ranges, because ::/8 contains the NAT64 prefix 64:ff9b::/96.
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner = classify_address(embedded[0])
            if inner is None:
                return None
            return Blocked(f"{inner.reason} inside {embedded[1]}", inner.metadata)
    for network, reason in _BLOCKED_RANGES:
        if address in network:
            return Blocked(reason)
    if not address.is_global:
        # A range that a newer registry added but the table above does not list yet.
        return Blocked(_RESERVED)
    return None


def host_pattern_matches(pattern: str, host: str) -> bool:
    """Tell whether ``host`` is ``pattern``, or a subdomain of it for ``*.name`` patterns."""
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


class AddressPolicy:
    """The allow-list that lets chosen hosts or ranges past the address checks.

    ``allow_hosts`` contains lower-case host names, each exact or ``*.name``. A name
    never opens a cloud metadata address, because the name's DNS records may change.
    Only an ``allow_cidrs`` entry of that one address (such as 169.254.169.254/32) does.
    """

    def __init__(self, allow_hosts: Iterable[str] = (), allow_cidrs: Iterable[str] = ()) -> None:
        self.allow_hosts = tuple(host.lower().rstrip(".") for host in allow_hosts)
        self.allow_networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(cidr) for cidr in allow_cidrs
        )

    def host_allowed(self, host: str) -> bool:
        return any(host_pattern_matches(pattern, host) for pattern in self.allow_hosts)

    def check(self, host: str, address: IPAddress) -> Blocked | None:
        """Return why ``host`` at ``address`` must not be fetched from, or None if it may be."""
        blocked = classify_address(address)
        if blocked is None:
            return None
        unmapped = _unmap(address)
        if blocked.metadata:
            named = any(
                network.num_addresses == 1 and unmapped in network
                for network in self.allow_networks
            )
            return None if named else blocked
        if self.host_allowed(host):
            return None
        if any(unmapped in network for network in self.allow_networks):
            return None
        return blocked
