"""pynetdicom's reactor no longer takes a fast peer's answer from under an operation.

Reproduced against DCMTK storescp (Nagle off: it answers within a fraction
of a millisecond) with two threads keeping the interpreter busy: without
the fix, a store within the first 300 lost its answer to the reactor
("Received unexpected C-STORE service message") and the association was
aborted at the DIMSE timeout, in every run.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.events import Event

from qrfarm.dicom.reactor import close_reactor_race
from qrfarm.dicom.sockets import tune
from tests.peers.dcmtk import StoreScp

STORES = 300


@pytest.fixture
def busy_interpreter() -> Iterator[None]:
    """Two threads that want the GIL all the time, switched often: the reactor
    thread then wakes late, as on a loaded machine."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    threads = [threading.Thread(target=spin, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        sys.setswitchinterval(interval)


def _opened(event: Event) -> None:
    tune(event.assoc.dul.socket)
    close_reactor_race(event.assoc)


def test_every_store_gets_its_answer_from_a_fast_peer(
    storescp: StoreScp, busy_interpreter: None
) -> None:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.PatientID = "REACTOR"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ae = AE(ae_title="REACTOR")
    ae.dimse_timeout = 5
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(
        storescp.host,
        storescp.port,
        ae_title=storescp.ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, _opened)],
    )
    assert assoc.is_established
    answered = 0
    try:
        for _ in range(STORES):
            ds.SOPInstanceUID = generate_uid()
            status = assoc.send_c_store(ds)
            if not assoc.is_established or "Status" not in status:
                break
            assert status.Status == 0x0000
            answered += 1
    finally:
        if assoc.is_established:
            assoc.release()
    assert answered == STORES, f"store {answered + 1} lost its answer"
