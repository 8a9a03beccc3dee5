"""A PACS node: where it is, how to talk to it, and how much it can take."""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from qrfarm.errors import InvalidNode

from .model import Operation, Root

# PS3.5 AE title: 1-16 characters of the default repertoire, no backslash or
# control characters, not all spaces (leading and trailing spaces are not
# significant).
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
_NODE_SPEC = re.compile(r"^(?P<aet>[^@]+)@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d{1,5})$")


def validate_ae_title(value: str, what: str = "AE title") -> str:
    """Return the AE title stripped of padding, or raise InvalidNode naming the rule."""
    if not _AE_TITLE.match(value) or not value.strip():
        raise InvalidNode(
            f"{what} {value!r}: must be 1-16 printable ASCII characters, "
            "no backslash, not all spaces"
        )
    return value.strip()


@dataclass(frozen=True)
class TlsSettings:
    """TLS for an association: the CA to trust, and our own certificate if the peer asks."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True
    server_hostname: str | None = None

    def context(self) -> ssl.SSLContext:
        """A client-side SSL context built from these settings."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        try:
            if self.ca_file is not None:
                ctx.load_verify_locations(cafile=str(self.ca_file))
            if self.cert_file is not None:
                ctx.load_cert_chain(str(self.cert_file), str(self.key_file or self.cert_file))
        except (OSError, ssl.SSLError) as exc:
            raise InvalidNode(f"TLS files cannot be loaded: {exc}") from exc
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


@dataclass(frozen=True)
class Node:
    """A DICOM peer: AE title, address, TLS, and the limits it sets."""

    ae_title: str
    host: str
    port: int
    tls: TlsSettings | None = None
    max_associations: int = 4
    roots: frozenset[Root] = field(default_factory=lambda: frozenset(Root))
    operations: frozenset[Operation] = field(default_factory=lambda: frozenset(Operation))

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", validate_ae_title(self.ae_title))
        if not self.host or any(c.isspace() for c in self.host):
            raise InvalidNode(f"host {self.host!r}: must be a host name or IP address")
        if not 1 <= self.port <= 65535:
            raise InvalidNode(f"port {self.port}: must be between 1 and 65535")
        if self.max_associations < 1:
            raise InvalidNode(f"max_associations {self.max_associations}: must be at least 1")

    @classmethod
    def parse(cls, spec: str, **kwargs: object) -> Node:
        """A node from ``AET@host:port`` (IPv6 hosts in brackets)."""
        match = _NODE_SPEC.match(spec)
        if match is None:
            raise InvalidNode(f"node {spec!r}: expected AET@host:port")
        host = match["host"].strip("[]")
        return cls(match["aet"], host, int(match["port"]), **kwargs)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"
