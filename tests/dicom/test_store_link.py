"""The forwarder's C-STORE sender against a destination that answers badly:
what it holds while waiting for a response is bounded, in bytes and time."""

from __future__ import annotations

import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import pytest
from pynetdicom.pdu import A_ASSOCIATE_AC
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

from qrfarm.dicom import Node
from qrfarm.dicom.sending import StoreConnection
from qrfarm.dicom.store_link import StoreLink
from qrfarm.errors import AssociationAborted

NODE = Node("DEST", "127.0.0.1", 11112)
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


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


def test_a_response_pdu_trickled_within_ends_at_the_dimse_timeout(
    link_and_peer: tuple[StoreLink, socket.socket],
) -> None:
    """One PDU announcing 1000 bytes, sent a byte at a time: each read is within
    any per-read timeout, the whole is not."""
    link, peer = link_and_peer
    link.dimse_timeout = 1.0
    trickled = threading.Event()

    def trickle(s: socket.socket) -> None:
        s.sendall(struct.pack(">BBI", 4, 0, 1000))
        for _ in range(1000):
            s.sendall(b"\0")
            time.sleep(0.02)
        trickled.set()

    _send_from(peer, trickle)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        link._response(1)
    assert time.monotonic() - started < 5.0
    assert not trickled.is_set()


def _answering(answer: bytes) -> tuple[int, threading.Thread]:
    """A peer on a port of its own that answers any association request with ``answer``."""
    server = socket.create_server(("127.0.0.1", 0))
    port = int(server.getsockname()[1])

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn, suppress(OSError):
                conn.recv(65536)
                conn.sendall(answer)
                conn.recv(16)  # the A-ABORT, or the connection closed

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread


def _open(port: int) -> StoreLink:
    return StoreLink.open(
        Node("DEST", "127.0.0.1", port),
        [build_context(CT_IMAGE_STORAGE)],
        calling_ae="QRFARM",
        connect_timeout=2.0,
        acse_timeout=2.0,
        dimse_timeout=2.0,
    )


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(
            # An item announcing more bytes than the PDU holds.
            b"\x02\x00"
            + struct.pack(">I", 72)
            + b"\x00\x01\x00\x00"
            + b"A" * 64
            + b"\x21\x00\xff\xff",
            id="garbled-accept",
        ),
        pytest.param(b"\x03\x00" + struct.pack(">I", 4) + b"\x00\x07\x09\x09", id="odd-reject"),
    ],
)
def test_a_malformed_association_answer_is_an_abort_not_a_crash(answer: bytes) -> None:
    port, peer = _answering(answer)
    with pytest.raises(AssociationAborted, match="malformed"):
        _open(port)
    peer.join(5)


def test_a_peer_announcing_a_tiny_maximum_pdu_is_refused_by_name() -> None:
    accept = A_ASSOCIATE_AC()
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "QRFARM"
    primitive.called_ae_title = "DEST"
    primitive.result = 0
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 70
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.3.4"
    primitive.user_information = [maximum, implementation]
    context = build_context(CT_IMAGE_STORAGE)
    context.context_id = 1
    context.result = 0
    primitive.presentation_context_definition_results_list = [context]
    accept.from_primitive(primitive)
    port, peer = _answering(accept.encode())
    with pytest.raises(AssociationAborted, match="maximum PDU of 70 bytes"):
        _open(port)
    peer.join(5)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(b"\x01\x02\x03", id="garbage"),
        pytest.param(
            # Command Field C-STORE-RSP, Message ID Being Responded To 1, no Status.
            struct.pack("<HHIH", 0x0000, 0x0100, 2, 0x8001)
            + struct.pack("<HHIH", 0x0000, 0x0120, 2, 1),
            id="no-status",
        ),
    ],
)
def test_a_response_command_set_that_cannot_be_read_is_an_abort(
    link_and_peer: tuple[StoreLink, socket.socket], command: bytes
) -> None:
    link, peer = link_and_peer
    _send_from(peer, lambda s: s.sendall(_pdu(0x03, command)))
    with pytest.raises(AssociationAborted, match="response"):
        link._response(1)


def _store_response() -> bytes:
    """A C-STORE-RSP to message 1, success."""
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    command = Dataset()
    command.CommandField = 0x8001
    command.MessageIDBeingRespondedTo = 1
    command.CommandDataSetType = 0x0101
    command.Status = 0
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, True
    write_dataset(out, command)
    return _pdu(0x03, out.getvalue())


def _answer_one_store(peer: socket.socket) -> None:
    """Take PDUs (keeping none of their bytes) until a data set's last
    fragment, then answer success."""

    def skip(count: int) -> None:
        while count:
            count -= len(peer.recv(min(count, 64 << 10)))

    while True:
        header = peer.recv(6, socket.MSG_WAITALL)
        if len(header) < 6:
            return
        _kind, left = struct.unpack(">BxI", header)
        last = False
        while left:
            item_length, _context, control = struct.unpack(">IBB", peer.recv(6, socket.MSG_WAITALL))
            skip(item_length - 2)
            left -= 4 + item_length
            last = last or (control & 0x03) == 0x02
        if last:
            peer.sendall(_store_response())
            return


def test_a_held_file_is_sent_without_being_read_into_memory(
    link_and_peer: tuple[StoreLink, socket.socket], tmp_path: Path
) -> None:
    """A large instance (here 48 MiB of pixel data) is sent from the file's
    mapping: what the sender allocates stays far below its size."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    link, peer = link_and_peer
    sop = "1.2.826.0.1.3680043.10.1234.77"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop
    ds.PixelData = b"\x01" * (48 << 20)
    ds["PixelData"].VR = "OB"
    path = tmp_path / "large.dcm"
    ds.save_as(path, enforce_file_format=True)
    del ds
    link.contexts[(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)] = 1
    link.dimse_timeout = 30.0  # allocations are slow while traced
    connection = StoreConnection(NODE, link)
    answering = threading.Thread(target=_answer_one_store, args=(peer,), daemon=True)
    answering.start()
    tracemalloc.start()
    try:
        outcome = connection.send_file(path, CT_IMAGE_STORAGE, sop, ExplicitVRLittleEndian)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    answering.join(10)
    assert outcome.ok, outcome
    assert peak < 8 << 20, peak
