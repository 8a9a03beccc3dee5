"""Where the runner learns a node's profile from a job, and where it uses it."""

from __future__ import annotations

import logging
import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from qrfarm.dicom import OperationResult
from qrfarm.models import Job, JobKind, MatchedBy, NodeProfile, NodeRecord, ReceivedInstance

from . import profiles
from .policy import JobPolicy

log = logging.getLogger(__name__)
# How much longer to wait for the C-STOREs of a node that answers before storing.
LATE_STORING_GRACE_FACTOR = 3.0


def choose_retrieve(session: Session, job: Job) -> None:
    """A job that allows either runs as a C-GET where the node supports it, else C-MOVE."""
    if not job.either_retrieve or job.kind is JobKind.FIND:
        return
    supports_get = profiles.trait(session, job.node_id, profiles.SUPPORTS_GET)
    wanted = JobKind.GET if supports_get else JobKind.MOVE
    if job.kind is not wanted:
        log.info("job %d: runs as %s (the node's profile)", job.id, wanted.value)
        job.kind = wanted
        if wanted is JobKind.MOVE and job.destination is None:
            raise ValueError(f"job {job.id} has no move destination to run as a C-MOVE")


def node_and_limit(
    session: Session, node_id: int, probe_after_s: float, now: float | None = None
) -> tuple[NodeRecord, int]:
    """The node, and its limit lowered to what it was seen to refuse above (one query).

    A refusal is counted against the farm's associations open or opening at
    that moment: racing openers make it high, never low, so the limit found
    is one the node accepts (and it comes down to the node's as it is seen).
    It rises by one after each ``probe_after_s`` without a refusal
    (profiles.refused_at): one transient refusal does not pin the node.
    """
    node, profile = session.execute(
        select(NodeRecord, NodeProfile)
        .outerjoin(NodeProfile, NodeProfile.node_id == NodeRecord.id)
        .where(NodeRecord.id == node_id)
    ).one()
    rejected_at = profiles.refused_at(profile, probe_after_s, time.time() if now is None else now)
    if rejected_at is None:
        return node, node.max_associations
    return node, min(node.max_associations, profiles.limit_below(rejected_at))


def after_final_response(session: Session, job: Job, results: list[OperationResult]) -> None:
    """The operation answered: pending responses sent? counts left out?"""
    if job.kind is JobKind.FIND or not results:
        return
    pending = any(r.is_pending for result in results for r in result.responses)
    expected = job.expected_count or 0
    if expected > 1:  # one instance may rightly come with no pending response
        profiles.observe(session, job.node_id, profiles.SENDS_PENDING, pending)
    omitted = any(result.final.completed is None for result in results)
    profiles.observe(session, job.node_id, profiles.OMITS_COUNTS, omitted)
    if job.kind is JobKind.GET:
        profiles.observe(session, job.node_id, profiles.SUPPORTS_GET, True)


def grace_s(session: Session, job: Job, policy: JobPolicy) -> float:
    if job.kind is JobKind.MOVE and profiles.trait(
        session, job.node_id, profiles.ANSWERS_BEFORE_STORING
    ):
        return policy.reconcile_grace_s * LATE_STORING_GRACE_FACTOR
    return policy.reconcile_grace_s


def after_reconcile(session: Session, job: Job, recorded_at_final: int) -> None:
    """The C-STOREs are in: did they come after the answer, did they name the originator?"""
    if job.kind is not JobKind.MOVE or job.recorded_count == 0:
        return
    profiles.observe(
        session,
        job.node_id,
        profiles.ANSWERS_BEFORE_STORING,
        job.recorded_count > recorded_at_final,
    )
    by_originator = session.scalar(
        select(func.count()).where(
            ReceivedInstance.job_id == job.id,
            ReceivedInstance.matched_by == MatchedBy.ORIGINATOR,
        )
    )
    profiles.observe(session, job.node_id, profiles.SENDS_MOVE_ORIGINATOR, bool(by_originator))


def get_refused(session: Session, node_id: int) -> None:
    """The node accepted no C-GET presentation context."""
    profiles.observe(session, node_id, profiles.SUPPORTS_GET, False)
