"""The C-STORE sub-operations of a C-GET: each handed to the caller's sink on
the association's own thread, its status answered, what came kept."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from .responses import Status, StoredInstance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreRequest:
    """A C-STORE sub-operation of a C-GET, handed to the caller's sink."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    event: Event

    def dataset_bytes(self) -> bytes:
        """The data set exactly as the peer encoded it (no file meta)."""
        return self.event.encoded_dataset(include_meta=False)

    def part10_bytes(self) -> bytes:
        """A DICOM Part-10 file: file meta built from the request, then the data set as sent."""
        return self.event.encoded_dataset(include_meta=True)

    def dataset(self) -> Dataset:
        """The decoded data set (parses it: use to check that it is whole)."""
        return self.event.dataset


# A sink stores one C-GET instance and returns the C-STORE status to answer.
InstanceSink = Callable[[StoreRequest], int]


class SubStores:
    """The sink of the C-GET running on an association, if one is, and the
    instances it was handed."""

    def __init__(self) -> None:
        self.sink: InstanceSink | None = None
        self.stored: list[StoredInstance] = []

    def on_c_store(self, event: Event) -> int:
        """A C-GET sub-operation: hand it to the running get's sink, answer its status."""
        request = event.request
        assert isinstance(request, C_STORE)
        store = StoreRequest(
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_instance_uid=str(request.AffectedSOPInstanceUID),
            transfer_syntax=str(event.context.transfer_syntax),
            event=event,
        )
        sink = self.sink
        if sink is None:
            log.warning("C-STORE of %s outside a C-GET refused", store.sop_instance_uid)
            status = Status.UNABLE_TO_PROCESS
        else:
            try:
                status = sink(store)
            except Exception:
                log.exception("storing %s failed", store.sop_instance_uid)
                status = Status.OUT_OF_RESOURCES
        self.stored.append(
            StoredInstance(
                store.sop_class_uid, store.sop_instance_uid, store.transfer_syntax, status
            )
        )
        return status
