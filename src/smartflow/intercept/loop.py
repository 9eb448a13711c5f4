"""Loop prevention: the hop header, and the addresses this process listens on.

An intercepted host must be reached at the real provider. A request that comes back to
a Smartflow instance, because DNS or an address in the config points at one, is
rejected with 508 instead of being forwarded again.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
from collections.abc import Iterable

from smartflow.core.errors import SmartflowError

__all__ = ["HOP_HEADER", "LoopDetected", "OwnAddresses"]

logger = logging.getLogger(__name__)

HOP_HEADER = "x-smartflow-hop"
"""Added to every request the interception listener sends upstream; its value is the
sending instance's hop id."""


class LoopDetected(SmartflowError):
    status = 508
    code = "loop_detected"
    log_level = logging.WARNING


@functools.lru_cache(maxsize=256)
def _is_local_address(ip: str) -> bool:
    """Return whether ``ip`` is assigned to this machine: only then can it be bound."""
    address = ipaddress.ip_address(ip)
    if address.is_loopback or address.is_unspecified:
        return True
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((ip, 0))
        except OSError:
            return False
    return True


class OwnAddresses:
    """The (address, port) pairs this process accepts connections on."""

    def __init__(self) -> None:
        self._exact: set[tuple[str, int]] = set()
        self._any_address_ports: set[int] = set()

    def add(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            host, port = sock.getsockname()[:2]
            if ipaddress.ip_address(host).is_unspecified:
                self._any_address_ports.add(port)
            else:
                self._exact.add((str(ipaddress.ip_address(host)), port))

    def contains(self, ip: str, port: int) -> bool:
        """Return whether a connection to ``ip:port`` would reach this process."""
        ip = str(ipaddress.ip_address(ip))
        if (ip, port) in self._exact:
            return True
        return port in self._any_address_ports and _is_local_address(ip)
