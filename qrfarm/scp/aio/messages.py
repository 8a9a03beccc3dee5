"""DIMSE on the asyncio path: command sets decoded with pynetdicom's decoder,
answers encoded with its message classes (the C-STORE-RSP of every instance
by hand, to the same bytes: see encoding); the PDUs that end an association."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_ECHO_RQ, C_ECHO_RSP, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.pdu import A_ABORT_RQ, A_RELEASE_RP, P_DATA_TF
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT

from qrfarm.dicom import Status

from . import encoding

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


# Command elements read on every C-STORE (PS3.7 E.1).
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
DATA_SET_TYPE = 0x00000800
AFFECTED_SOP_CLASS_UID = 0x00000002
AFFECTED_SOP_INSTANCE_UID = 0x00001000
MOVE_ORIGINATOR_AE = 0x00001030
MOVE_ORIGINATOR_MESSAGE_ID = 0x00001031
EVENT_TYPE_ID = 0x00001002


def us_value(command: Dataset, tag: int) -> int | None:
    """An US element of a decoded command set, read from its bytes.

    pydicom decodes the command set into raw elements; turning each into a
    value costs some 25 microseconds (validation, VR lookup), which on every
    C-STORE was a tenth of the loop's time. The few values the SCP reads are
    an unsigned short or text, read here as they are."""
    element = command.get_item(tag)
    if element is None:
        return None
    value = element.value
    if isinstance(value, bytes):
        if not value:
            return None
        if len(value) != 2:
            raise ValueError(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) is not an US")
        return int.from_bytes(value, "little")
    return None if value is None else int(value)


def text_value(command: Dataset, tag: int) -> str:
    """A UI or AE element of a decoded command set ('' when absent or empty)."""
    element = command.get_item(tag)
    value = None if element is None else element.value
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").strip("\x00 ")
    return "" if value is None else str(value).strip("\x00 ")


@dataclass(frozen=True)
class StoreCommand:
    """What the SCP reads of a C-STORE-RQ's command set."""

    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    originator_ae: str | None
    originator_message_id: int | None

    @classmethod
    def of(cls, command: Dataset) -> StoreCommand:
        # Read from the decoded command set: pynetdicom's message_to_primitive
        # (C_STORE_RQ) builds and validates a primitive at ~0.2 ms an instance.
        message_id = us_value(command, MESSAGE_ID)
        if message_id is None:
            raise ValueError("a C-STORE-RQ without a Message ID")
        return cls(
            message_id=message_id,
            sop_class_uid=text_value(command, AFFECTED_SOP_CLASS_UID),
            sop_instance_uid=text_value(command, AFFECTED_SOP_INSTANCE_UID),
            originator_ae=text_value(command, MOVE_ORIGINATOR_AE) or None,
            originator_message_id=us_value(command, MOVE_ORIGINATOR_MESSAGE_ID),
        )


def echo_request(command: Dataset) -> C_ECHO:
    message = C_ECHO_RQ()
    message.command_set = command
    primitive = message.message_to_primitive()
    assert isinstance(primitive, C_ECHO)
    return primitive


def store_response(
    request: StoreCommand, answer: int | Dataset, context_id: int, peer_max_pdu: int
) -> bytes:
    """The C-STORE-RSP's P-DATA-TF PDUs for ``answer`` (a status, or one with
    its Error Comment)."""
    if not isinstance(answer, Dataset):
        fast = encoding.store_response_pdu(
            request.message_id,
            request.sop_class_uid,
            request.sop_instance_uid,
            int(answer),
            context_id,
        )
        if fast is not None and encoding.pdu_fits(fast, peer_max_pdu):
            return fast
    response = C_STORE()
    response.MessageIDBeingRespondedTo = request.message_id
    response.AffectedSOPClassUID = request.sop_class_uid
    response.AffectedSOPInstanceUID = request.sop_instance_uid
    if isinstance(answer, Dataset):
        response.Status = int(answer.Status)
        if "ErrorComment" in answer:
            response.ErrorComment = str(answer.ErrorComment)  # type: ignore[assignment]
    else:
        response.Status = int(answer)
    message = C_STORE_RSP()
    message.primitive_to_message(response)
    return encode_message(message, context_id, peer_max_pdu)


def echo_response(request: C_ECHO, context_id: int, peer_max_pdu: int) -> bytes:
    response = C_ECHO()
    response.MessageIDBeingRespondedTo = request.MessageID
    response.AffectedSOPClassUID = request.AffectedSOPClassUID
    response.Status = Status.SUCCESS
    message = C_ECHO_RSP()
    message.primitive_to_message(response)
    return encode_message(message, context_id, peer_max_pdu)


def encode_message(message: DIMSEMessage, context_id: int, peer_max_pdu: int) -> bytes:
    """A DIMSE message as the P-DATA-TF PDUs the peer takes."""
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
