"""The encodings the asyncio path makes for every instance, by hand.

Building them through pydicom datasets (pynetdicom's C_STORE_RSP and
create_file_meta) costs about half a millisecond of the loop's time per
instance, more than receiving a CT image. These produce the same bytes for
the ordinary case (tests hold them to pynetdicom's output); anything else
(an Error Comment, a peer PDU too small, a value that is not ASCII) returns
None and the caller takes pynetdicom's encoders.
"""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

PREAMBLE = b"\x00" * 128 + b"DICM"
_IMPLICIT = struct.Struct("<HHL")  # group, element, length
_US = struct.Struct("<HHLH")
_EXPLICIT_SHORT = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
C_STORE_RSP_FIELD = 0x8001
NO_DATA_SET = 0x0101


def _ascii(value: str, pad: bytes) -> bytes | None:
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError:
        return None
    return raw + pad if len(raw) % 2 else raw


def _ui_implicit(element: int, uid: bytes) -> bytes:
    return _IMPLICIT.pack(0x0000, element, len(uid)) + uid


def store_response_pdu(
    message_id: int, sop_class: str, sop_instance: str, status: int, context_id: int
) -> bytes | None:
    """A C-STORE-RSP with no Error Comment in one P-DATA-TF, as pynetdicom
    encodes it (command set in Implicit VR Little Endian, one last fragment)."""
    sop_class_raw = _ascii(sop_class, b"\x00")
    sop_instance_raw = _ascii(sop_instance, b"\x00")
    if sop_class_raw is None or sop_instance_raw is None:
        return None
    body = b"".join(
        (
            _ui_implicit(0x0002, sop_class_raw),
            _US.pack(0x0000, 0x0100, 2, C_STORE_RSP_FIELD),
            _US.pack(0x0000, 0x0120, 2, message_id),
            _US.pack(0x0000, 0x0800, 2, NO_DATA_SET),
            _US.pack(0x0000, 0x0900, 2, status),
            _ui_implicit(0x1000, sop_instance_raw),
        )
    )
    command = _IMPLICIT.pack(0x0000, 0x0000, 4) + struct.pack("<L", len(body)) + body
    pdv = struct.pack(">LBB", len(command) + 2, context_id, 0x03) + command
    return struct.pack(">BxL", 0x04, len(pdv)) + pdv


def pdu_fits(pdu: bytes, peer_max_pdu: int) -> bool:
    """Whether one P-DATA-TF's items fit the peer's maximum length (0: no limit)."""
    return peer_max_pdu == 0 or len(pdu) - 6 <= peer_max_pdu


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes | None:
    """Preamble and file meta as pynetdicom writes them ahead of a spooled data set."""
    values = [_ascii(v, b"\x00") for v in (sop_class, sop_instance, transfer_syntax)]
    implementation = _ascii(str(PYNETDICOM_IMPLEMENTATION_UID), b"\x00")
    version = _ascii(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")
    if any(v is None or len(v) > 0xFFFF for v in values):
        return None
    assert implementation is not None and version is not None
    sop_class_raw, sop_instance_raw, syntax_raw = values
    assert sop_class_raw is not None and sop_instance_raw is not None and syntax_raw is not None
    elements = b"".join(
        (
            struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
            _EXPLICIT_SHORT.pack(0x0002, 0x0002, b"UI", len(sop_class_raw)) + sop_class_raw,
            _EXPLICIT_SHORT.pack(0x0002, 0x0003, b"UI", len(sop_instance_raw)) + sop_instance_raw,
            _EXPLICIT_SHORT.pack(0x0002, 0x0010, b"UI", len(syntax_raw)) + syntax_raw,
            _EXPLICIT_SHORT.pack(0x0002, 0x0012, b"UI", len(implementation)) + implementation,
            _EXPLICIT_SHORT.pack(0x0002, 0x0013, b"SH", len(version)) + version,
        )
    )
    group_length = _EXPLICIT_SHORT.pack(0x0002, 0x0000, b"UL", 4) + struct.pack("<L", len(elements))
    return PREAMBLE + group_length + elements
