"""Storage Commitment reports on the asyncio path: the N-EVENT-REPORT a
destination sends on an association of its own (Orthanc always does), taken
as pynetdicom's path takes it (qrfarm.scp.commitment) and recorded by the
same function (qrfarm.delivery.commitment.handle_report).

A report is a small data set (the UIDs of one request), so it is gathered in
memory, up to a bound: a peer sending more is answered Resource Limitation
and its bytes are counted, not kept.
"""

from __future__ import annotations

from io import BytesIO

from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import N_EVENT_REPORT_RSP
from pynetdicom.dimse_primitives import N_EVENT_REPORT
from pynetdicom.dsutils import decode
from pynetdicom.presentation import PresentationContext

from qrfarm.dicom.commitment import MAX_REFERENCES

from .messages import (
    AFFECTED_SOP_CLASS_UID,
    AFFECTED_SOP_INSTANCE_UID,
    EVENT_TYPE_ID,
    MESSAGE_ID,
    encode_message,
    text_value,
    us_value,
)

N_EVENT_REPORT_RQ_FIELD = 0x0100
MAX_UID = 64
# A request names at most MAX_REFERENCES instances, about 120 bytes each in a report.
MAX_REPORT_BYTES = MAX_REFERENCES * 200


class IncomingReport:
    """An N-EVENT-REPORT whose Event Information is arriving."""

    def __init__(self, command: Dataset, context_id: int, context: PresentationContext) -> None:
        message_id = us_value(command, MESSAGE_ID)
        if message_id is None:
            raise ValueError("an N-EVENT-REPORT-RQ without a Message ID")
        self.message_id = message_id
        self.sop_class_uid = text_value(command, AFFECTED_SOP_CLASS_UID)
        self.sop_instance_uid = text_value(command, AFFECTED_SOP_INSTANCE_UID)
        if len(self.sop_class_uid) > MAX_UID or len(self.sop_instance_uid) > MAX_UID:
            # The answer repeats them, and no UID is longer: refused at once.
            raise ValueError("an Affected SOP Class or Instance UID over 64 characters")
        self.event_type = us_value(command, EVENT_TYPE_ID)
        self.context_id = context_id
        self.context = context
        self.buffer = bytearray()
        self.received = 0

    @property
    def too_large(self) -> bool:
        return self.received > MAX_REPORT_BYTES

    def write(self, data: memoryview) -> None:
        self.received += len(data)
        if not self.too_large:
            self.buffer += data

    def discard(self) -> None:
        self.buffer = bytearray()

    def event_information(self) -> Dataset | None:
        """The data set, decoded whole in the context's transfer syntax; None
        when it cannot be (the report is then refused as having no content)."""
        if not self.buffer:
            return None
        syntax = self.context.transfer_syntax[0]
        try:
            info = decode(
                BytesIO(bytes(self.buffer)),
                syntax.is_implicit_VR,
                syntax.is_little_endian,
                syntax.is_deflated,
            )
            for _ in info.iterall():  # pydicom decodes lazily: every element now
                pass
        except Exception:  # noqa: BLE001 (whatever a peer's bytes hold)
            return None
        return info


def report_response(report: IncomingReport, status: int, peer_max_pdu: int) -> bytes:
    """The N-EVENT-REPORT-RSP's P-DATA-TF PDUs, as pynetdicom's service answers."""
    response = N_EVENT_REPORT()
    response.MessageIDBeingRespondedTo = report.message_id
    response.AffectedSOPClassUID = report.sop_class_uid
    response.AffectedSOPInstanceUID = report.sop_instance_uid
    if report.event_type is not None:
        response.EventTypeID = report.event_type
    response.Status = status
    message = N_EVENT_REPORT_RSP()
    message.primitive_to_message(response)
    return encode_message(message, report.context_id, peer_max_pdu)
