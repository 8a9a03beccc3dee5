"""Test senders: a pynetdicom SCU that can put any bytes on the wire as a C-STORE."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.events import Event
from pynetdicom.pdu import A_ASSOCIATE_RJ, A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from tests.conftest import QRFARM_SCP_AE


@contextmanager
def store_association(
    port: int, sop_classes: list[str], calling_ae: str = "STORESCU", called_ae: str = "QRFARMSCP"
) -> Iterator[Association]:
    ae = AE(ae_title=calling_ae)
    for uid in dict.fromkeys(sop_classes):
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established, "the test SCP refused the association"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


VERIFICATION = "1.2.840.10008.1.1"


def association_answer(
    port: int,
    calling_ae: str,
    *,
    source: str = "127.0.0.1",
    called_ae: str = QRFARM_SCP_AE,
    held: list[Association] | None = None,
) -> tuple[int, int, int] | None:
    """None when the SCP accepts a Verification association (released at
    once, or appended to ``held``); else its A-ASSOCIATE-RJ (result, source,
    diagnostic).

    The rejection is read off the PDU itself: pynetdicom's requestor can
    report a fast one as an abort, when its DUL thread has already closed the
    socket on the answer before the ACSE thread checks that it connected.
    """
    rejections: list[A_ASSOCIATE_RJ] = []

    def on_pdu(event: Event) -> None:
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            rejections.append(event.pdu)

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(VERIFICATION, ImplicitVRLittleEndian)
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title=called_ae,
        bind_address=(source, 0),
        evt_handlers=[(evt.EVT_PDU_RECV, on_pdu)],
    )
    if assoc.is_established:
        assert int(assoc.send_c_echo().Status) == 0
        if held is None:
            assoc.release()
        else:
            held.append(assoc)
        return None
    assert rejections, f"the SCP neither accepted nor rejected (aborted {assoc.is_aborted})"
    answer = rejections[0]
    return (answer.result or 0, answer.source or 0, answer.reason_diagnostic or 0)


def encoded(ds: Dataset) -> bytes:
    raw = encode(ds, False, True)
    assert raw is not None
    return raw


def send_raw(
    assoc: Association, sop_class: str, sop_uid: str, raw: bytes, message_id: int = 1
) -> int:
    """Send ``raw`` as the data set of a C-STORE, whatever it holds; return the status."""
    context = next(c for c in assoc.accepted_contexts if c.abstract_syntax == sop_class)
    request = store_request(sop_class, sop_uid, raw, message_id)
    assert context.context_id is not None
    with reactor_paused(assoc):
        assoc.dimse.send_msg(request, context.context_id)
        _, response = assoc.dimse.get_msg(block=True)
    assert isinstance(response, C_STORE) and response.Status is not None
    return int(response.Status)


def store_request(sop_class: str, sop_uid: str, data: bytes, message_id: int = 1) -> C_STORE:
    """A C-STORE request carrying ``data`` as its data set, whatever it holds."""
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = sop_uid
    request.Priority = 0
    request.DataSet = BytesIO(data)
    return request


def store_pdus(request: C_STORE, context_id: int, max_pdu: int) -> list[bytes]:
    """The request's P-DATA-TF PDUs, encoded as a sender puts them on the wire."""
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return [P_DATA_TF(p).encode() for p in message.encode_msg(context_id, max_pdu)]


@contextmanager
def reactor_paused(assoc: Association) -> Iterator[None]:
    """The association's answers read by the test: as send_c_store does, its
    reactor is paused, or it takes the response off the queue itself
    ("unexpected C-STORE service message")."""
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        yield
    finally:
        assoc._reactor_checkpoint.set()


def read(path: object) -> Dataset:
    return dcmread(path)  # type: ignore[arg-type]


def association_request(calling_ae: str, contexts: list[PresentationContext]) -> bytes:
    """An A-ASSOCIATE-RQ PDU to the test SCP proposing ``contexts`` as given
    (their IDs included), for peers the tests speak raw bytes as."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = QRFARM_SCP_AE
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.10.1234"
    primitive.user_information = [maximum, implementation]
    primitive.presentation_context_definition_list = contexts
    request = A_ASSOCIATE_RQ()
    request.from_primitive(primitive)
    return bytes(request.encode())
