"""The storage SCP as a service: listen, serve many associations, drain on SIGTERM."""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import exists, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.errors import ProxyHeaderError
from qrfarm.models import OrphanInstance, ReceivedInstance
from qrfarm.nodes.hosts import HostPatterns, Resolver, check_host_pattern, peer_address
from qrfarm.storage import InstanceStorage

from . import proxy_protocol, tls
from .aio import AioStorageServer
from .commitment import handle_commitment_report
from .contexts import supported_contexts
from .gate import ConnectionGate
from .handlers import (
    ScpContext,
    handle_connection_close,
    handle_connection_open,
    handle_requested,
    handle_store,
)
from .known_nodes import KnownNodes

log = logging.getLogger(__name__)
# Which receive path serves associations: "asyncio" (qrfarm.scp.aio, one
# event loop) or "pynetdicom" (its AssociationServer, threads per association).
RECEIVE_PATHS = ("asyncio", "pynetdicom")
DEFAULT_RECEIVE_PATH = "asyncio"
# With siblings on one socket: how long a process lets them take a new
# connection first, per association it is serving already.
ACCEPT_DELAY_PER_ASSOCIATION_S = 0.002


class ReusePortServer(ThreadedAssociationServer):
    """Binds with SO_REUSEPORT, so that several SCP processes can share one port;
    or, with ``listen_fd`` set, serves a listening socket handed down by a parent
    process (``qrfarm scp --processes``)."""

    listen_fd: int | None = None
    # Associations waiting to be accepted (socketserver's default is 5).
    request_queue_size = 64
    # Where connections begin with a PROXY protocol v2 header (HAProxy's
    # send-proxy-v2): their client's address stands for the proxy's.
    proxies: HostPatterns | None = None
    # Slots and per-host caps (None: pynetdicom's own thread count only).
    gate: ConnectionGate | None = None
    # DICOM TLS: every connection shakes hands (after any PROXY header) within
    # this many seconds, or is closed.
    tls_context: ssl.SSLContext | None = None
    tls_handshake_timeout_s: float = 5.0

    def finish_request(self, request: Any, client_address: Any) -> None:
        # In the connection's own thread: a proxy slow with its header holds
        # up only this connection, not the accepting loop.
        if self.proxies is not None and self.proxies.admits(peer_address(client_address[0])):
            try:
                source = proxy_protocol.read_header(request)
            except ProxyHeaderError as exc:
                log.warning("connection from proxy %s closed: %s", client_address[0], exc)
                self.shutdown_request(request)
                return
            if source is not None:  # None: the proxy's own health check
                client_address = source
        if self.tls_context is not None:
            wrapped = tls.handshake(
                request, self.tls_context, self.tls_handshake_timeout_s, client_address[0]
            )
            if wrapped is None:
                return
            request = wrapped
        if self.gate is None:
            super().finish_request(request, client_address)
            return
        with self.gate.accepting:  # counted and started one at a time
            if not self.gate.accepts_connection(client_address[0], self.active_associations):
                log.warning(
                    "connection from %s closed: %d from there are not associated yet",
                    client_address[0],
                    self.gate.max_pending_per_host,
                )
                self.shutdown_request(request)
                return
            super().finish_request(request, client_address)

    def server_bind(self) -> None:
        assert self.socket is not None
        if self.listen_fd is not None:
            self.socket.close()
            self.socket = socket.socket(fileno=self.listen_fd)
            # Non-blocking: when sibling processes race for one connection,
            # the losers' accept() fails at once (socketserver lets it go)
            # rather than hanging until the next connection.
            self.socket.setblocking(False)
            self.server_address = self.socket.getsockname()
            return
        if hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        if self.listen_fd is not None:
            # Siblings wake together for each connection: the busier a process
            # is, the longer it waits before taking it, so the least busy wins.
            busy = len(self.active_associations)
            if busy:
                time.sleep(min(busy, 10) * ACCEPT_DELAY_PER_ASSOCIATION_S)
        return super().get_request()

    def server_activate(self) -> None:
        if self.listen_fd is None:  # a handed-down socket: the parent listens
            super().server_activate()

    def server_close(self) -> None:
        if self.listen_fd is None:
            super().server_close()
            return
        # Only our descriptor: shutdown() would stop the siblings accepting too.
        assert self.socket is not None
        self.socket.close()


def bound_socket(host: str, port: int) -> socket.socket:
    """A bound socket for SCP processes to share (handed to each as ``listen_fd``).

    One socket, unlike SO_REUSEPORT's one per process: a connection goes to
    whichever process is free to accept it, not by a hash of its addresses.
    Not listening yet: the port refuses connections until a process is ready
    to serve them.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


class StorageScp:
    """One storage SCP process: ``start()``, then ``stop()`` (or ``serve()`` until a signal)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        storage: InstanceStorage,
        *,
        ae_title: str = "QRFARMSCP",
        host: str = "127.0.0.1",
        port: int = 11113,
        max_associations: int = 32,
        late_window_s: float = 3600.0,
        max_pdu: int = 1 << 20,
        max_instance_bytes: int = 8 << 30,
        associate_timeout_s: float = 5.0,
        idle_timeout_s: float = 60.0,
        max_pending_per_host: int = 8,
        probe_ae_title: str | None = None,
        listen_fd: int | None = None,
        proxy_protocol_from: Sequence[str] = (),
        tls_port: int | None = None,
        tls_context: ssl.SSLContext | None = None,
        receive_path: str | None = None,
    ) -> None:
        self.receive_path = receive_path or DEFAULT_RECEIVE_PATH
        if self.receive_path not in RECEIVE_PATHS:
            raise ValueError(f"receive path {self.receive_path!r}, not one of {RECEIVE_PATHS}")
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.max_associations = max_associations
        self.max_pdu = max_pdu
        self.listen_fd = listen_fd
        # Checked now: a wrong address here would let no PACS in, or the wrong ones.
        self.proxy_protocol_from = [
            check_host_pattern(p, "PROXY protocol source") for p in proxy_protocol_from
        ]
        self.associate_timeout_s = associate_timeout_s
        # An association that sends nothing for this long is aborted.
        self.idle_timeout_s = idle_timeout_s
        self.context = ScpContext(
            storage,
            sessions,
            KnownNodes(sessions),
            late_window_s,
            probe_ae_title=probe_ae_title,
            gate=ConnectionGate(max_associations, max_pending_per_host),
            max_instance_bytes=max_instance_bytes,
            max_pdu=max_pdu,
        )
        # A second listener on tls_port, same handlers and slots, speaking TLS.
        self.tls_port = tls_port
        self.tls_context = tls_context
        self._server: ThreadedAssociationServer | None = None
        self._tls_server: ThreadedAssociationServer | None = None
        self._thread: threading.Thread | None = None
        self._aio: AioStorageServer | None = None

    def _ae(self) -> AE:
        # Identifiers hold patient data; private SOP classes must be stored too.
        pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
        pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
        pynetdicom_config.UNRESTRICTED_STORAGE_SERVICE = True
        ae = AE(ae_title=self.ae_title)
        # pynetdicom counts every connection's thread against this, admitted or
        # not: the gate counts slots instead, taken only on admission.
        ae.maximum_associations = 1 << 16
        ae.maximum_pdu_size = self.max_pdu
        ae.network_timeout = self.idle_timeout_s
        # A connection must ask for an association within this (pynetdicom's
        # ARTIM timer runs on it), or it is closed.
        ae.acse_timeout = self.associate_timeout_s
        ae.supported_contexts = supported_contexts()
        return ae

    def start(self) -> int:
        """Listen and serve in a background thread; return the port bound."""
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, handle_connection_open, [self.context]),
            (evt.EVT_CONN_CLOSE, handle_connection_close),
            (evt.EVT_REQUESTED, handle_requested, [self.context]),
            (evt.EVT_C_STORE, handle_store, [self.context]),
            (evt.EVT_N_EVENT_REPORT, handle_commitment_report, [self.context]),
        ]
        self._recover()
        if self.receive_path == "asyncio":
            return self._start_aio()
        ae = self._ae()
        server_class: type[ReusePortServer] = ReusePortServer
        if self.listen_fd is not None:
            # pynetdicom builds the server itself: the descriptor rides on the class.
            server_class = cast(
                type[ReusePortServer],
                type("HandedDownSocketServer", (ReusePortServer,), {"listen_fd": self.listen_fd}),
            )
        server = self._listen(ae, handlers, self.port, server_class)
        if self.tls_context is not None and self.tls_port is not None:
            # Its own SO_REUSEPORT socket in each process, as --processes share it.
            self._tls_server = self._listen(ae, handlers, self.tls_port, ReusePortServer)
            cast(ReusePortServer, self._tls_server).tls_context = self.tls_context
            self.tls_port = int(self._tls_server.server_address[1])
            threading.Thread(
                target=self._tls_server.serve_forever, name="storage-scp-tls", daemon=True
            ).start()
            log.info("storage SCP %s: TLS on %s:%d", self.ae_title, self.host, self.tls_port)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="storage-scp", daemon=True
        )
        self._thread.start()
        self.port = int(server.server_address[1])
        log.info("storage SCP %s listening on %s:%d", self.ae_title, self.host, self.port)
        return self.port

    def _start_aio(self) -> int:
        proxies = None
        if self.proxy_protocol_from:
            proxies = HostPatterns.parse(self.proxy_protocol_from, Resolver())
        server = AioStorageServer(
            self.context,
            ae_title=self.ae_title,
            host=self.host,
            associate_timeout_s=self.associate_timeout_s,
            idle_timeout_s=self.idle_timeout_s,
            proxies=proxies,
        )
        server.start()
        self._aio = server
        self.port = server.listen(self.port, listen_fd=self.listen_fd)
        if self.tls_context is not None and self.tls_port is not None:
            self.tls_port = server.listen(self.tls_port, tls=self.tls_context)
            log.info("storage SCP %s: TLS on %s:%d", self.ae_title, self.host, self.tls_port)
        log.info("storage SCP %s listening on %s:%d (asyncio)", self.ae_title, self.host, self.port)
        return self.port

    def _listen(
        self, ae: AE, handlers: list[Any], port: int, server_class: type[ReusePortServer]
    ) -> ThreadedAssociationServer:
        server = ae.make_server((self.host, port), evt_handlers=handlers, server_class=server_class)
        cast(ReusePortServer, server).gate = self.context.gate
        cast(ReusePortServer, server).tls_handshake_timeout_s = self.associate_timeout_s
        if self.proxy_protocol_from:
            cast(ReusePortServer, server).proxies = HostPatterns.parse(
                self.proxy_protocol_from, Resolver()
            )
        # AE.start_server keeps its servers in this list, and shutdown() expects it.
        ae._servers.append(server)
        return server

    def _is_recorded(self, relative: str) -> bool:
        with self.context.sessions() as session:
            return bool(
                session.scalar(
                    select(
                        or_(
                            exists().where(ReceivedInstance.file_path == relative),
                            exists().where(OrphanInstance.file_path == relative),
                        )
                    )
                )
            )

    def _recover(self) -> None:
        """Sweep what SCP processes killed on this storage left: temp files, and
        files linked to their final name whose row was never committed."""
        removed = self.context.storage.recover(self._is_recorded)
        if removed:
            log.warning("removed %d files a killed SCP stored without their rows", removed)

    def _settle_kept(self) -> None:
        """Once no store is in flight: the files kept for want of the database."""
        try:
            removed = self.context.storage.settle_kept(self._is_recorded)
        except SQLAlchemyError as exc:
            log.warning("files kept for recovery left to the next start: %s", exc)
            return
        if removed:
            log.warning("removed %d files stored while their rows could not be", removed)

    def stop(self, drain_timeout: float = 30.0) -> None:
        """Refuse new associations, let the ones in flight finish, then close."""
        if self._aio is not None:
            self.context.draining.set()
            self._aio.stop(drain_timeout)  # its thread pool, and every store, done
            self._aio = None
            self._settle_kept()
            self.context.close()
            return
        servers = [s for s in (self._server, self._tls_server) if s is not None]
        if not servers:
            return
        self.context.draining.set()
        for server in servers:
            server.shutdown()  # stops accepting and closes the listening socket
        deadline = time.monotonic() + drain_timeout
        # Only associations that are established have stores in flight; a
        # connection that never asked for one (a port probe) is not waited for.
        while time.monotonic() < deadline and any(
            a.is_established for server in servers for a in server.active_associations
        ):
            time.sleep(0.05)
        for assoc in [a for server in servers for a in server.active_associations]:
            if assoc.is_established:
                log.warning("aborting an association still open after %.0f s", drain_timeout)
            assoc.abort(block=False)
        self._server = self._tls_server = None
        # Their handlers end with them; a store still in flight after this
        # leaves the files kept to the next start.
        idle_by = time.monotonic() + 10.0
        while time.monotonic() < idle_by and any(s.active_associations for s in servers):
            time.sleep(0.05)
        if not any(s.active_associations for s in servers):
            self._settle_kept()
        self.context.close()

    def serve(self, on_ready: Callable[[], None] | None = None) -> None:
        """Run until SIGTERM or SIGINT, then drain and stop; ``on_ready`` once serving."""
        stopping = threading.Event()

        def on_signal(signum: int, _frame: Any) -> None:
            log.info("signal %d: draining", signum)
            stopping.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        if on_ready is not None:
            on_ready()
        stopping.wait()
        self.stop()
