"""What the HL7 listener checks of a connection before it reads a message.

In order, as soon as a connection is accepted: its source address against
the allow-list (addresses and CIDR networks), then a slot under the caps on
connections at once (in all, and per source address); only then, with TLS
configured, the TLS handshake (within the idle timeout; with a CA file the
sender's client certificate must verify). A connection refused at any step is
closed without an answer: it never gets to send a message. The idle timeout
itself is kept by the listener, around each read of a message.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from hl7.mllp import HL7StreamWriter

from qrfarm.config import Settings
from qrfarm.errors import InvalidHl7Settings

log = logging.getLogger(__name__)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # an IPv4 sender on a dual-stack socket
    return address


@dataclass(frozen=True)
class Sources:
    """The allow-list of sender addresses: networks, or any."""

    networks: tuple[Network, ...]
    any: bool = False

    @classmethod
    def parse(cls, entries: list[str]) -> Sources:
        if "*" in entries:
            return cls((), any=True)
        networks = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError as exc:
                raise InvalidHl7Settings(
                    f"QRFARM_HL7_ALLOWED_SOURCES: {entry!r} is not an address or a network"
                ) from exc
        return cls(tuple(networks))

    def admits(self, host: str) -> bool:
        if self.any:
            return True
        address = _address(host)
        return address is not None and any(address in network for network in self.networks)


@dataclass
class Slots:
    """Connections open at once, in all and per source address."""

    total: int
    per_source: int
    open: Counter[str] = field(default_factory=Counter)

    def take(self, source: str) -> str | None:
        """None once a slot is taken, else why there is none."""
        if sum(self.open.values()) >= self.total:
            return f"{self.total} connections open (QRFARM_HL7_MAX_CONNECTIONS)"
        if self.open[source] >= self.per_source:
            return (
                f"{self.per_source} connections open from it "
                "(QRFARM_HL7_MAX_CONNECTIONS_PER_SOURCE)"
            )
        self.open[source] += 1
        return None

    def release(self, source: str) -> None:
        self.open[source] -= 1
        if self.open[source] <= 0:
            del self.open[source]


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The listener's server-side TLS context, or None for plain MLLP."""
    cert, key, ca = settings.hl7_tls_cert_file, settings.hl7_tls_key_file, settings.hl7_tls_ca_file
    if cert is None and key is None:
        if ca is not None:
            raise InvalidHl7Settings(
                "QRFARM_HL7_TLS_CA_FILE is set without QRFARM_HL7_TLS_CERT_FILE and "
                "QRFARM_HL7_TLS_KEY_FILE: TLS needs the listener's certificate and key"
            )
        return None
    if cert is None or key is None:
        raise InvalidHl7Settings(
            "MLLP over TLS needs both QRFARM_HL7_TLS_CERT_FILE and QRFARM_HL7_TLS_KEY_FILE"
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
        if ca is not None:
            context.load_verify_locations(cafile=ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise InvalidHl7Settings(f"the HL7 listener's TLS files cannot be loaded: {exc}") from exc
    return context


class Guards:
    """The listener's door: allow-list, connection caps, TLS."""

    def __init__(self, settings: Settings) -> None:
        self.sources = Sources.parse(settings.hl7_allowed_sources)
        self.slots = Slots(settings.hl7_max_connections, settings.hl7_max_connections_per_source)
        self.tls = tls_context(settings)
        self.handshake_timeout_s = settings.hl7_idle_timeout_s

    @asynccontextmanager
    async def admitted(self, writer: HL7StreamWriter) -> AsyncIterator[bool]:
        """Whether this connection may send messages; a refused one is closed
        here, an admitted one holds its slot until the block ends."""
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else "unknown"
        if not self.sources.admits(source):
            log.warning("HL7 connection from %s refused: not an allowed source", source)
            writer.close()
            yield False
            return
        refused = self.slots.take(source)
        if refused is not None:
            log.warning("HL7 connection from %s refused: %s", source, refused)
            writer.close()
            yield False
            return
        try:
            if self.tls is not None and not await self._handshake(writer, source):
                writer.close()
                yield False
                return
            yield True
        finally:
            self.slots.release(source)

    async def _handshake(self, writer: HL7StreamWriter, source: str) -> bool:
        assert self.tls is not None
        try:
            await writer.start_tls(self.tls, ssl_handshake_timeout=self.handshake_timeout_s)
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as exc:
            log.warning("HL7 connection from %s refused: TLS handshake failed: %s", source, exc)
            return False
        return True
