"""A destination PACS in pure Python (pynetdicom): it stores what it is sent
and answers C-FINDs on what it holds, and can be told to forget.

A forgetful destination answers success to a C-STORE and keeps nothing: the
destination that silently drops an instance, which only a check at the
destination (qrfarm.delivery) can catch. It supports no Storage Commitment,
so the farm verifies by C-FIND.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from qrfarm.dicom import Root, Status, sop_class
from qrfarm.dicom.model import VERIFICATION_SOP_CLASS, Operation

from .archive import Archive, ArchivedInstance
from .pacs import Behaviour, handle_find

log = logging.getLogger(__name__)


class SandboxDestination:
    """A running destination; ``forget``: how many of the first distinct
    instances it receives it drops (each only once: sent again, it keeps it)."""

    def __init__(
        self,
        directory: Path,
        *,
        ae_title: str = "SANDBOXDST",
        forget: int = 0,
        store_delay_s: float = 0.0,
    ) -> None:
        self.directory = directory
        self.ae_title = ae_title
        self.forget = forget
        self.store_delay_s = store_delay_s  # before answering each C-STORE (a slow PACS)
        self.archive = Archive([])
        # C-STOREs received per SOP Instance UID, and the UIDs it dropped.
        self.stores: Counter[str] = Counter()
        self.forgotten: list[str] = []
        self.associations = 0  # A-ASSOCIATE-RQs received, accepted or not
        # Connections open now, and the most open at once.
        self.connections = 0
        self.peak_connections = 0
        self._lock = threading.Lock()
        self._server: ThreadedAssociationServer | None = None

    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: any free port); return the port."""
        pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
        pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
        self.directory.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(VERIFICATION_SOP_CLASS)
        for root in Root:
            ae.add_supported_context(sop_class(root, Operation.FIND))
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._requested),
            (evt.EVT_CONN_OPEN, self._opened),
            (evt.EVT_CONN_CLOSE, self._closed),
            (evt.EVT_C_STORE, self._store),
            (evt.EVT_C_FIND, handle_find, [self.archive, Behaviour()]),
        ]
        self._server = ae.start_server((host, port), block=False, evt_handlers=handlers)
        bound = int(self._server.socket.getsockname()[1])  # type: ignore[union-attr]
        log.info("sandbox destination %s listening on %s:%d", self.ae_title, host, bound)
        return bound

    def _requested(self, event: Event) -> None:
        with self._lock:
            self.associations += 1

    def _opened(self, event: Event) -> None:
        with self._lock:
            self.connections += 1
            self.peak_connections = max(self.peak_connections, self.connections)

    def _closed(self, event: Event) -> None:
        with self._lock:
            self.connections -= 1

    def _store(self, event: Event) -> int:
        if self.store_delay_s:
            time.sleep(self.store_delay_s)
        ds: Dataset = event.dataset
        ds.file_meta = event.file_meta
        uid = str(ds.SOPInstanceUID)
        with self._lock:
            self.stores[uid] += 1
            if len(self.forgotten) < self.forget and uid not in self.forgotten:
                self.forgotten.append(uid)
                return Status.SUCCESS  # answered as stored; kept nowhere
        path = self.directory / f"{uid}.dcm"
        ds.save_as(path, enforce_file_format=True)
        header = Dataset({e.tag: e for e in ds if e.tag < 0x7FE00010})
        with self._lock:
            self.archive.instances = [i for i in self.archive.instances if i.path != path]
            self.archive.instances.append(ArchivedInstance(path, header))
        return Status.SUCCESS

    @property
    def held(self) -> set[str]:
        with self._lock:
            return {str(i.header.SOPInstanceUID) for i in self.archive.instances}

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
