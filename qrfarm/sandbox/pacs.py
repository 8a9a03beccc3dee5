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

from qrfarm.dicom import Level, Root, Status, rejection, sop_class
from qrfarm.dicom.model import VERIFICATION_SOP_CLASS, Operation
from qrfarm.dicom.reactor import close_reactor_race
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
    """What the sandbox saw: associations at once (now and at most), C-CANCELs,
    retrieve requests."""

    open_associations: int = 0
    peak_associations: int = 0
    cancels: int = 0
    moves: int = 0  # C-MOVE requests received
    gets: int = 0  # C-GET requests received
    refused: int = 0
    admitted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self, event: Event, limit: int | None) -> None:
        """Refuse an association above ``limit`` admitted and not yet ended."""
        with self.lock:
            refuse = limit is not None and self.admitted >= limit
            if refuse:
                self.refused += 1
            else:
                self.admitted += 1
                event.assoc.sandbox_admitted = True  # type: ignore[attr-defined]
        if refuse:
            rejection.reject(event, rejection.LOCAL_LIMIT_EXCEEDED)

    def opened(self, _event: Event) -> None:
        with self.lock:
            self.open_associations += 1
            self.peak_associations = max(self.peak_associations, self.open_associations)

    def closed(self, event: Event) -> None:
        with self.lock:
            self.open_associations -= 1
            if getattr(event.assoc, "sandbox_admitted", False):
                self.admitted -= 1

    def cancelled(self) -> None:
        with self.lock:
            self.cancels += 1


@dataclass
class Behaviour:
    """How the sandbox acts: delays before each C-FIND answer and each sub-operation,
    to make operations long enough to overlap or to be cancelled.

    ``store_after_answer_s``: a C-MOVE is answered at once (success, no
    sub-operations counted) and its instances are C-STOREd that long after,
    on an association of the sandbox's own without Move Originator fields:
    the PACS that answers before storing and names no originator.
    """

    find_delay_s: float = 0.0
    retrieve_delay_s: float = 0.0
    store_after_answer_s: float | None = None
    # Refuse (transiently: "local limit exceeded") associations above this many
    # admitted at once (not pynetdicom's own limit, which counts threads).
    max_associations: int | None = None
    # C-FINDs at these levels are answered "unable to process" (0xC000), as by
    # a PACS that supports no IMAGE-level queries.
    refused_find_levels: frozenset[Level] = frozenset()
    # A faulty PACS: a C-GET sends every instance of the studies asked into,
    # whatever the level and keys asked for.
    get_sends_whole_study: bool = False
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
        yield Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, None
        return
    if level in behaviour.refused_find_levels:
        yield Status.UNABLE_TO_PROCESS, None
        return
    for group in archive.select(identifier, level):
        behaviour.pause(retrieve=False)
        if event.is_cancelled:
            behaviour.stats.cancelled()
            yield Status.CANCEL, None
            return
        yield Status.PENDING, archive.answer(identifier, level, group)
    yield Status.SUCCESS, None


def _instances(event: Event, archive: Archive) -> list[ArchivedInstance] | None:
    identifier = event.identifier
    level = _level(identifier)
    if level is None:
        return None
    return [i for group in archive.select(identifier, level) for i in group]


def handle_get(event: Event, archive: Archive, behaviour: Behaviour) -> Iterator[Any]:
    with behaviour.stats.lock:
        behaviour.stats.gets += 1
    instances = _instances(event, archive)
    if instances is None:
        yield 0
        return
    if behaviour.get_sends_whole_study:
        studies = {i.key(Level.STUDY) for i in instances}
        instances = [i for i in archive.instances if i.key(Level.STUDY) in studies]
    yield len(instances)
    for instance in instances:
        behaviour.pause()
        if event.is_cancelled:
            behaviour.stats.cancelled()
            yield Status.CANCEL, None
            return
        yield Status.PENDING, dcmread(instance.path)


def handle_move(
    event: Event,
    archive: Archive,
    destinations: dict[str, tuple[str, int]],
    behaviour: Behaviour,
) -> Iterator[Any]:
    with behaviour.stats.lock:
        behaviour.stats.moves += 1
    destination = destinations.get(str(event.move_destination).strip())
    if destination is None:
        yield None, None  # pynetdicom answers 0xA801 Move Destination Unknown
        return
    instances = _instances(event, archive)
    if behaviour.store_after_answer_s is not None and instances:
        delay = behaviour.store_after_answer_s
        calling_ae = str(event.assoc.ae.ae_title)
        threading.Thread(
            target=_store_later,
            args=(instances, destination, str(event.move_destination).strip(), calling_ae, delay),
            daemon=True,
        ).start()
        yield (*destination,)
        yield 0  # answered now: nothing counted, the C-STOREs come later
        return
    # The third item is passed to the store association: TCP_NODELAY on it,
    # or Nagle holds each data set PDU until the destination's delayed ACK.
    yield (*destination, {"evt_handlers": [(evt.EVT_CONN_OPEN, _tune_socket)]})
    yield len(instances or [])
    for instance in instances or []:
        behaviour.pause()
        if event.is_cancelled:
            behaviour.stats.cancelled()
            yield Status.CANCEL, None
            return
        yield Status.PENDING, dcmread(instance.path)


def _tune_socket(event: Event) -> None:
    tune(event.assoc.dul.socket)
    # pynetdicom's Move SCP sends the sub-operations with send_c_store: a
    # destination that answers fast could lose an answer to the reactor.
    close_reactor_race(event.assoc)


def _store_later(
    instances: list[ArchivedInstance],
    destination: tuple[str, int],
    called_ae: str,
    calling_ae: str,
    delay: float,
) -> None:
    """C-STORE after the move was answered, with no Move Originator fields."""
    time.sleep(delay)
    datasets = [dcmread(i.path) for i in instances]
    ae = AE(ae_title=calling_ae)
    for sop_class_uid in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class_uid, ALL_TRANSFER_SYNTAXES[:3])
    assoc = ae.associate(
        *destination, ae_title=called_ae, evt_handlers=[(evt.EVT_CONN_OPEN, _tune_socket)]
    )
    if not assoc.is_established:
        log.warning("sandbox: the late C-STOREs found no association to %s", destination)
        return
    try:
        for ds in datasets:
            assoc.send_c_store(ds)
    finally:
        assoc.release()


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
            (evt.EVT_REQUESTED, self._admit),
            (evt.EVT_ESTABLISHED, self.behaviour.stats.opened),
            (evt.EVT_RELEASED, self.behaviour.stats.closed),
            (evt.EVT_ABORTED, self.behaviour.stats.closed),
        ]
        self._server = ae.start_server((host, port), block=False, evt_handlers=handlers)
        bound = int(self._server.socket.getsockname()[1])  # type: ignore[union-attr]
        log.info("sandbox PACS %s listening on %s:%d", self.ae_title, host, bound)
        return bound

    def _admit(self, event: Event) -> None:
        # The limit as it is now: a test may lift it while the PACS runs.
        self.behaviour.stats.admit(event, self.behaviour.max_associations)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
