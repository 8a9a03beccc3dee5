"""Socket options that keep DICOM's two-write PDUs from stalling on loopback and LANs.

pynetdicom writes a command and its data set as separate PDUs, and DCMTK
writes each PDU as two write() calls (header, then body). With Nagle's
algorithm on at the sender, the second write waits until the first is
acknowledged, and a receiver in delayed-ACK mode acknowledges ~40 ms later.
TCP_NODELAY removes our own stall as a sender; quick ACKs (TCP_QUICKACK,
re-armed around every read because the kernel drops it on its own) shorten
the stall of a peer that leaves Nagle on.
"""

from __future__ import annotations

import socket
from contextlib import suppress

from pynetdicom.transport import AssociationSocket


def _quickack(sock: socket.socket | None) -> None:
    if sock is not None and hasattr(socket, "TCP_QUICKACK"):
        with suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


class QuickAckSocket(AssociationSocket):
    """An association socket that acknowledges every segment it reads at once."""

    def recv(self, nr_bytes: int) -> bytearray:
        _quickack(self.socket)
        data = super().recv(nr_bytes)
        _quickack(self.socket)
        return data


def tune(assoc_socket: AssociationSocket | None) -> None:
    """TCP_NODELAY and quick ACKs on an association's socket (call on EVT_CONN_OPEN)."""
    if assoc_socket is None:
        return
    if assoc_socket.socket is not None:
        with suppress(OSError):
            assoc_socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if type(assoc_socket) is AssociationSocket:
        assoc_socket.__class__ = QuickAckSocket
