"""Reading the PROXY protocol v2 header: the client's address, and not one byte more."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from qrfarm.errors import ProxyHeaderError
from qrfarm.scp.proxy_protocol import SIGNATURE, header, read_header

A_ASSOCIATE_RQ_START = b"\x01\x00"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        yield ours, theirs


def test_a_tcp4_header_gives_the_client_and_leaves_the_dicom_bytes(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    theirs.sendall(header(("127.0.0.1", 40001), ("127.0.0.1", 11113)) + A_ASSOCIATE_RQ_START)
    assert read_header(ours) == ("127.0.0.1", 40001)
    assert ours.recv(16) == A_ASSOCIATE_RQ_START


def test_a_tcp6_header_with_tlvs_after_the_addresses(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    plain = header(("::1", 40002), ("::1", 11113))
    tlv = b"\x05\x00\x04abcd"  # PP2_TYPE_UNIQUE_ID, as HAProxy may add
    length = struct.unpack("!H", plain[14:16])[0] + len(tlv)
    theirs.sendall(plain[:14] + struct.pack("!H", length) + plain[16:] + tlv + b"\x01")
    assert read_header(ours) == ("::1", 40002)
    assert ours.recv(16) == b"\x01"


def test_a_local_header_is_the_proxy_speaking_for_itself(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    theirs.sendall(SIGNATURE + bytes([0x20, 0x00]) + b"\x00\x00")
    assert read_header(ours) is None


@pytest.mark.parametrize(
    "sent",
    [
        A_ASSOCIATE_RQ_START + b"\x00" * 14,  # DICOM straight away: no header
        b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 11113\r\n",  # version 1 is not taken
        SIGNATURE + bytes([0x10, 0x11]) + b"\x00\x0c" + b"\x00" * 12,  # version 1 in v2 form
        SIGNATURE + bytes([0x21, 0x11]) + b"\x00\x04" + b"\x00" * 4,  # addresses cut short
        SIGNATURE + bytes([0x2F, 0x11]) + b"\x00\x00",  # a command that does not exist
    ],
)
def test_anything_else_is_refused(pair: tuple[socket.socket, socket.socket], sent: bytes) -> None:
    ours, theirs = pair
    theirs.sendall(sent)
    with pytest.raises(ProxyHeaderError):
        read_header(ours, timeout_s=1.0)


def test_a_header_cut_short_by_the_close_or_never_sent_is_refused(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    with pytest.raises(ProxyHeaderError):
        read_header(ours, timeout_s=0.2)  # nothing sent
    theirs.sendall(SIGNATURE[:5])
    theirs.close()
    with pytest.raises(ProxyHeaderError):
        read_header(ours, timeout_s=1.0)
