"""Test senders: a pynetdicom SCU that can put any bytes on the wire as a C-STORE."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode


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


def encoded(ds: Dataset) -> bytes:
    raw = encode(ds, False, True)
    assert raw is not None
    return raw


def send_raw(
    assoc: Association, sop_class: str, sop_uid: str, raw: bytes, message_id: int = 1
) -> int:
    """Send ``raw`` as the data set of a C-STORE, whatever it holds; return the status."""
    context = next(c for c in assoc.accepted_contexts if c.abstract_syntax == sop_class)
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = sop_uid
    request.Priority = 0
    request.DataSet = BytesIO(raw)
    assert context.context_id is not None
    # As send_c_store does: pause the association's reactor, or it takes the
    # response off the queue itself ("unexpected C-STORE service message").
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(request, context.context_id)
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assert isinstance(response, C_STORE) and response.Status is not None
    return int(response.Status)


def read(path: object) -> Dataset:
    return dcmread(path)  # type: ignore[arg-type]
