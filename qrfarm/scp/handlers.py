"""pynetdicom event handlers of the storage SCP; their dependencies come in as arguments."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from threading import Event as ThreadEvent

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.dicom import Status, rejection
from qrfarm.dicom.contexts import MAX_CONTEXTS
from qrfarm.dicom.sockets import tune
from qrfarm.errors import InstanceRefused, StorageError, StorageFull, UnsafeUid
from qrfarm.jobs.recording import InstanceFacts
from qrfarm.models import Job
from qrfarm.models.session import statement_engine
from qrfarm.observability import tracing
from qrfarm.observability.metrics import (
    RECEIVED_BYTES,
    STORE_SECONDS,
    STORES,
)
from qrfarm.storage import InstanceStorage

from . import admission, spool
from .committer import GroupCommitter
from .correlate import MoveCache, correlate
from .facts import StoreRequest, data_set_offset, facts_of, too_large
from .gate import ConnectionGate
from .known_nodes import KnownNodes

log = logging.getLogger(__name__)


@dataclass
class ScpContext:
    """What the handlers need: storage, the database, the known nodes, settings."""

    storage: InstanceStorage
    sessions: sessionmaker[Session]
    known_nodes: KnownNodes
    late_window_s: float
    draining: ThreadEvent = field(default_factory=ThreadEvent)
    # The farm's own health probe: admitted for C-ECHO, refused any C-STORE.
    probe_ae_title: str | None = None
    moves: MoveCache = field(default_factory=MoveCache)
    gate: ConnectionGate = field(default_factory=lambda: ConnectionGate(32, 8))
    # Larger instances are refused; read from the PDUs, never held in memory.
    max_instance_bytes: int = 8 << 30
    max_pdu: int = 0

    def __post_init__(self) -> None:
        # Where instances are recorded: statement by statement on PostgreSQL.
        self.engine: Engine = self.sessions.kw["bind"]
        self.record_engine = statement_engine(self.engine)
        self.moves.ttl_s = min(self.moves.ttl_s, self.late_window_s / 2)
        # Rows of every association of this process, committed in groups.
        self.committer = GroupCommitter(
            self.record_engine, self.engine, self.sessions, self.storage
        )

    def close(self) -> None:
        """Commit what is waiting; close the connections made for recording
        (when they are the SCP's own)."""
        self.committer.close()
        if self.record_engine is not self.engine:
            self.record_engine.dispose()


def handle_requested(event: Event, ctx: ScpContext) -> None:
    """Admit or reject an association before negotiation (``admission.admit``)."""
    request = event.assoc.requestor.primitive
    assert request is not None
    proposed = len(request.presentation_context_definition_list)
    if proposed > MAX_CONTEXTS:
        log.warning("association refused: %d presentation contexts proposed", proposed)
        rejection.reject(event, rejection.NO_REASON_GIVEN)
        return
    reason = admission.admit(
        ctx,
        str(request.calling_ae_title),
        str(request.called_ae_title),
        str(event.assoc.acceptor.ae_title),
        event.assoc.requestor.address,
        event.assoc,
    )
    if reason is not None:
        rejection.reject(event, reason)


def handle_connection_open(event: Event, ctx: ScpContext) -> None:
    tune(event.assoc.dul.socket)
    spool.spool_to(event.assoc, ctx.storage.incoming(), ctx.max_instance_bytes, ctx.max_pdu)


def handle_connection_close(event: Event) -> None:
    """Remove the temp file of a data set cut short (an abort, a dropped
    connection): pynetdicom leaves it, and it would stay until the next start.
    Runs in the thread that decodes P-DATA, so the message is not growing."""
    message = event.assoc.dimse.message
    spooled = None if message is None else message._data_set_file
    if isinstance(spooled, spool.SpoolFile):
        spooled.discard()


def handle_store(event: Event, ctx: ScpContext) -> int | Dataset:
    """Store, correlate, record; answer success only once file and row are durable."""
    request = event.request
    assert isinstance(request, C_STORE)
    # pynetdicom wrote the data set to this file in our temp folder as it
    # arrived; it must be gone (stored or removed) when this returns.
    spooled = request._dataset_file
    return store_spooled(
        ctx,
        StoreRequest.of_event(event),
        Path(event.dataset_path),
        spooled if isinstance(spooled, spool.SpoolFile) else None,
    )


def store_spooled(
    ctx: ScpContext,
    request: StoreRequest,
    received: Path,
    spooled: spool.SpoolFile | None,
    synced: Future[OSError | None] | None = None,
) -> int | Dataset:
    """The answer to a C-STORE whose data set is in ``received`` (a Part-10 file
    in the storage root's temp folder, removed here whatever the outcome), on
    either receive path: stored, correlated and recorded before success.

    ``synced``: the file's fsync, under way in another thread (the asyncio
    path starts it as the last fragment arrives), waited for before the file
    is linked into place; without it the file is fsynced here."""
    started = time.monotonic()
    started_ns = time.time_ns()
    try:
        status, outcome = _store_received(ctx, request, received, spooled, synced, started_ns)
    finally:
        received.unlink(missing_ok=True)
    STORES.labels(outcome).inc()
    STORE_SECONDS.observe(time.monotonic() - started)
    return status


def _store_received(
    ctx: ScpContext,
    request: StoreRequest,
    received: Path,
    spooled: spool.SpoolFile | None,
    synced: Future[OSError | None] | None,
    started_ns: int,
) -> tuple[int | Dataset, str]:
    if ctx.probe_ae_title and request.calling_ae == ctx.probe_ae_title:
        return Status.REFUSED_NOT_AUTHORIZED, "refused"
    if spooled is not None and spooled.failure is not None:
        log.error("C-STORE of %s not received: %s", request.sop_instance_uid, spooled.failure)
        return Status.OUT_OF_RESOURCES, "out_of_resources"
    try:
        if spooled is not None and spooled.overflowed:
            # Only the first bytes were kept: the size is what was counted.
            with received.open("rb") as handle:
                size = spooled.written - data_set_offset(handle)
            raise InstanceRefused(Status.OUT_OF_RESOURCES, too_large(size, ctx.max_instance_bytes))
        facts = facts_of(request, received, ctx.max_instance_bytes)
    except InstanceRefused as refused:
        log.warning("C-STORE of %s refused: %s", request.sop_instance_uid, refused)
        return _answer(refused.status, refused.reason), "refused"
    failure = synced.result() if synced is not None else None
    if failure is not None:
        log.error("C-STORE of %s not received: %s", request.sop_instance_uid, failure)
        return Status.OUT_OF_RESOURCES, "out_of_resources"
    try:
        stored = ctx.storage.store_file(
            facts.study_instance_uid,
            facts.series_instance_uid,
            facts.sop_instance_uid,
            received,
            sync_folder=False,  # once for the group its row is committed with
            synced=synced is not None,
        )
    except UnsafeUid as exc:
        log.warning("C-STORE refused: %s", exc)
        return Status.CANNOT_UNDERSTAND, "refused"
    except (StorageFull, StorageError) as exc:
        log.error("C-STORE of %s not stored: %s", facts.sop_instance_uid, exc)
        return Status.OUT_OF_RESOURCES, "out_of_resources"
    nodes = ctx.known_nodes.for_calling_ae(facts.calling_ae)
    try:
        job_ids = ctx.committer.record(
            facts,
            stored,
            lambda connection: correlate(connection, facts, nodes, ctx.late_window_s, ctx.moves),
        )
    except (SQLAlchemyError, StorageError, StorageFull) as exc:
        # Without its row (or its folder made durable) the file counts for
        # nothing, and the PACS is told to try again.
        log.error("C-STORE of %s not recorded: %s", facts.sop_instance_uid, exc)
        return Status.OUT_OF_RESOURCES, "out_of_resources"
    RECEIVED_BYTES.inc(facts.size)
    if job_ids and tracing.enabled():
        _trace_store(ctx, facts, job_ids, started_ns)
    return Status.SUCCESS, ("stored" if job_ids else "orphan")


def _answer(status: int, comment: str) -> Dataset:
    """A status with its Error Comment (a LO: 64 characters at most)."""
    answer = Dataset()
    answer.Status = status
    answer.ErrorComment = comment[:64]
    return answer


def _trace_store(
    ctx: ScpContext, facts: InstanceFacts, job_ids: list[int], started_ns: int
) -> None:
    """A span in each matched job's trace (only when spans go anywhere: it costs a query)."""
    with ctx.sessions() as session:
        parents = session.execute(select(Job.id, Job.trace_parent).where(Job.id.in_(job_ids))).all()
    for job_id, parent in parents:
        span = tracing.tracer.start_span(
            "qrfarm.scp.c-store",
            context=tracing.context_of(parent),
            start_time=started_ns,
            attributes={
                "qrfarm.job.id": job_id,
                "dicom.sop_instance_uid": facts.sop_instance_uid,
                "dicom.calling_ae": facts.calling_ae,
            },
        )
        span.end()
