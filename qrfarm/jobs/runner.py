"""Running one attempt of a job: claim, operate (C-FIND, C-MOVE, C-GET), then
hand over to :mod:`qrfarm.jobs.attempt_end` to record and reconcile.

The worker task calls :func:`run_job` with what only a worker has
(:class:`qrfarm.jobs.worker_deps.RunnerDeps`): its associations and the
storage a C-GET writes to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace

from opentelemetry import trace
from pydicom.dataset import Dataset
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from qrfarm.dicom import (
    Connection,
    Level,
    Node,
    OperationResult,
    Root,
    StatusCategory,
    build_retrieve_identifier,
)
from qrfarm.dicom.planning import expected_instances
from qrfarm.dicom.responses import Response
from qrfarm.errors import (
    AssociationAborted,
    NodeBusy,
    PresentationContextError,
    QrfarmError,
)
from qrfarm.models import (
    Attempt,
    ExpectedInstance,
    FindResult,
    Job,
    JobKind,
    JobState,
    table,
)
from qrfarm.observability.logs import job_context
from qrfarm.observability.metrics import ASSOCIATIONS
from qrfarm.observability.tracing import context_of, tracer

from . import learning
from .attempt_end import (
    after_retrieve,
    attempt_failed,
    end_attempt,
    record_responses,
    requeue_busy,
    retry_left,
)
from .expected import ExpectedAlongside, find_and_store, store_expected
from .leases import Claim, claim, fenced
from .moves import allocate_message_id, release_message_id
from .nodes import node_of
from .policy import JobPolicy
from .states import transition
from .watch import JobWatch
from .web_runner import run_web_job, web_snapshot
from .worker_deps import ConnectionSource, GetRecorder, RunnerDeps

# Imported from here by the worker and the tests.
__all__ = ["ConnectionSource", "GetRecorder", "RunnerDeps", "run_job"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Snapshot:
    kind: JobKind
    root: Root
    level: Level
    identifier: Dataset
    node: Node
    destination: str | None
    retry_uids: list[str]
    expected_known: bool
    trace_parent: str | None
    node_id: int
    node_name: str


def run_job(deps: RunnerDeps, job_id: int, owner: str, task_id: str | None = None) -> None:
    """Run the next attempt of ``job_id`` if it is ours to run; safe to call twice."""
    with deps.sessions() as session, session.begin():
        claimed = claim(session, job_id, owner, deps.policy, task_id)
        if claimed is None:
            log.info("job %d: not ours to run now", job_id)
            return
        taken, job = claimed
        learning.choose_retrieve(session, job)
        # A node reached by DICOMweb: QIDO-RS and WADO-RS (qrfarm.jobs.web_runner).
        web = web_snapshot(session, job)
        if web is None:
            snapshot = _snapshot(session, job, deps.policy)
    if web is not None:
        run_web_job(deps, taken, web, task_id)
        return
    with (
        job_context(job_id, str(snapshot.node), task_id),
        tracer.start_as_current_span(
            "qrfarm.job.run",
            context=context_of(snapshot.trace_parent),
            attributes={
                "qrfarm.job.id": job_id,
                "qrfarm.job.kind": snapshot.kind.value,
                "qrfarm.job.attempt": taken.attempt_number,
                "qrfarm.node": str(snapshot.node),
            },
        ),
    ):
        log.info(
            "job %d attempt %d: %s on %s",
            job_id,
            taken.attempt_number,
            snapshot.kind.value,
            snapshot.node,
        )
        _run_attempt(deps, taken, snapshot)


def _run_attempt(deps: RunnerDeps, taken: Claim, snapshot: _Snapshot) -> None:
    try:
        with JobWatch(deps.sessions, taken, deps.policy) as watch:
            if snapshot.kind is JobKind.FIND:
                _run_find(deps, taken, snapshot, watch)
            elif snapshot.kind is JobKind.MOVE:
                _run_move(deps, taken, snapshot, watch)
            elif snapshot.kind is not JobKind.GET:
                kind_runner = deps.kind_runners.get(snapshot.kind)
                if kind_runner is None:
                    raise QrfarmError(f"this worker cannot run {snapshot.kind.value} jobs")
                kind_runner(deps, taken, snapshot.node, watch)
            else:
                _run_get(deps, taken, snapshot, watch)
    except NodeBusy as exc:
        requeue_busy(deps, taken, snapshot.node_name, str(exc))
    except QrfarmError as exc:
        if isinstance(exc, AssociationAborted):
            ASSOCIATIONS.labels(str(snapshot.node), "aborted").inc()
        if isinstance(exc, PresentationContextError) and snapshot.kind is JobKind.GET:
            with deps.sessions() as session, session.begin():
                learning.get_refused(session, snapshot.node_id)
        attempt_failed(deps, taken, exc)
    except LookupError as exc:  # a find before the retrieve failed
        attempt_failed(deps, taken, QrfarmError(str(exc)))


def _snapshot(session: Session, job: Job, policy: JobPolicy) -> _Snapshot:
    row, limit = learning.node_and_limit(session, job.node_id, policy.limit_probe_after_s)
    return _Snapshot(
        kind=job.kind,
        root=Root(job.root),
        level=Level(job.level),
        identifier=Dataset.from_json(job.identifier),
        node=node_of(row, limit),
        destination=job.destination,
        retry_uids=list(job.retry_uids or []),
        expected_known=job.expected_count is not None,
        trace_parent=job.trace_parent,
        node_id=job.node_id,
        node_name=row.name,
    )


# -- the three operations --------------------------------------------------------


def _run_find(deps: RunnerDeps, taken: Claim, snap: _Snapshot, watch: JobWatch) -> None:
    with deps.connections.query_retrieve(snap.node) as conn:
        watch.connection = conn
        with tracer.start_as_current_span("dicom.c-find"):
            result = conn.find(snap.identifier, snap.root, on_response=_traced(watch.on_response))
    with deps.sessions() as session, session.begin():
        job = fenced(session, taken)
        if job is None:
            return
        record_responses(session, taken, [result])
        if taken.attempt_number > 1:  # answers of an earlier attempt, if one got that far
            session.execute(delete(FindResult).where(FindResult.job_id == job.id))
        if result.matches:
            session.execute(
                insert(table(FindResult)),
                [
                    {"job_id": job.id, "sequence": n, "dataset": match.to_json_dict()}
                    for n, match in enumerate(result.matches)
                ],
            )
        end_attempt(session, taken, result.final.category.value)
        final = result.final
        if final.category is StatusCategory.SUCCESS:
            transition(job, JobState.COMPLETED)
        elif final.category is StatusCategory.CANCEL or job.cancel_requested:
            transition(job, JobState.CANCELLED, error="cancelled")
        else:
            transition(job, JobState.FAILED, error=f"C-FIND answered {final.summary()}")


def _still_to_ask(deps: RunnerDeps, taken: Claim, snap: _Snapshot) -> _Snapshot | None:
    """A retry narrowed to what is still missing; None when nothing is left to
    ask for (the job is then reconciled on what is held, no second retrieve)."""
    if not snap.retry_uids:
        return snap
    missing = retry_left(deps, taken, snap.retry_uids)
    return None if missing is None else replace(snap, retry_uids=missing)


def _run_move(deps: RunnerDeps, taken: Claim, snap: _Snapshot, watch: JobWatch) -> None:
    narrowed = _still_to_ask(deps, taken, snap)
    if narrowed is None:
        return
    snap = narrowed
    with deps.connections.query_retrieve(snap.node) as conn:
        watch.connection = conn
        alongside = None
        if deps.policy.expect_before_move and not snap.expected_known:
            alongside = ExpectedAlongside(
                deps.sessions, deps.connections, taken, snap.node, snap.identifier, snap.root
            )
            if not alongside.begin():
                alongside = None
                find_and_store(deps.sessions, taken, conn, snap.identifier, snap.root)
        verifier = deps.verify_delivery
        confirming: AbstractContextManager[None] = (
            nullcontext() if verifier is None else verifier.alongside(deps, taken)
        )
        try:
            with confirming:
                results = _move(deps, taken, snap, watch, conn)
        finally:
            # Whatever became of the move, its finder ends (and frees its
            # association) before the attempt does.
            settled = alongside is None or alongside.settled()
        if not settled:
            _find_after_move(deps, taken, snap, conn)
    after_retrieve(deps, taken, results)


def _move(
    deps: RunnerDeps, taken: Claim, snap: _Snapshot, watch: JobWatch, conn: Connection
) -> list[OperationResult]:
    """The C-MOVE(s) of the attempt under one Message ID the storage SCP can match."""
    identifiers = _retrieve_identifiers(deps, taken, snap)
    with deps.sessions() as session, session.begin():
        attempt = session.get_one(Attempt, taken.attempt_id)
        message_id = allocate_message_id(
            session, attempt, deps.calling_ae, late_window_s=deps.policy.late_window_s
        )
        attempt.called_ae = snap.node.ae_title
    results = []
    try:
        for identifier in identifiers:
            with tracer.start_as_current_span(
                "dicom.c-move",
                attributes={
                    "dicom.move_destination": snap.destination or "",
                    "dicom.message_id": message_id,
                },
            ):
                results.append(
                    conn.move(
                        identifier,
                        snap.destination or "",
                        snap.root,
                        message_id=message_id,
                        on_response=_traced(watch.on_response),
                    )
                )
    finally:
        with deps.sessions() as session, session.begin():
            release_message_id(session, session.get_one(Attempt, taken.attempt_id))
    return results


def _find_after_move(deps: RunnerDeps, taken: Claim, snap: _Snapshot, conn: Connection) -> None:
    """The spare association failed half-way: find on this one, now the move is
    done. The move's instances are in: an error here leaves the expected list
    unknown (reconciled on reported counts) rather than losing the attempt."""
    try:
        find_and_store(deps.sessions, taken, conn, snap.identifier, snap.root)
    except QrfarmError as exc:
        log.warning("job %d: expected instances unknown, %s", taken.job_id, exc)


def _run_get(deps: RunnerDeps, taken: Claim, snap: _Snapshot, watch: JobWatch) -> None:
    with deps.connections.query_retrieve(snap.node) as conn:
        refs = expected_instances(conn, snap.identifier, snap.root)
    store_expected(deps.sessions, taken, refs)
    # Against the list just found: what it no longer names cannot be asked for.
    narrowed = _still_to_ask(deps, taken, snap)
    if narrowed is None:
        return
    snap = narrowed
    identifiers = _retrieve_identifiers(deps, taken, snap)
    classes = sorted({r.sop_class_uid for r in refs if r.sop_class_uid})
    results = []
    with deps.connections.get(snap.node, classes) as conn:
        watch.connection = conn
        sink = deps.get_recorder.sink_for(taken.job_id, snap.node.ae_title)
        for identifier in identifiers:
            with tracer.start_as_current_span("dicom.c-get"):
                results.append(
                    conn.get(
                        identifier, snap.root, store=sink, on_response=_traced(watch.on_response)
                    )
                )
    after_retrieve(deps, taken, results)


def _traced(on_response: Callable[[Response], None]) -> Callable[[Response], None]:
    """Each response also becomes an event of the operation's span."""

    def handle(response: Response) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(
                "dimse.response",
                {
                    "dicom.status": f"0x{response.status:04X}",
                    "dicom.category": response.category.value,
                    **{
                        f"dicom.{name}": value
                        for name in ("remaining", "completed", "failed", "warning")
                        if (value := getattr(response, name)) is not None
                    },
                },
            )
        on_response(response)

    return handle


# -- what C-GET and C-MOVE share ---------------------------------------------------


def _retrieve_identifiers(deps: RunnerDeps, taken: Claim, snap: _Snapshot) -> list[Dataset]:
    """The job's identifier, or for a retry of what is missing, one IMAGE-level
    identifier per series with the missing SOP Instance UIDs (the expected
    list names each: :func:`retry_still_missing` kept only those). The whole
    identifier again only for a job without an expected list: its missing
    UIDs (the source's failures) cannot be asked for by series."""
    if not snap.retry_uids:
        return [snap.identifier]
    with deps.sessions() as session:
        rows = session.scalars(
            select(ExpectedInstance).where(
                ExpectedInstance.job_id == taken.job_id,
                ExpectedInstance.sop_instance_uid.in_(snap.retry_uids),
            )
        ).all()
    by_series: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        key = (row.study_instance_uid or "", row.series_instance_uid or "")
        by_series.setdefault(key, []).append(row.sop_instance_uid)
    patient_id = snap.identifier.get("PatientID")
    identifiers = []
    for (study, series), uids in sorted(by_series.items()):
        keys: dict[str, str | list[str]] = {
            "StudyInstanceUID": study,
            "SeriesInstanceUID": series,
            "SOPInstanceUID": sorted(uids),
        }
        if snap.root is Root.PATIENT:
            keys = {"PatientID": str(patient_id), **keys}
        identifiers.append(build_retrieve_identifier(snap.root, Level.IMAGE, keys))
    return identifiers or ([] if snap.expected_known else [snap.identifier])
