"""A small PACS in pure Python (pynetdicom): C-ECHO, C-FIND, C-GET, C-MOVE over files.

It needs neither root nor another service, so that qrfarm can be tried on
a fresh machine: ``qrfarm sandbox`` serves a synthetic archive with it.
Move destinations are AE titles mapped to addresses on the command line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from qrfarm.dicom import Level, Root, sop_class
from qrfarm.dicom.model import VERIFICATION_SOP_CLASS, Operation
from qrfarm.dicom.sockets import tune

from .archive import Archive, ArchivedInstance

log = logging.getLogger(__name__)

_ROOT_OF_FIND = {sop_class(r, Operation.FIND): r for r in Root}


def _level(identifier: Dataset) -> Level | None:
    try:
        return Level(str(identifier.get("QueryRetrieveLevel", "")))
    except ValueError:
        return None


@dataclass
class SandboxStats:
    """What the sandbox saw: associations at once (now and at most), C-CANCELs."""

    open_associations: int = 0
    peak_associations: int = 0
    cancels: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def opened(self, _event: Event) -> None:
        with self.lock:
            self.open_associations += 1
            self.peak_associations = max(self.peak_associations, self.open_associations)

    def closed(self, _event: Event) -> None:
        with self.lock:
            self.open_associations -= 1

    def cancelled(self) -> None:
        with self.lock:
            self.cancels += 1


@dataclass
class Behaviour:
    """How the sandbox acts: delays before each C-FIND answer and each sub-operation,
    to make operations long enough to overlap or to be cancelled."""

    find_delay_s: float = 0.0
    retrieve_delay_s: float = 0.0
    stats: SandboxStats = field(default_factory=SandboxStats)

    def pause(self, retrieve: bool = True) -> None:
        delay = self.retrieve_delay_s if retrieve else self.find_delay_s
        if delay:
            time.sleep(delay)


def handle_find(
    event: Event, archive: Archive, behaviour: Behaviour
) -> Iterator[tuple[int, Dataset | None]]:
    identifier = event.identifier
    level = _level(identifier)
    if level is None:
        yield 0xA900, None  # Identifier does not match SOP class
        return
    for group in archive.select(identifier, level):
        behaviour.pause(retrieve=False)
        if event.is_cancelled:
            behaviour.stats.cancelled()
            yield 0xFE00, None
            return
        yield 0xFF00, archive.answer(identifier, level, group)
    yield 0x0000, None


def _instances(event: Event, archive: Archive) -> list[ArchivedInstance] | None:
    identifier = event.identifier
    level = _level(identifier)
    if level is None:
        return None
    return [i for group in archive.select(identifier, level) for i in group]


def handle_get(event: Event, archive: Archive, behaviour: Behaviour) -> Iterator[Any]:
    instances = _instances(event, archive)
    if instances is None:
        yield 0
        return
    yield len(instances)
    for instance in instances:
        behaviour.pause()
        if event.is_cancelled:
            behaviour.stats.cancelled()
            yield 0xFE00, None
            return
        yield 0xFF00, dcmread(instance.path)


def handle_move(
    event: Event,
    archive: Archive,
    destinations: dict[str, tuple[str, int]],
    behaviour: Behaviour,
) -> Iterator[Any]:
    destination = destinations.get(str(event.move_destination).strip())
    if destination is None:
        yield None, None  # pynetdicom answers 0xA801 Move Destination Unknown
        return
    instances = _instances(event, archive)
    # The third item is passed to the store association: TCP_NODELAY on it,
    # or Nagle holds each data set PDU until the destination's delayed ACK.
    yield (*destination, {"evt_handlers": [(evt.EVT_CONN_OPEN, _tune_socket)]})
    yield len(instances or [])
    for instance in instances or []:
        behaviour.pause()
        if event.is_cancelled:
            behaviour.stats.cancelled()
            yield 0xFE00, None
            return
        yield 0xFF00, dcmread(instance.path)


def _tune_socket(event: Event) -> None:
    tune(event.assoc.dul.socket)


class SandboxPacs:
    """A running sandbox PACS; ``stop()`` ends it."""

    def __init__(
        self,
        files: list[Path],
        *,
        ae_title: str = "SANDBOX",
        destinations: dict[str, tuple[str, int]] | None = None,
        behaviour: Behaviour | None = None,
    ) -> None:
        self.archive = Archive(files)
        self.behaviour = behaviour or Behaviour()
        self.ae_title = ae_title
        self.destinations = dict(destinations or {})
        self._server: ThreadedAssociationServer | None = None

    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: any free port); return the port."""
        # Identifiers hold patient data: keep them out of pynetdicom's log.
        pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
        pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(VERIFICATION_SOP_CLASS)
        for root in Root:
            for operation in (Operation.FIND, Operation.GET, Operation.MOVE):
                ae.add_supported_context(sop_class(root, operation))
        # Sub-operations: storage contexts it may propose for C-MOVE, and the
        # SCP role a C-GET requestor asks for on its storage contexts.
        for context in StoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_requested_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES[:3])
            ae.add_supported_context(
                context.abstract_syntax, ALL_TRANSFER_SYNTAXES, scu_role=False, scp_role=True
            )
        handlers: list[Any] = [
            (evt.EVT_C_FIND, handle_find, [self.archive, self.behaviour]),
            (evt.EVT_C_GET, handle_get, [self.archive, self.behaviour]),
            (evt.EVT_C_MOVE, handle_move, [self.archive, self.destinations, self.behaviour]),
            (evt.EVT_ESTABLISHED, self.behaviour.stats.opened),
            (evt.EVT_RELEASED, self.behaviour.stats.closed),
            (evt.EVT_ABORTED, self.behaviour.stats.closed),
        ]
        self._server = ae.start_server((host, port), block=False, evt_handlers=handlers)
        bound = int(self._server.socket.getsockname()[1])  # type: ignore[union-attr]
        log.info("sandbox PACS %s listening on %s:%d", self.ae_title, host, bound)
        return bound

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
