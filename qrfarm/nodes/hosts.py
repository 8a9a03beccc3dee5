"""Which hosts a node's associations may come from: addresses, networks, names.

A node's store hosts are patterns: an IP address, a network in CIDR notation
(``10.20.0.0/16``), or a host name. A name is resolved when it is needed and
its addresses kept for a while, so that admitting an association rarely waits
for DNS; a name that stops resolving keeps its last addresses (a DNS hiccup
must not lock a PACS out), and one that never resolved admits nothing.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from qrfarm.errors import InvalidNode

log = logging.getLogger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# How long a name's addresses are used before it is resolved again.
RESOLVE_TTL_S = 60.0
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def check_host_pattern(text: str, what: str = "store host") -> str:
    """``text`` stripped, if it is an address, a network or a host name; else InvalidNode."""
    pattern = text.strip()
    if not pattern:
        raise InvalidNode(f"{what}: empty; give an address, a network (CIDR) or a host name")
    if _network(pattern) is not None:
        return pattern
    if "/" in pattern or ":" in pattern:
        raise InvalidNode(f"{what} {pattern!r}: not an IP address or network")
    name = pattern.rstrip(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise InvalidNode(f"{what} {pattern!r}: not an address, a network or a host name")
    return pattern


def peer_address(text: str | None) -> Address | None:
    """The address a connection came from, as IPv4 when it is IPv4 mapped into IPv6."""
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _network(pattern: str) -> Network | None:
    try:
        return ipaddress.ip_network(pattern.split("%")[0], strict=False)
    except ValueError:
        return None


class Resolver:
    """Host names to addresses, each kept for ``ttl_s``; shared by all patterns."""

    def __init__(self, ttl_s: float = RESOLVE_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[frozenset[Address], float]] = {}

    def addresses(self, name: str) -> frozenset[Address]:
        with self._lock:
            cached = self._cache.get(name)
        if cached is not None and time.monotonic() - cached[1] < self.ttl_s:
            return cached[0]
        # Not under the lock: one slow name must not hold up the others.
        found = _resolve(name)
        if found is None:
            if cached is not None:
                log.warning(
                    "host name %s does not resolve now; its last addresses still count", name
                )
                found = cached[0]
            else:
                log.warning("host name %s does not resolve: no host is admitted by it", name)
                found = frozenset()
        with self._lock:
            self._cache[name] = (found, time.monotonic())
        return found


def _resolve(name: str) -> frozenset[Address] | None:
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return None
    found = {peer_address(str(info[4][0])) for info in infos}
    return frozenset(a for a in found if a is not None)


@dataclass(frozen=True)
class HostPatterns:
    """Addresses and networks matched at once, names through the resolver."""

    networks: tuple[Network, ...]
    names: tuple[str, ...]
    resolver: Resolver

    @classmethod
    def parse(cls, patterns: Iterable[str], resolver: Resolver) -> HostPatterns:
        """Patterns as stored (checked when they were registered); a bad one admits nothing."""
        networks: list[Network] = []
        names: list[str] = []
        for pattern in patterns:
            network = _network(pattern.strip())
            if network is not None:
                networks.append(network)
            elif pattern.strip():
                names.append(pattern.strip().rstrip(".").lower())
        return cls(tuple(networks), tuple(names), resolver)

    def admits(self, address: Address | None) -> bool:
        if address is None:
            return False
        if any(address in network for network in self.networks):
            return True
        return any(address in self.resolver.addresses(name) for name in self.names)

    def __str__(self) -> str:
        return ", ".join([*map(str, self.networks), *self.names]) or "none"
