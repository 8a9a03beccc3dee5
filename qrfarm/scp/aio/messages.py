"""DIMSE on the asyncio path: command sets decoded and answers encoded with
pynetdicom's message classes; the PDUs that end an association."""

from __future__ import annotations

import struct
from io import BytesIO

from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_ECHO_RQ, C_ECHO_RSP, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.pdu import A_ABORT_RQ, A_RELEASE_RP, P_DATA_TF
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT

from qrfarm.dicom import Status

# PDU types, PS3.8 9.3.1.
ASSOCIATE_RQ = 0x01
P_DATA = 0x04
RELEASE_RQ = 0x05
ABORT = 0x07
PDU_HEADER = struct.Struct(">BxL")
PDV_HEADER = struct.Struct(">LBB")  # item length, context ID, message control header

C_STORE_RQ_FIELD = 0x0001
C_ECHO_RQ_FIELD = 0x0030
NO_DATA_SET = 0x0101
# A-P-ABORT reasons, PS3.8 9.3.8.
ABORT_UNEXPECTED_PDU = 0x02
ABORT_UNRECOGNISED_PDU_PARAMETER = 0x04
ABORT_INVALID_PDU_PARAMETER = 0x06


def command_set(encoded: bytes) -> Dataset:
    """A command set (always Implicit VR Little Endian)."""
    return decode(BytesIO(encoded), True, True)


def store_request(command: Dataset) -> C_STORE:
    message = C_STORE_RQ()
    message.command_set = command
    primitive = message.message_to_primitive()
    assert isinstance(primitive, C_STORE)
    return primitive


def echo_request(command: Dataset) -> C_ECHO:
    message = C_ECHO_RQ()
    message.command_set = command
    primitive = message.message_to_primitive()
    assert isinstance(primitive, C_ECHO)
    return primitive


def store_response(
    request: C_STORE, answer: int | Dataset, context_id: int, peer_max_pdu: int
) -> bytes:
    """The C-STORE-RSP's P-DATA-TF PDUs for ``answer`` (a status, or one with
    its Error Comment)."""
    response = C_STORE()
    response.MessageIDBeingRespondedTo = request.MessageID
    response.AffectedSOPClassUID = request.AffectedSOPClassUID
    response.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID
    if isinstance(answer, Dataset):
        response.Status = int(answer.Status)
        if "ErrorComment" in answer:
            response.ErrorComment = str(answer.ErrorComment)  # type: ignore[assignment]
    else:
        response.Status = int(answer)
    message = C_STORE_RSP()
    message.primitive_to_message(response)
    return _encode(message, context_id, peer_max_pdu)


def echo_response(request: C_ECHO, context_id: int, peer_max_pdu: int) -> bytes:
    response = C_ECHO()
    response.MessageIDBeingRespondedTo = request.MessageID
    response.AffectedSOPClassUID = request.AffectedSOPClassUID
    response.Status = Status.SUCCESS
    message = C_ECHO_RSP()
    message.primitive_to_message(response)
    return _encode(message, context_id, peer_max_pdu)


def _encode(message: C_STORE_RSP | C_ECHO_RSP, context_id: int, peer_max_pdu: int) -> bytes:
    return b"".join(
        P_DATA_TF(primitive).encode() for primitive in message.encode_msg(context_id, peer_max_pdu)
    )


def release_response() -> bytes:
    return A_RELEASE_RP().encode()


def abort(reason: int | None = None) -> bytes:
    """An A-ABORT: from the service user, or (with ``reason``) the provider."""
    primitive: A_ABORT | A_P_ABORT
    if reason is None:
        primitive = A_ABORT()
        primitive.abort_source = 0x02  # the service provider (acceptor) side
    else:
        primitive = A_P_ABORT()
        primitive.provider_reason = reason
    return A_ABORT_RQ(primitive).encode()
