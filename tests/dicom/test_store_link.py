"""The forwarder's C-STORE sender against a destination that answers badly:
what it holds while waiting for a response is bounded, in bytes and time."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress

import pytest

from qrfarm.dicom import Node
from qrfarm.dicom.store_link import StoreLink
from qrfarm.errors import AssociationAborted

NODE = Node("DEST", "127.0.0.1", 11112)


def _pdu(control: int, payload: bytes) -> bytes:
    pdv = struct.pack(">IBB", len(payload) + 2, 1, control) + payload
    return struct.pack(">BBI", 4, 0, len(pdv)) + pdv


@pytest.fixture
def link_and_peer() -> Iterator[tuple[StoreLink, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.settimeout(2.0)
    try:
        yield StoreLink(ours, NODE, dimse_timeout=2.0), theirs
    finally:
        ours.close()
        theirs.close()


def _send_from(peer: socket.socket, write: Callable[[socket.socket], None]) -> None:
    def run() -> None:
        with suppress(OSError):  # our side stopped reading and closed: expected
            write(peer)

    threading.Thread(target=run, daemon=True).start()


def test_a_command_that_never_ends_is_refused_before_it_grows_large(
    link_and_peer: tuple[StoreLink, socket.socket],
) -> None:
    link, peer = link_and_peer
    piece = b"\0" * (1 << 20)
    _send_from(peer, lambda s: [s.sendall(_pdu(0x01, piece)) for _ in range(24)])
    with pytest.raises(AssociationAborted, match="command"):
        link._response(1)


def test_a_data_set_in_a_response_is_refused(
    link_and_peer: tuple[StoreLink, socket.socket],
) -> None:
    link, peer = link_and_peer
    _send_from(peer, lambda s: s.sendall(_pdu(0x02, b"\0" * 64)))
    with pytest.raises(AssociationAborted, match="data set"):
        link._response(1)


def test_a_response_trickled_byte_by_byte_ends_at_the_dimse_timeout(
    link_and_peer: tuple[StoreLink, socket.socket],
) -> None:
    link, peer = link_and_peer
    link.dimse_timeout = 1.0
    trickled = threading.Event()

    def trickle(s: socket.socket) -> None:
        for _ in range(600):  # each byte within a per-read timeout: 6 s or more in all
            s.sendall(_pdu(0x01, b"\0"))
            time.sleep(0.01)
        trickled.set()

    _send_from(peer, trickle)
    with pytest.raises(TimeoutError):
        link._response(1)
    assert not trickled.is_set()  # given up while the peer was still trickling
