"""Running a job on a DICOMweb node: QIDO-RS for a find, WADO-RS for a retrieve.

A node whose ``retrieve_transport`` is "dicomweb" has its jobs run here by
the same runner, in the same worker, under the same claim, lease, watch and
retry rules as a DIMSE job (:mod:`qrfarm.jobs.runner` hands them over):

- a find job asks QIDO-RS the job's own C-FIND identifier and stores the
  answers as a C-FIND job does (:mod:`qrfarm.dicomweb.qido` makes them the
  same answers);
- a get, or a move to the farm's own storage SCP, finds its expected
  instances with an IMAGE-level QIDO-RS search, then retrieves them with
  WADO-RS into the farm: each instance is written to disk as it arrives,
  checked whole, stored, and recorded through the one recording function
  (:func:`qrfarm.jobs.ingest.record_stored`), then reconciled as a C-GET is:
  expected against recorded, the parts the service sent that could not be
  used counted failed. A retry asks for exactly the missing instances.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass

from pydicom.dataset import Dataset
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from qrfarm.dicom import Level, Response, Root, StatusCategory
from qrfarm.dicom.planning import ImageRef
from qrfarm.dicomweb import WebClient, WebService, open_client, qido, url_host, wado
from qrfarm.errors import (
    DatasetTruncated,
    DicomWebResponseError,
    InvalidNode,
    LeaseLost,
    NodeBusy,
    OperationCancelled,
    PermitLost,
    QrfarmError,
    StorageError,
)
from qrfarm.models import (
    ExpectedInstance,
    FindResult,
    Job,
    JobKind,
    JobState,
    NodeRecord,
    table,
    utcnow,
)
from qrfarm.models.instances import MatchedBy
from qrfarm.observability.logs import job_context
from qrfarm.observability.tracing import context_of, tracer

from .attempt_end import (
    attempt_failed,
    end_attempt,
    reconcile_until_done,
    requeue_busy,
    retry_left,
)
from .expected import store_expected
from .ingest import record_stored
from .leases import Claim, fenced
from .nodes import web_service_of
from .recording import Correlation, InstanceFacts, Match
from .states import transition
from .watch import JobWatch
from .web_deps import WebDeps
from .worker_deps import RunnerDeps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WebSnapshot:
    kind: JobKind
    root: Root
    level: Level
    identifier: Dataset
    service: WebService
    retry_uids: list[str]
    trace_parent: str | None
    node_name: str
    node_id: int
    # At most this many of its DICOMweb jobs at once (its max_associations).
    limit: int
    destination: str | None
    # Recorded as each instance's calling AE title (the node's AE title).
    source_ae: str


def web_snapshot(session: Session, job: Job) -> WebSnapshot | None:
    """The job as the DICOMweb runner runs it, or None when its node's jobs
    run on DIMSE."""
    row = session.get_one(NodeRecord, job.node_id)
    if row.retrieve_transport != "dicomweb":
        return None
    service = web_service_of(row)
    if service is None:  # refused when registered: cannot be, short of a hand-edited row
        log.error("node %s: DICOMweb is its transport but it has no URL", row.name)
        return None
    return WebSnapshot(
        kind=job.kind,
        root=Root(job.root),
        level=Level(job.level),
        identifier=Dataset.from_json(job.identifier),
        service=service,
        retry_uids=list(job.retry_uids or []),
        trace_parent=job.trace_parent,
        node_name=row.name,
        node_id=row.id,
        limit=row.max_associations,
        destination=job.destination,
        source_ae=(row.ae_title or row.name)[:16],
    )


def run_web_job(deps: RunnerDeps, taken: Claim, snap: WebSnapshot, task_id: str | None) -> None:
    with (
        job_context(taken.job_id, snap.node_name, task_id),
        tracer.start_as_current_span(
            "qrfarm.job.run",
            context=context_of(snap.trace_parent),
            attributes={
                "qrfarm.job.id": taken.job_id,
                "qrfarm.job.kind": snap.kind.value,
                "qrfarm.job.attempt": taken.attempt_number,
                "qrfarm.node": snap.node_name,
                "qrfarm.transport": "dicomweb",
            },
        ),
    ):
        log.info(
            "job %d attempt %d: %s on %s over DICOMweb",
            taken.job_id,
            taken.attempt_number,
            snap.kind.value,
            snap.node_name,
        )
        try:
            web_deps = deps.web
            if web_deps is None:
                raise InvalidNode("this worker has no DICOMweb transport")
            # Checked again here, against this worker's allow-list: a URL
            # registered under another allow-list, or a name that now
            # resolves elsewhere, is refused before any connection.
            if web_deps.check_target is not None:
                web_deps.check_target(url_host(snap.service.base_url))
            if snap.kind is JobKind.MOVE and snap.destination not in (None, web_deps.farm_ae):
                raise InvalidNode(
                    f"node {snap.node_name!r} is reached by DICOMweb: a move on it retrieves"
                    f" into the farm ({web_deps.farm_ae}) only, not to {snap.destination};"
                    " forward the job afterwards"
                )
            slot = (
                web_deps.slots.hold(snap.node_id, snap.limit)
                if web_deps.slots is not None
                else nullcontext(threading.Event())
            )
            with (
                slot as slot_lost,
                JobWatch(deps.sessions, taken, deps.policy) as watch,
                open_client(snap.service, web_deps.timeouts) as web,
            ):
                if snap.kind is JobKind.FIND:
                    _find(deps, taken, snap, web)
                else:
                    _retrieve(deps, web_deps, taken, snap, web, _Stop(watch, slot_lost))
        except NodeBusy as exc:
            requeue_busy(deps, taken, snap.node_name, str(exc))
        except QrfarmError as exc:
            attempt_failed(deps, taken, exc)


def _find(deps: RunnerDeps, taken: Claim, snap: WebSnapshot, web: WebClient) -> None:
    with tracer.start_as_current_span("dicomweb.qido-rs"):
        answers = qido.search(web, snap.identifier, snap.root)
    with deps.sessions() as session, session.begin():
        job = fenced(session, taken)
        if job is None:
            return
        if taken.attempt_number > 1:
            session.execute(delete(FindResult).where(FindResult.job_id == job.id))
        if answers:
            session.execute(
                insert(table(FindResult)),
                [
                    {"job_id": job.id, "sequence": n, "dataset": answer.to_json_dict()}
                    for n, answer in enumerate(answers)
                ],
            )
        end_attempt(session, taken, StatusCategory.SUCCESS.value)
        if job.cancel_requested:
            transition(job, JobState.CANCELLED, error="cancelled")
        else:
            transition(job, JobState.COMPLETED)
    log.info("job %d: QIDO-RS answered %d match(es)", taken.job_id, len(answers))


# -- WADO-RS ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Stop:
    """Why a retrieve stops between two reads: its lease or its node's slot
    lost, or its job cancelled (a study comes as one answer, which may take
    minutes)."""

    watch: JobWatch
    slot_lost: threading.Event

    def check(self) -> None:
        if self.watch.cancelled.is_set():
            raise OperationCancelled("the job was cancelled; its retrieve was stopped")
        if self.watch.lost.is_set():
            raise LeaseLost("the job's lease was lost; its retrieve was stopped")
        if self.slot_lost.is_set():
            raise PermitLost("the node's DICOMweb slot was lost; the retrieve was stopped")


@dataclass
class _Tally:
    stored: set[str]
    failed_uids: set[str]
    failed: int = 0


def _retrieve(
    deps: RunnerDeps,
    web_deps: WebDeps,
    taken: Claim,
    snap: WebSnapshot,
    web: WebClient,
    stop: _Stop,
) -> None:
    if snap.retry_uids:
        missing = retry_left(deps, taken, snap.retry_uids)
        if missing is None:
            return
        resources = _retry_resources(deps, taken, missing)
        expected = len(missing)
    else:
        with tracer.start_as_current_span("dicomweb.qido-rs"):
            refs = qido.instances_of(web, snap.identifier, snap.root)
        store_expected(deps.sessions, taken, refs)
        resources = _resources(snap.level, refs)
        expected = len(refs)

    tally = _Tally(set(), set())
    recorder = _Recorder(deps, web_deps, taken.job_id, snap.source_ae)
    try:
        for resource in resources:
            if _cancel_requested(deps, taken):
                break
            with tracer.start_as_current_span("dicomweb.wado-rs"):
                for part in wado.retrieve(
                    web,
                    resource,
                    web_deps.storage.incoming(),
                    max_part_bytes=web_deps.max_instance_bytes,
                    deadline=time.monotonic() + web_deps.resource_deadline_s,
                    should_stop=stop.check,
                ):
                    recorder.record(part, resource, tally)
                    stop.watch.on_response(_progress(expected, tally))
    except OperationCancelled as exc:
        log.info("job %d: %s", taken.job_id, exc)
    # Cancelled or not, what was recorded is reconciled: a cancelled job ends
    # cancelled, naming how many instances arrived.
    _after_retrieve(deps, taken, tally)


def _progress(expected: int, tally: _Tally) -> Response:
    """The watch writes progress from pending responses: one made of the tally."""
    done = len(tally.stored)
    return Response(
        status=0xFF00,
        category=StatusCategory.PENDING,
        description="WADO-RS",
        remaining=max(expected - done - tally.failed, 0),
        completed=done,
        failed=tally.failed,
        warning=0,
    )


def _resources(level: Level, refs: list[ImageRef]) -> list[wado.Resource]:
    """One request per study (a STUDY or PATIENT retrieve), per series, or per
    instance (an IMAGE retrieve), for what QIDO-RS found."""
    if level in (Level.STUDY, Level.PATIENT):
        return [wado.Resource(s) for s in sorted({r.study_instance_uid for r in refs})]
    if level is Level.SERIES:
        pairs = sorted({(r.study_instance_uid, r.series_instance_uid) for r in refs})
        return [wado.Resource(study, series) for study, series in pairs]
    return [
        wado.Resource(r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid)
        for r in sorted(refs, key=lambda r: r.sop_instance_uid)
    ]


def _retry_resources(deps: RunnerDeps, taken: Claim, missing: list[str]) -> list[wado.Resource]:
    with deps.sessions() as session:
        rows = session.scalars(
            select(ExpectedInstance).where(
                ExpectedInstance.job_id == taken.job_id,
                ExpectedInstance.sop_instance_uid.in_(missing),
            )
        ).all()
    return [
        wado.Resource(
            row.study_instance_uid or "", row.series_instance_uid or "", row.sop_instance_uid
        )
        for row in sorted(rows, key=lambda r: r.sop_instance_uid)
    ]


def _cancel_requested(deps: RunnerDeps, taken: Claim) -> bool:
    with deps.sessions() as session:
        return bool(session.scalar(select(Job.cancel_requested).where(Job.id == taken.job_id)))


class _Recorder:
    """Each retrieved part: checked, stored and recorded for the job, or counted failed."""

    def __init__(self, deps: RunnerDeps, web_deps: WebDeps, job_id: int, source_ae: str) -> None:
        self.sessions = deps.sessions
        self.engine = deps.sessions.kw["bind"]
        self.storage = web_deps.storage
        self.job_id = job_id
        self.source_ae = source_ae

    def record(self, part: wado.Part, resource: wado.Resource, tally: _Tally) -> None:
        try:
            header = wado.read_part(part.path)
        except (DicomWebResponseError, DatasetTruncated) as exc:
            log.warning("job %d: a WADO-RS part was not kept: %s", self.job_id, exc)
            part.path.unlink(missing_ok=True)
            tally.failed += 1
            return
        uid = header.sop_instance_uid
        if not resource.holds(header.study_instance_uid, header.series_instance_uid, uid):
            # Not what was asked for: an instance counts only inside its request.
            log.warning("job %d: WADO-RS sent %s, outside %s; not kept", self.job_id, uid, resource)
            part.path.unlink(missing_ok=True)
            tally.failed += 1
            tally.failed_uids.add(uid)
            return
        # StorageFull or StorageError stop the retrieve: what is stored so far
        # stays recorded, and the attempt ends as retriable.
        stored = self.storage.store_file(
            header.study_instance_uid, header.series_instance_uid, uid, part.path
        )
        facts = InstanceFacts(
            sop_class_uid=header.sop_class_uid,
            sop_instance_uid=uid,
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
            patient_id=header.patient_id,
            transfer_syntax=header.transfer_syntax,
            calling_ae=self.source_ae,
            called_ae=None,
            peer_host=None,
            originator_ae=None,
            originator_message_id=None,
            size=stored.size,
        )
        try:
            record_stored(
                self.engine,
                self.sessions,
                self.storage,
                facts,
                stored,
                lambda _: Correlation([Match(self.job_id, MatchedBy.WADO)]),
            )
        except SQLAlchemyError as exc:
            raise StorageError(
                f"WADO-RS instance {uid} not recorded: {type(exc).__name__}"
            ) from exc
        tally.stored.add(uid)


def _after_retrieve(deps: RunnerDeps, taken: Claim, tally: _Tally) -> None:
    """Counts as the service's answer gave them, then reconciled at once: every
    instance was recorded before this point, none can arrive later."""
    with deps.sessions() as session, session.begin():
        job = fenced(session, taken)
        if job is None:
            return
        job.reported_completed = len(tally.stored)
        job.reported_failed = tally.failed
        job.reported_warning = 0
        job.failed_uids = sorted(tally.failed_uids - tally.stored)
        job.retry_uids = []
        outcome = StatusCategory.WARNING if tally.failed else StatusCategory.SUCCESS
        end_attempt(session, taken, outcome.value)
        transition(job, JobState.RECONCILING)
        job.reconcile_until = utcnow()
        recorded = job.recorded_count
    reconcile_until_done(deps, taken, recorded)
