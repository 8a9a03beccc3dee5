"""Opening an association with pynetdicom, and telling why none resulted.

pynetdicom reports every failed request alike; the caller needs to know
whether the peer was out of reach, refused (and whether for a moment), did not
answer in time, or aborted, and to keep identifiers out of pynetdicom's log.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.presentation import PresentationContext

from qrfarm.errors import AcseTimeout, AssociationAborted, AssociationRejected, PeerUnreachable

from .contexts import scp_roles
from .node import Node
from .reactor import close_reactor_race
from .sockets import tune


@dataclass(frozen=True)
class Timeouts:
    """Seconds each stage may take; ``None`` waits for ever.

    ``dimse`` bounds the wait for each single message: a PACS that sends no
    pending responses during a long C-MOVE needs a large one, with an overall
    ``deadline`` per operation as the real bound.
    """

    connect: float | None = 10.0
    acse: float = 30.0
    dimse: float = 30.0
    network: float | None = 60.0


class _Opening:
    """What the PDU events of one association request saw."""

    def __init__(self) -> None:
        self.connected = False
        self.rejection: A_ASSOCIATE_RJ | None = None

    def on_pdu_received(self, event: Event) -> None:
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            self.rejection = event.pdu

    def on_connection_open(self, event: Event) -> None:
        self.connected = True
        tune(event.assoc.dul.socket)
        close_reactor_race(event.assoc)  # or a fast answer can be lost


def open_association(
    node: Node,
    calling_ae: str,
    timeouts: Timeouts,
    contexts: list[PresentationContext],
    max_pdu: int,
    handlers: list[tuple[Any, Callable[..., Any]]],
) -> Association:
    """An association with ``node`` proposing exactly ``contexts``, with
    ``handlers`` bound. Raises PeerUnreachable, AssociationRejected,
    AcseTimeout or AssociationAborted when none results."""
    # Identifiers hold patient data: keep them out of pynetdicom's log.
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    ae = AE(ae_title=calling_ae)
    ae.requested_contexts = contexts
    ae.connection_timeout = timeouts.connect
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = timeouts.network
    ae.maximum_pdu_size = max_pdu
    tls_args: tuple[ssl.SSLContext, str] | None = None
    if node.tls is not None:
        hostname = node.tls.server_hostname or node.host
        tls_args = (node.tls.context(), hostname)
    opening = _Opening()
    started = time.monotonic()
    assoc = ae.associate(
        node.host,
        node.port,
        ae_title=node.ae_title,
        ext_neg=scp_roles(contexts) or None,  # type: ignore[arg-type]
        tls_args=tls_args,
        evt_handlers=[
            (evt.EVT_CONN_OPEN, opening.on_connection_open),
            (evt.EVT_PDU_RECV, opening.on_pdu_received),
            *handlers,
        ],
    )
    if assoc.is_established:
        # Only the association answer was of interest; don't pay for a
        # handler call on every P-DATA PDU from now on.
        assoc.unbind(evt.EVT_PDU_RECV, opening.on_pdu_received)
        return assoc
    # pynetdicom may report a rejection as an abort: when the peer closes
    # the connection right after its A-ASSOCIATE-RJ, the requestor can see
    # the closed socket before it reads the answer. The PDU itself is the
    # truth, so it is taken from the PDU event.
    rejection = opening.rejection
    if rejection is not None:
        raise AssociationRejected(
            rejection.result_str,
            rejection.source_str,
            rejection.reason_str,
            transient=rejection.result == 0x02,
        )
    if not opening.connected:
        raise PeerUnreachable(node.host, node.port, _connect_error(node, timeouts, tls_args))
    if time.monotonic() - started >= timeouts.acse * 0.9:
        raise AcseTimeout(
            f"{node} did not answer the association request within {timeouts.acse:g} s"
        )
    raise AssociationAborted(f"{node} aborted the association request")


def _connect_error(
    node: Node, timeouts: Timeouts, tls_args: tuple[ssl.SSLContext, str] | None
) -> str:
    """Why no connection could be made: connect once more to get the OS's words."""
    try:
        with socket.create_connection((node.host, node.port), timeout=timeouts.connect) as sock:
            if tls_args is not None:
                with tls_args[0].wrap_socket(sock, server_hostname=tls_args[1]):
                    pass
    except ssl.SSLError as exc:
        return f"TLS handshake failed: {exc}"
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return "the connection was closed before the association request"
