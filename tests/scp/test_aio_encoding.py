"""The asyncio path's hand-made encodings are byte for byte pynetdicom's."""

from __future__ import annotations

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.pdu import A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

from qrfarm.scp.aio import encoding, negotiation
from qrfarm.scp.contexts import supported_contexts

# Fixed values: parallel test processes must collect the same test ids.
UIDS = [
    "1.2.826.0.1.3680043.8.498.76941318402752206854414443820163019090",
    "1.2.3",
    "1.2.34",
]  # long, odd length, even length


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


def _request(calling_ae: str, contexts: int = 3) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = "QRFARMSCP"
    cxs = []
    for index in range(contexts):
        cx = build_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        cx.context_id = 2 * index + 1
        cxs.append(cx)
    primitive.presentation_context_definition_list = cxs
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    primitive.user_information = [length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def test_an_association_request_seen_before_gets_the_same_answer() -> None:
    recent = negotiation.RecentRequests()
    supported = supported_contexts()
    first = _request("SENDER")
    request = recent.decode(first)
    answer = recent.accept(first, request, supported, 1 << 20)
    assert recent.decode(first) is request
    assert recent.accept(first, request, supported, 1 << 20) is answer
    assert answer.pdu == negotiation.accept(request, supported, 1 << 20).pdu
    assert sorted(answer.contexts) == [1, 3, 5]
    # Another calling AE title is another request (the answer echoes it).
    other = _request("OTHER")
    assert recent.decode(other).calling_ae == "OTHER"
    assert recent.accept(other, recent.decode(other), supported, 1 << 20).pdu != answer.pdu
    # Bounded: the oldest are forgotten.
    for index in range(negotiation.REMEMBERED_RQS + 1):
        recent.decode(_request(f"AE{index}"))
    assert recent.decode(first) is not request
    assert len(recent._answers) <= negotiation.REMEMBERED_RQS
