"""What comes before the A-ASSOCIATE-RQ on the asyncio path: a PROXY v2
header (from a load balancer the SCP trusts) and the TLS handshake."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Literal

from qrfarm.errors import ProxyHeaderError

from .. import proxy_protocol

log = logging.getLogger(__name__)

RAW_POLL_S = 0.002


async def proxy_header(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proxy: str, *, tls: bool
) -> str | Literal[False] | None:
    """The client's address a PROXY v2 header names (None: the proxy's own
    health check; False: no valid header came, the connection is to end)."""
    # Before TLS the header is read from the socket itself, exactly: the
    # stream would read ahead into the handshake, which TLS then misses.
    transport = writer.transport
    if tls and isinstance(transport, asyncio.Transport):
        transport.pause_reading()  # before anything is awaited

    async def read(size: int) -> bytes:
        if tls:
            return await _read_exactly_raw(writer, size)
        return await reader.readexactly(size)

    try:
        head = await read(proxy_protocol.PREFIX_BYTES)
        command, family, length = proxy_protocol.parse_prefix(head)
        source = proxy_protocol.client_of(command, family, await read(length))
    except (ProxyHeaderError, asyncio.IncompleteReadError, OSError) as exc:
        log.warning("connection from proxy %s closed: %s", proxy, exc)
        return False
    return None if source is None else source[0]


async def _read_exactly_raw(writer: asyncio.StreamWriter, size: int) -> bytes:
    # The transport owns the descriptor (the loop will not wait on it for
    # us): poll it. Once per proxied TLS connection; the header is usually
    # there at the first try.
    sock: socket.socket = writer.transport._sock  # type: ignore[attr-defined]
    data = bytearray()
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except BlockingIOError:
            await asyncio.sleep(RAW_POLL_S)
            continue
        if not chunk:
            raise asyncio.IncompleteReadError(bytes(data), size)
        data += chunk
    return bytes(data)


async def start_tls(writer: asyncio.StreamWriter, tls: ssl.SSLContext, host: str) -> bool:
    """The handshake, on this connection only. Called before anything is read
    through the stream (a PROXY header is read from the socket), so that no
    byte of the handshake has been taken as plain data."""
    try:
        await writer.start_tls(tls)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        log.warning("TLS connection from %s closed: %s", host, exc)
        return False
    return True
