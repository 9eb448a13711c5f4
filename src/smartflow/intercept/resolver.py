"""Upstream name resolution for intercepted hosts: fixed addresses or configured DNS servers.

The system resolver is never queried, because the point of interception is that it
resolves those hosts to this instance's own address.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping, Sequence

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver
from aiohttp.abc import AbstractResolver, ResolveResult

from smartflow.intercept.loop import LoopDetected, OwnAddresses

__all__ = ["UpstreamResolver"]

logger = logging.getLogger(__name__)

_DNS_TIMEOUT_S = 5.0


class UpstreamResolver(AbstractResolver):
    """Resolve intercepted hosts, and reject any address that points at this process.

    ``fixed`` maps a host to its (ip, port) pairs. Other hosts go to ``nameservers``,
    whose records are cached for their TTL. A host with neither fails to resolve.
    """

    def __init__(
        self,
        fixed: Mapping[str, Sequence[tuple[str, int]]],
        nameservers: Sequence[tuple[str, int]],
        own: OwnAddresses,
    ) -> None:
        self._fixed = {host.lower(): list(pairs) for host, pairs in fixed.items()}
        self._own = own
        self._dns: dns.asyncresolver.Resolver | None = None
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(ip, port) for ip, port in nameservers
            ]
            resolver.cache = dns.resolver.Cache()
            resolver.lifetime = _DNS_TIMEOUT_S
            self._dns = resolver

    async def lookup(self, host: str, port: int) -> list[tuple[str, int]]:
        """Return the upstream (ip, port) pairs of ``host``.

        Raises:
            LoopDetected: an address is one this process listens on.
            OSError: the host has no fixed address and DNS gave none.
        """
        name = host.lower().rstrip(".")
        pairs = self._fixed.get(name)
        if pairs is None:
            pairs = [(ip, port) for ip in await self._query(name)]
        for ip, target_port in pairs:
            if self._own.contains(ip, target_port):
                raise LoopDetected(
                    f"The upstream address of {name} ({ip} port {target_port}) is this "
                    "Smartflow instance, so the request would loop. Set the real provider's "
                    f"address in intercept.hosts.{name}.addresses, or name servers that are "
                    "not redirected in intercept.nameservers."
                )
        return pairs

    async def _query(self, name: str) -> list[str]:
        if self._dns is None:
            raise OSError(
                f"no upstream address for {name}: list it in intercept.hosts with "
                "'addresses', or set intercept.nameservers"
            )
        addresses: list[str] = []
        failures: list[str] = []
        for record_type in ("A", "AAAA"):
            try:
                answer = await self._dns.resolve(name, record_type)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN) as exc:
                failures.append(f"{record_type}: {type(exc).__name__}")
                continue
            except dns.exception.DNSException as exc:
                failures.append(f"{record_type}: {exc}")
                continue
            addresses.extend(record.address for record in answer)
        if not addresses:
            logger.warning("upstream lookup of %s failed: %s", name, "; ".join(failures))
            raise OSError(f"the name servers gave no address for {name} ({'; '.join(failures)})")
        return addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        pairs = await self.lookup(host, port or 443)
        results: list[ResolveResult] = []
        for ip, target_port in pairs:
            ip_family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            if family not in (socket.AF_UNSPEC, ip_family):
                continue
            results.append(
                {
                    "hostname": host,
                    "host": ip,
                    "port": target_port,
                    "family": ip_family,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                }
            )
        if not results:
            raise OSError(f"no address of family {family!r} for {host}")
        return results

    async def close(self) -> None:
        return None
