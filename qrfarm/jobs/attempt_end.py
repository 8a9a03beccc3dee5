"""How an attempt ends: its responses recorded, then reconciled within the grace
period, retried, failed, or given back to its node's queue.

Errors that a later attempt may get past (unreachable, rejected-transient,
timeouts, out of resources, aborted) become a retry scheduled in the
database; permanent ones fail the job at once with the peer's own words.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

from opentelemetry import trace
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from qrfarm.dicom import OperationResult, Status, StatusCategory
from qrfarm.errors import QrfarmError
from qrfarm.models import Attempt, DimseResponse, ExpectedInstance, Job, JobState, table, utcnow
from qrfarm.observability.metrics import ATTEMPTS, RETRIES
from qrfarm.observability.tracing import tracer

from . import learning
from .dispatch import RUN_JOB, node_queue
from .leases import Claim, fenced
from .orphans import claim_orphans
from .policy import JobPolicy
from .reconcile import all_arrived, finalize, recorded_uids
from .states import transition
from .worker_deps import RunnerDeps

log = logging.getLogger(__name__)


def _reported(counts: list[int | None]) -> int | None:
    """A count summed over the final responses; None when none of them reported it."""
    given = [c for c in counts if c is not None]
    return sum(given) if given else None


def after_retrieve(deps: RunnerDeps, taken: Claim, results: list[OperationResult]) -> None:
    """Record the responses and reported counts, then reconcile within the grace period."""
    with deps.sessions() as session, session.begin():
        job = fenced(session, taken)
        if job is None:
            return
        record_responses(session, taken, results)
        finals = [r.final for r in results]
        job.reported_completed = _reported([f.completed for f in finals])
        job.reported_failed = _reported([f.failed for f in finals])
        job.reported_warning = _reported([f.warning for f in finals])
        job.failed_uids = sorted({u for f in finals for u in f.failed_sop_instance_uids})
        job.retry_uids = []
        worst = _worst(results)
        end_attempt(session, taken, worst.final.category.value)
        # A move to another node: what arrived is checked there, not here.
        elsewhere = job.destination_node_id is not None
        sent_elsewhere = elsewhere and bool(job.reported_completed or job.reported_warning)
        if (
            worst.final.category is StatusCategory.FAILURE
            and not job.recorded_count
            and not sent_elsewhere
        ):
            # The operation itself was refused (unknown destination, bad
            # identifier, out of resources...): nothing to reconcile.
            error = f"{job.kind.value} answered {worst.final.summary()}"
            if worst.final.status in Status.OUT_OF_RESOURCES_RANGE:
                schedule_retry(job, error, deps.policy)
            else:
                transition(job, JobState.FAILED, error=error)
            return
        learning.after_final_response(session, job, results)
        recorded_at_final = job.recorded_count
        transition(job, JobState.RECONCILING)
        grace = learning.grace_s(session, job, deps.policy)
        job.reconcile_until = utcnow() + dt.timedelta(seconds=grace)
        if elsewhere and deps.verify_delivery is None:
            transition(job, JobState.FAILED, error="no verifier for a move to another node")
            return
    if elsewhere and deps.verify_delivery is not None:
        deps.verify_delivery(deps, taken)
        return
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


def record_responses(session: Session, taken: Claim, results: list[OperationResult]) -> None:
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


def end_attempt(session: Session, taken: Claim, outcome: str, error: str | None = None) -> None:
    session.execute(
        update(table(Attempt))
        .where(table(Attempt).c.id == taken.attempt_id)
        .values(ended_at=utcnow(), outcome=outcome, error=error)
    )
    ATTEMPTS.labels(outcome).inc()


# -- when an attempt does not get through ----------------------------------------------


def schedule_retry(job: Job, error: str, policy: JobPolicy) -> None:
    if job.attempt_count >= job.max_attempts:
        transition(job, JobState.FAILED, error=f"{error} (after {job.attempt_count} attempt(s))")
        return
    delay = policy.backoff(job.attempt_count)
    RETRIES.labels("transient").inc()
    transition(job, JobState.QUEUED, error=error)
    job.next_attempt_at = utcnow() + dt.timedelta(seconds=delay)
    log.info("job %d: retry in %.1f s: %s", job.id, delay, error)


def attempt_failed(deps: RunnerDeps, taken: Claim, exc: QrfarmError) -> None:
    with deps.sessions() as session, session.begin():
        job = fenced(session, taken)
        if job is None:
            return
        end_attempt(session, taken, "error", str(exc))
        if job.cancel_requested:
            transition(job, JobState.CANCELLED, error=f"cancelled ({exc})")
        elif exc.retriable:
            schedule_retry(job, str(exc), deps.policy)
        else:
            transition(job, JobState.FAILED, error=str(exc))


def requeue_busy(deps: RunnerDeps, taken: Claim, node_name: str, reason: str) -> None:
    """The node's permits are all held: give the job back to the queue.

    Sent again at once when the worker can: the workers that hold the node's
    associations take it from there, and this one is free for other nodes'
    jobs instead of waiting on one it cannot run."""
    with deps.sessions() as session, session.begin():
        job = fenced(session, taken)
        if job is None:
            return
        end_attempt(session, taken, "node busy", reason)
        priority = job.priority
        job.attempt_count -= 1  # waiting for a permit is not an attempt
        transition(job, JobState.QUEUED)
        if deps.dispatcher is None:
            job.next_attempt_at = utcnow() + dt.timedelta(seconds=1.0)
        else:
            job.dispatched_at = utcnow()
    if deps.dispatcher is not None:
        # After the commit, as for a submit; lost in between, the sweeper sends it.
        deps.dispatcher.send(RUN_JOB, [taken.job_id], node_queue(node_name), priority)


# -- a retry whose instances arrived meanwhile -------------------------------------


def retry_still_missing(deps: RunnerDeps, taken: Claim, retry_uids: list[str]) -> list[str]:
    """What a retry still has to ask for: its UIDs not held by now (arrived
    late, or orphans of the node that the job claims) and, where the job has
    an expected list, named by it (only those can be asked for by UID: their
    series is known; without a list the retry asks for the whole identifier)."""
    with deps.sessions() as session, session.begin():
        job = fenced(session, taken)
        if job is None:
            return []
        if job.expected_count is None:
            askable = set(retry_uids)
        else:
            askable = set(
                session.scalars(
                    select(ExpectedInstance.sop_instance_uid).where(
                        ExpectedInstance.job_id == job.id,
                        ExpectedInstance.sop_instance_uid.in_(retry_uids),
                    )
                )
            )
        if job.destination_node_id is not None:
            # Sent to another node: what the farm holds is not what it holds.
            return [uid for uid in retry_uids if uid in askable]
        claim_orphans(session, job, deps.policy.late_window_s)
        session.flush()
        held = recorded_uids(session, job.id)
    return [uid for uid in retry_uids if uid in askable and uid not in held]


def retry_left(deps: RunnerDeps, taken: Claim, retry_uids: list[str]) -> list[str] | None:
    """A retry's UIDs narrowed to what it still has to ask for
    (:func:`retry_still_missing`); None when nothing is left, the job then
    reconciled on what is held (:func:`reconcile_held`)."""
    missing = retry_still_missing(deps, taken, retry_uids)
    if not missing:
        reconcile_held(deps, taken)
        return None
    return missing


def reconcile_held(deps: RunnerDeps, taken: Claim) -> None:
    """Nothing a retry was for is left to ask for (it arrived meanwhile, or the
    expected list does not name it): reconcile on what is held, no second move."""
    with deps.sessions() as session, session.begin():
        job = fenced(session, taken)
        if job is None:
            return
        end_attempt(session, taken, "held")
        transition(job, JobState.RECONCILING)
        job.reconcile_until = utcnow()
        recorded = job.recorded_count
    log.info(
        "job %d: nothing left that a retry can ask for (arrived meanwhile, or not "
        "in the expected list); no second move",
        taken.job_id,
    )
    reconcile_until_done(deps, taken, recorded)
