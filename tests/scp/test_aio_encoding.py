"""The asyncio path's hand-made encodings are byte for byte pynetdicom's."""

from __future__ import annotations

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.pdu import P_DATA_TF

from qrfarm.scp.aio import encoding

UIDS = [generate_uid(), "1.2.3", "1.2.34"]  # long, odd length, even length


@pytest.mark.parametrize("sop_uid", UIDS)
@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xC000])
def test_a_store_response_is_pynetdicoms(sop_uid: str, status: int) -> None:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = 4711
    response.AffectedSOPClassUID = CTImageStorage
    response.AffectedSOPInstanceUID = sop_uid
    response.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(response)
    expected = b"".join(P_DATA_TF(p).encode() for p in message.encode_msg(5, 16384))
    assert encoding.store_response_pdu(4711, CTImageStorage, sop_uid, status, 5) == expected


@pytest.mark.parametrize("sop_uid", UIDS)
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, JPEGBaseline8Bit])
def test_file_meta_is_pynetdicoms(sop_uid: str, syntax: str) -> None:
    expected = DicomBytesIO()
    expected.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(
        expected,
        create_file_meta(
            sop_class_uid=CTImageStorage, sop_instance_uid=sop_uid, transfer_syntax=syntax
        ),
    )
    assert encoding.file_meta(CTImageStorage, sop_uid, syntax) == expected.getvalue()


def test_what_is_not_ascii_is_left_to_pynetdicom() -> None:
    assert encoding.file_meta(CTImageStorage, "1.2.\u00e9", ExplicitVRLittleEndian) is None
    assert encoding.store_response_pdu(1, CTImageStorage, "1.2.\u00e9", 0, 1) is None
