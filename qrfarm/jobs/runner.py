"""Running one attempt of a job: claim, operate, record every response, reconcile.

The worker task calls :func:`run_job` with what only a worker has: its
associations (a :class:`ConnectionSource`) and the storage a C-GET writes to.
Errors that a later attempt may get past (unreachable, rejected-transient,
timeouts, out of resources, aborted) become a retry scheduled in the database;
permanent ones fail the job at once with the peer's own words.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Protocol

from opentelemetry import trace
from pydicom.dataset import Dataset
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.dicom import (
    Connection,
    InstanceSink,
    Level,
    Node,
    OperationResult,
    Root,
    Status,
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
    DimseResponse,
    ExpectedInstance,
    FindResult,
    Job,
    JobKind,
    JobState,
    table,
    utcnow,
)
from qrfarm.observability.logs import job_context
from qrfarm.observability.metrics import ASSOCIATIONS, ATTEMPTS, RETRIES
from qrfarm.observability.tracing import context_of, tracer

from . import learning
from .dispatch import RUN_JOB, Dispatcher, node_queue
from .expected import ExpectedAlongside, SpareConnections, find_and_store, store_expected
from .leases import Claim, claim, fenced
from .moves import allocate_message_id, release_message_id
from .nodes import node_of
from .orphans import claim_orphans
from .policy import JobPolicy
from .reconcile import all_arrived, finalize, recorded_uids
from .states import transition
from .watch import JobWatch

log = logging.getLogger(__name__)


class GetRecorder(Protocol):
    """Stores and records the instances a C-GET brings in (the worker's storage)."""

    def sink_for(self, job_id: int, calling_ae: str) -> InstanceSink: ...


class ConnectionSource(SpareConnections, Protocol):
    """Associations as a worker holds them (pooled, under the node's permit)."""

    def query_retrieve(self, node: Node) -> AbstractContextManager[Connection]:
        """A held association with the Q/R contexts (FIND, MOVE) of both roots."""
        ...

    def get(self, node: Node, sop_classes: list[str]) -> AbstractContextManager[Connection]:
        """An association for one C-GET, with storage contexts for ``sop_classes``."""
        ...


@dataclass
class RunnerDeps:
    sessions: sessionmaker[Session]
    connections: ConnectionSource
    get_recorder: GetRecorder
    calling_ae: str
    policy: JobPolicy
    # Sends a job's message again, to the back of its node's queue, where a
    # worker holding the node's association takes it. Without one, a job
    # that waited in vain for a permit is sent by the scheduler a little later.
    dispatcher: Dispatcher | None = None


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
        snapshot = _snapshot(session, job, deps.policy)
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
            else:
                _run_get(deps, taken, snapshot, watch)
    except NodeBusy as exc:
        _requeue_busy(deps, taken, snapshot.node_name, str(exc))
    except QrfarmError as exc:
        if isinstance(exc, AssociationAborted):
            ASSOCIATIONS.labels(str(snapshot.node), "aborted").inc()
        if isinstance(exc, PresentationContextError) and snapshot.kind is JobKind.GET:
            with deps.sessions() as session, session.begin():
                learning.get_refused(session, snapshot.node_id)
        _attempt_failed(deps, taken, exc)
    except LookupError as exc:  # a find before the retrieve failed
        _attempt_failed(deps, taken, QrfarmError(str(exc)))


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
        _record_responses(session, taken, [result])
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
        _end_attempt(session, taken, result.final.category.value)
        final = result.final
        if final.category is StatusCategory.SUCCESS:
            transition(job, JobState.COMPLETED)
        elif final.category is StatusCategory.CANCEL or job.cancel_requested:
            transition(job, JobState.CANCELLED, error="cancelled")
        else:
            transition(job, JobState.FAILED, error=f"C-FIND answered {final.summary()}")


def _run_move(deps: RunnerDeps, taken: Claim, snap: _Snapshot, watch: JobWatch) -> None:
    if snap.retry_uids:
        missing = _retry_still_missing(deps, taken, snap)
        if not missing:
            _reconcile_held(deps, taken)
            return
        snap = replace(snap, retry_uids=missing)
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
        try:
            results = _move(deps, taken, snap, watch, conn)
        finally:
            # Whatever became of the move, its finder ends (and frees its
            # association) before the attempt does.
            settled = alongside is None or alongside.settled()
        if not settled:
            _find_after_move(deps, taken, snap, conn)
    _after_retrieve(deps, taken, results)


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


def _retry_still_missing(deps: RunnerDeps, taken: Claim, snap: _Snapshot) -> list[str]:
    """What a retry still has to ask for: its UIDs not held by now (arrived late,
    or orphans of the node that the job claims)."""
    with deps.sessions() as session, session.begin():
        job = fenced(session, taken)
        if job is None:
            return []
        claim_orphans(session, job, deps.policy.late_window_s)
        session.flush()
        held = recorded_uids(session, job.id)
    return [uid for uid in snap.retry_uids if uid not in held]


def _reconcile_held(deps: RunnerDeps, taken: Claim) -> None:
    """All a retry was for arrived meanwhile: reconcile on what is held, no second move."""
    with deps.sessions() as session, session.begin():
        job = fenced(session, taken)
        if job is None:
            return
        _end_attempt(session, taken, "held")
        transition(job, JobState.RECONCILING)
        job.reconcile_until = utcnow()
        recorded = job.recorded_count
    log.info("job %d: the instances to retry arrived meanwhile; no second move", taken.job_id)
    reconcile_until_done(deps, taken, recorded)


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
    _after_retrieve(deps, taken, results)


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
    identifier per series with the missing SOP Instance UIDs."""
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
    return identifiers or [snap.identifier]


def _reported(counts: list[int | None]) -> int | None:
    """A count summed over the final responses; None when none of them reported it."""
    given = [c for c in counts if c is not None]
    return sum(given) if given else None


def _after_retrieve(deps: RunnerDeps, taken: Claim, results: list[OperationResult]) -> None:
    """Record the responses and reported counts, then reconcile within the grace period."""
    with deps.sessions() as session, session.begin():
        job = fenced(session, taken)
        if job is None:
            return
        _record_responses(session, taken, results)
        finals = [r.final for r in results]
        job.reported_completed = _reported([f.completed for f in finals])
        job.reported_failed = _reported([f.failed for f in finals])
        job.reported_warning = _reported([f.warning for f in finals])
        job.failed_uids = sorted({u for f in finals for u in f.failed_sop_instance_uids})
        job.retry_uids = []
        worst = _worst(results)
        _end_attempt(session, taken, worst.final.category.value)
        if worst.final.category is StatusCategory.FAILURE and not job.recorded_count:
            # The operation itself was refused (unknown destination, bad
            # identifier, out of resources...): nothing to reconcile.
            error = f"{job.kind.value} answered {worst.final.summary()}"
            if worst.final.status in Status.OUT_OF_RESOURCES_RANGE:
                _schedule_retry(job, error, deps.policy)
            else:
                transition(job, JobState.FAILED, error=error)
            return
        learning.after_final_response(session, job, results)
        recorded_at_final = job.recorded_count
        transition(job, JobState.RECONCILING)
        grace = learning.grace_s(session, job, deps.policy)
        job.reconcile_until = utcnow() + dt.timedelta(seconds=grace)
    reconcile_until_done(deps, taken, recorded_at_final)


def reconcile_until_done(deps: RunnerDeps, taken: Claim, recorded_at_final: int) -> None:
    """Wait (up to the grace period) for arrivals, then finalize the job."""
    with tracer.start_as_current_span("qrfarm.job.reconcile") as span:
        _reconcile_until_done(deps, taken, span, recorded_at_final)


def _reconcile_until_done(
    deps: RunnerDeps, taken: Claim, span: trace.Span, recorded_at_final: int
) -> None:
    while True:
        with deps.sessions() as session, session.begin():
            job = fenced(session, taken)
            if job is None or job.state is not JobState.RECONCILING:
                return
            deadline = job.reconcile_until or utcnow()
            if all_arrived(session, job) or utcnow() >= deadline or job.cancel_requested:
                learning.after_reconcile(session, job, recorded_at_final)
                finalize(session, job, deps.policy)
                log.info("job %d: %s (%d recorded)", job.id, job.state.value, job.recorded_count)
                span.set_attribute("qrfarm.job.state", job.state.value)
                span.set_attribute("qrfarm.job.recorded", job.recorded_count)
                return
        time.sleep(0.2)


def _worst(results: list[OperationResult]) -> OperationResult:
    order = {
        StatusCategory.SUCCESS: 0,
        StatusCategory.WARNING: 1,
        StatusCategory.CANCEL: 2,
        StatusCategory.FAILURE: 3,
        StatusCategory.PENDING: 4,
    }
    return max(results, key=lambda r: order[r.final.category])


def _record_responses(session: Session, taken: Claim, results: list[OperationResult]) -> None:
    """Every response of the attempt, in order: one multi-row INSERT, no ORM objects."""
    received_at = utcnow()
    rows = [
        {
            "attempt_id": taken.attempt_id,
            "sequence": sequence,
            "status": response.status,
            "category": response.category.value,
            "remaining": response.remaining,
            "completed": response.completed,
            "failed": response.failed,
            "warning": response.warning,
            "error_comment": response.error_comment,
            "offending_elements": [f"{t:08X}" for t in response.offending_elements],
            "failed_sop_instance_uids": list(response.failed_sop_instance_uids),
            "received_at": received_at,
        }
        for sequence, response in enumerate(r for result in results for r in result.responses)
    ]
    if rows:
        session.execute(insert(table(DimseResponse)), rows)


def _end_attempt(session: Session, taken: Claim, outcome: str, error: str | None = None) -> None:
    session.execute(
        update(table(Attempt))
        .where(table(Attempt).c.id == taken.attempt_id)
        .values(ended_at=utcnow(), outcome=outcome, error=error)
    )
    ATTEMPTS.labels(outcome).inc()


# -- when an attempt does not get through ----------------------------------------------


def _schedule_retry(job: Job, error: str, policy: JobPolicy) -> None:
    if job.attempt_count >= job.max_attempts:
        transition(job, JobState.FAILED, error=f"{error} (after {job.attempt_count} attempt(s))")
        return
    delay = policy.backoff(job.attempt_count)
    RETRIES.labels("transient").inc()
    transition(job, JobState.QUEUED, error=error)
    job.next_attempt_at = utcnow() + dt.timedelta(seconds=delay)
    log.info("job %d: retry in %.1f s: %s", job.id, delay, error)


def _attempt_failed(deps: RunnerDeps, taken: Claim, exc: QrfarmError) -> None:
    with deps.sessions() as session, session.begin():
        job = fenced(session, taken)
        if job is None:
            return
        _end_attempt(session, taken, "error", str(exc))
        if job.cancel_requested:
            transition(job, JobState.CANCELLED, error=f"cancelled ({exc})")
        elif exc.retriable:
            _schedule_retry(job, str(exc), deps.policy)
        else:
            transition(job, JobState.FAILED, error=str(exc))


def _requeue_busy(deps: RunnerDeps, taken: Claim, node_name: str, reason: str) -> None:
    """The node's permits are all held: give the job back to the queue.

    Sent again at once when the worker can: the workers that hold the node's
    associations take it from there, and this one is free for other nodes'
    jobs instead of waiting on one it cannot run."""
    with deps.sessions() as session, session.begin():
        job = fenced(session, taken)
        if job is None:
            return
        _end_attempt(session, taken, "node busy", reason)
        job.attempt_count -= 1  # waiting for a permit is not an attempt
        transition(job, JobState.QUEUED)
        if deps.dispatcher is None:
            job.next_attempt_at = utcnow() + dt.timedelta(seconds=1.0)
        else:
            job.dispatched_at = utcnow()
    if deps.dispatcher is not None:
        # After the commit, as for a submit; lost in between, the sweeper sends it.
        deps.dispatcher.send(RUN_JOB, [taken.job_id], node_queue(node_name))
