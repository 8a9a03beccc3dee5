"""The PROXY protocol, version 2: the address a connection really came from.

A TCP proxy (HAProxy with ``send-proxy-v2``) opens each connection to the SCP
with a binary header naming the client's address, before any byte of the
DICOM upper layer. The SCP reads it only from the proxies it is told about,
and from them it must be there: never guessed from the bytes (a PACS could
otherwise present any address it likes). The header is read exactly, so the
first byte left on the socket is the A-ASSOCIATE-RQ's.

Specification: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from qrfarm.errors import ProxyHeaderError

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_HEADER = struct.Struct("!12sBBH")  # signature, version and command, family, length
VERSION_2 = 0x2
COMMAND_LOCAL = 0x0  # the proxy's own connection (a health check): no client address
COMMAND_PROXY = 0x1
FAMILY_TCP4 = 0x11
FAMILY_TCP6 = 0x21
_TCP4 = struct.Struct("!4s4sHH")  # source, destination addresses, then ports
_TCP6 = struct.Struct("!16s16sHH")
PREFIX_BYTES = _HEADER.size  # what says how long the rest of the header is
# How long a proxy may take to send its header before the connection is closed.
HEADER_TIMEOUT_S = 5.0


def read_header(sock: socket.socket, timeout_s: float = HEADER_TIMEOUT_S) -> tuple[str, int] | None:
    """The client's (address, port) from the header at the start of ``sock``;
    None for a LOCAL header (the proxy speaking for itself) or an address
    family that carries no IP address. Raises ProxyHeaderError."""
    previous = sock.gettimeout()
    sock.settimeout(timeout_s)
    try:
        command, family, length = parse_prefix(_read_exactly(sock, _HEADER.size))
        body = _read_exactly(sock, length)  # addresses, then TLVs (not used)
    except OSError as exc:  # socket.timeout included
        raise ProxyHeaderError(f"PROXY header not read: {exc}") from exc
    finally:
        sock.settimeout(previous)
    return client_of(command, family, body)


def parse_prefix(head: bytes) -> tuple[int, int, int]:
    """The command, address family and length of the rest, from the header's
    first PREFIX_BYTES bytes. Raises ProxyHeaderError."""
    signature, version_command, family, length = _HEADER.unpack(head)
    if signature != SIGNATURE:
        raise ProxyHeaderError("no PROXY protocol v2 signature")
    if version_command >> 4 != VERSION_2:
        raise ProxyHeaderError(f"PROXY protocol version {version_command >> 4}, not 2")
    return version_command & 0x0F, family, length


def client_of(command: int, family: int, body: bytes) -> tuple[str, int] | None:
    """The client's (address, port) from the rest of the header; None as for read_header."""
    if command == COMMAND_LOCAL:
        return None
    if command != COMMAND_PROXY:
        raise ProxyHeaderError(f"PROXY command {command} unknown")
    return _source(family, body)


def _source(family: int, body: bytes) -> tuple[str, int] | None:
    layout = {FAMILY_TCP4: _TCP4, FAMILY_TCP6: _TCP6}.get(family)
    if layout is None:
        return None  # UNSPEC, UDP, UNIX: no TCP client address to take
    if len(body) < layout.size:
        raise ProxyHeaderError(f"PROXY address block of {len(body)} bytes, too short")
    source, _destination, source_port, _destination_port = layout.unpack_from(body)
    return str(ipaddress.ip_address(source)), source_port


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ProxyHeaderError(f"connection closed after {len(chunks)} of {size} bytes")
        chunks += chunk
    return bytes(chunks)


def header(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A PROXY v2 header for a TCP connection from ``source`` to ``destination``
    (what HAProxy sends; for tests and tools)."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version == 4 and dst.version == 4:
        family, layout = FAMILY_TCP4, _TCP4
    else:
        family, layout = FAMILY_TCP6, _TCP6
        src, dst = _as_v6(src), _as_v6(dst)
    body = layout.pack(src.packed, dst.packed, source[1], destination[1])
    return _HEADER.pack(SIGNATURE, VERSION_2 << 4 | COMMAND_PROXY, family, len(body)) + body


def _as_v6(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address(f"::ffff:{address}")
