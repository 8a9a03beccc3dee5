"""The asyncio receive path's server: one event loop in a thread of its own,
listening on the SCP's port (and its TLS port), a thread pool for what blocks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import TYPE_CHECKING, Any, TypeVar

from qrfarm.nodes.hosts import HostPatterns

from ..contexts import supported_contexts
from .connection import Connection
from .negotiation import RecentRequests

if TYPE_CHECKING:
    from ..handlers import ScpContext

log = logging.getLogger(__name__)
T = TypeVar("T")

IDLE_TIMEOUT_S = 60.0  # as pynetdicom's network_timeout on the other path
BACKLOG = 64


class QuickAckProtocol(asyncio.StreamReaderProtocol):
    """A stream protocol that acknowledges every segment it reads at once.

    DCMTK writes a PDU's header and body in two writes; with Nagle on at the
    sender the body waits for the header's ACK, which a receiver in delayed
    ACK mode sends some 40 ms late. The kernel leaves quick ACK mode on its
    own, so it is re-armed after every read, as on the pynetdicom path.
    """

    _socket: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._socket = transport.get_extra_info("socket")
        if self._socket is not None:
            with suppress(OSError):
                self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _quickack(self._socket)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        _quickack(self._socket)


def _quickack(sock: Any) -> None:
    if sock is not None and hasattr(socket, "TCP_QUICKACK"):
        with suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


class AioStorageServer:
    """Serves the storage SCP's associations on an event loop; ``start()`` in
    the caller's thread returns once listening, ``stop()`` drains."""

    def __init__(
        self,
        ctx: ScpContext,
        *,
        ae_title: str,
        host: str,
        associate_timeout_s: float,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        proxies: HostPatterns | None = None,
    ) -> None:
        self.ctx = ctx
        self.ae_title = ae_title.strip()
        self.host = host
        self.associate_timeout_s = associate_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.proxies = proxies
        self.supported = supported_contexts()
        self.recent_requests = RecentRequests()
        # Two workers per slot: every admitted association can be storing at
        # once, each store with its file's fsync beside it; and the spare
        # temp files being made.
        self.pool = ThreadPoolExecutor(
            max_workers=2 * ctx.gate.max_associations + 4, thread_name_prefix="scp-store"
        )
        self.loop = asyncio.new_event_loop()
        self.connections: set[Connection] = set()
        self._pending: Counter[str] = Counter()
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self.loop.run_forever, name="storage-scp-aio")

    async def blocking(self, func: Callable[..., T], *args: object) -> T:
        """``func(*args)`` in the thread pool, so the loop never waits on it."""
        return await self.loop.run_in_executor(self.pool, functools.partial(func, *args))

    def take_pending(self, host: str) -> bool:
        """Count a connection from ``host`` waiting to associate, if under the cap."""
        if self._pending[host] >= self.ctx.gate.max_pending_per_host:
            return False
        self._pending[host] += 1
        return True

    def release_pending(self, host: str) -> None:
        self._pending[host] -= 1
        if self._pending[host] <= 0:
            del self._pending[host]

    def start(self) -> None:
        self._thread.start()

    def listen(
        self, port: int, *, listen_fd: int | None = None, tls: ssl.SSLContext | None = None
    ) -> int:
        """Listen on ``port`` (or the handed-down socket); the port bound."""
        sock = _listening_socket(self.host, port, listen_fd)

        def protocol() -> QuickAckProtocol:
            # TLS is started by each connection (after any PROXY header, within
            # the associate timeout), where a failed handshake can be logged.
            reader = asyncio.StreamReader(limit=1 << 20, loop=self.loop)
            return QuickAckProtocol(
                reader, functools.partial(self._accepted, tls=tls), loop=self.loop
            )

        async def serve() -> asyncio.Server:
            return await self.loop.create_server(protocol, sock=sock, backlog=BACKLOG)

        server = asyncio.run_coroutine_threadsafe(serve(), self.loop).result()
        self._servers.append(server)
        return int(sock.getsockname()[1])

    async def _accepted(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        tls: ssl.SSLContext | None,
    ) -> None:
        connection = Connection(self, reader, writer, tls)
        self.connections.add(connection)
        try:
            await connection.run()
        except Exception:
            log.exception("connection from %s ended by an error", connection.host)
        finally:
            self.connections.discard(connection)

    def stop(self, drain_timeout: float) -> None:
        """Stop listening, let established associations finish (at most
        ``drain_timeout``), abort the rest, and stop the loop."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._drain(drain_timeout), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        # Connections whose tasks the stopped loop will not finish: their
        # temp files (a data set cut short, a spare) go now.
        for connection in list(self.connections):
            connection.release_files()
        self.pool.shutdown(wait=True)
        self.loop.close()

    async def _drain(self, drain_timeout: float) -> None:
        for server in self._servers:
            server.close()
        deadline = time.monotonic() + drain_timeout
        while time.monotonic() < deadline and any(c.is_established for c in self.connections):
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            if connection.is_established:
                log.warning("aborting an association still open after %.0f s", drain_timeout)
            connection.abort()
        # Let the connections' own tasks see their streams closed.
        for _ in range(100):
            if not self.connections:
                break
            await asyncio.sleep(0.01)
        for server in self._servers:
            await server.wait_closed()


def _listening_socket(host: str, port: int, listen_fd: int | None) -> socket.socket:
    if listen_fd is not None:
        # Handed down by the parent of several processes: one socket for all,
        # so a connection goes to whichever process accepts it first.
        sock = socket.socket(fileno=listen_fd)
        sock.setblocking(False)
        return sock
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        # Several SCP processes on one port, each with a socket of its own.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock
