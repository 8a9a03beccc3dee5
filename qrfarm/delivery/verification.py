"""Proof of arrival at a destination the farm cannot watch.

After a move to another node (a third-party C-MOVE) the farm asks the
destination what it holds of the instances the move was expected to bring
(the IMAGE-level find before the move):

* by Storage Commitment (:mod:`qrfarm.delivery.commitment`) where the
  destination's profile does not say it fails to;
* otherwise, or when the request is refused or its report does not come,
  by IMAGE-level C-FINDs at the destination for the expected SOP Instance
  UIDs (UID lists, per series).

Each instance confirmed is a row (:class:`qrfarm.models.DeliveredInstance`),
so that a later attempt verifies only what is not confirmed yet. Until the
reconciliation grace runs out the farm asks again for what is missing (a
PACS may answer its C-MOVE before its C-STOREs are done). The job is then
``completed`` when every expected instance is confirmed, else ``partial``
with the unconfirmed ones as its missing UIDs; a retry (automatic within the
policy, or asked for) moves exactly those from the source again.

The node profile learns, per destination, whether Storage Commitment works
(``supports_storage_commitment``) and whether it answers the C-FIND
(``answers_image_find``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from qrfarm.dicom import Node, Root
from qrfarm.dicom.commitment import InstanceRef
from qrfarm.dicom.planning import expected_instances
from qrfarm.errors import DeliveryUnverifiable, NodeBusy, QrfarmError
from qrfarm.jobs import profiles
from qrfarm.jobs.leases import Claim, fenced
from qrfarm.jobs.nodes import node_of
from qrfarm.jobs.policy import JobPolicy
from qrfarm.jobs.reconcile import expected_uids, retry_missing, unresolved_failures
from qrfarm.jobs.states import transition
from qrfarm.jobs.worker_deps import RunnerDeps
from qrfarm.models import (
    DeliveredInstance,
    ExpectedInstance,
    Job,
    JobState,
    NodeRecord,
    VerifiedBy,
    utcnow,
)
from qrfarm.models.session import insert_for
from qrfarm.observability.tracing import tracer

from .asking import Expected, committed_at, find_at_destination, observe_trait
from .commitment import CommitmentSettings

log = logging.getLogger(__name__)


@dataclass
class _Plan:
    job_id: int
    node_id: int
    node: Node
    pending: list[Expected]
    expected_known: bool
    identifier: Dataset
    root: Root
    deadline: float
    commitment: bool | None  # this job's: None until the destination was asked


@dataclass(frozen=True)
class DeliveryVerifier:
    """What the worker gives the runner (RunnerDeps.verify_delivery)."""

    commitment: CommitmentSettings
    # Between two rounds of verification while instances are still missing.
    poll_s: float = 1.0

    def alongside(self, deps: RunnerDeps, taken: Claim) -> AbstractContextManager[None]:
        """While a move to another node runs: what arrived, confirmed already
        (qrfarm.delivery.alongside)."""
        from .alongside import confirm_alongside  # it builds on this module

        return confirm_alongside(deps, taken, self.commitment)

    def __call__(self, deps: RunnerDeps, taken: Claim) -> None:
        with tracer.start_as_current_span("qrfarm.job.verify") as span:
            state = verify_delivery(deps, taken, self)
            if state is not None:
                span.set_attribute("qrfarm.job.state", state.value)


# -- reading and writing what was confirmed -------------------------------------------


def confirmed_uids(session: Session, job_id: int) -> set[str]:
    """The SOP Instance UIDs the job's destination confirmed holding."""
    return set(
        session.scalars(
            select(DeliveredInstance.sop_instance_uid).where(DeliveredInstance.job_id == job_id)
        )
    )


def unconfirmed(session: Session, job_id: int) -> list[Expected]:
    """The job's expected instances its destination has not confirmed yet."""
    confirmed = confirmed_uids(session, job_id)
    rows = session.scalars(select(ExpectedInstance).where(ExpectedInstance.job_id == job_id))
    return [
        Expected(r.sop_instance_uid, r.sop_class_uid, r.study_instance_uid, r.series_instance_uid)
        for r in rows
        if r.sop_instance_uid not in confirmed
    ]


def record_confirmed(
    session: Session, job_id: int, uids: Iterable[str], verified_by: VerifiedBy
) -> int:
    """One row per confirmed instance (a second confirmation changes nothing);
    how many the job has now."""
    rows = [
        {
            "job_id": job_id,
            "sop_instance_uid": uid,
            "verified_by": verified_by.value,
            "confirmed_at": utcnow(),
        }
        for uid in sorted(set(uids))
    ]
    if rows:
        session.execute(
            insert_for(session, DeliveredInstance)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["job_id", "sop_instance_uid"])
        )
    return len(confirmed_uids(session, job_id))


def confirm_for(deps: RunnerDeps, taken: Claim, uids: set[str], method: VerifiedBy) -> bool:
    """Record ``uids`` confirmed at the claimed job's destination by ``method``
    (its count and method with them); False once the job is not ours."""
    with deps.sessions() as session, session.begin():
        job = fenced(session, taken)
        if job is None:
            return False
        job.confirmed_count = record_confirmed(session, job.id, uids, method)
        job.verified_by = method.value
    return True


def _commit(deps: RunnerDeps, verifier: DeliveryVerifier, plan: _Plan) -> set[str] | None:
    """The instances the destination commits to; None when it cannot say."""
    refs = [
        InstanceRef(e.sop_class_uid, e.sop_instance_uid) for e in plan.pending if e.sop_class_uid
    ]
    if len(refs) < len(plan.pending):
        return None  # an instance of unknown class cannot be named in a request
    committed = committed_at(
        deps,
        verifier.commitment,
        job_id=plan.job_id,
        node_id=plan.node_id,
        node=plan.node,
        refs=refs,
        busy_raises=True,  # the rounds below wait for a permit: asked again then
    )
    plan.commitment = committed is not None  # for this job's next rounds
    return committed


def _verify_once(
    deps: RunnerDeps, verifier: DeliveryVerifier, plan: _Plan
) -> tuple[VerifiedBy, set[str]]:
    if plan.expected_known and plan.commitment is not False:
        committed = _commit(deps, verifier, plan)
        if committed is not None:
            return VerifiedBy.COMMITMENT, committed
    with deps.connections.query_retrieve(plan.node) as conn:
        try:
            if plan.expected_known:
                found = find_at_destination(conn, plan.pending)
            else:
                # No list to ask for: what the destination holds of the job's scope.
                refs = expected_instances(conn, plan.identifier, plan.root)
                found = {r.sop_instance_uid for r in refs}
        except (DeliveryUnverifiable, LookupError):
            observe_trait(deps, plan.node_id, profiles.ANSWERS_IMAGE_FIND, False)
            raise
    observe_trait(deps, plan.node_id, profiles.ANSWERS_IMAGE_FIND, True)
    return VerifiedBy.FIND, found


# -- the life of a verification -------------------------------------------------------


def _plan(session: Session, job: Job) -> _Plan:
    assert job.destination_node_id is not None
    row = session.get_one(NodeRecord, job.destination_node_id)
    deadline = job.reconcile_until or utcnow()
    return _Plan(
        job_id=job.id,
        node_id=row.id,
        node=node_of(row),
        pending=unconfirmed(session, job.id),
        expected_known=job.expected_count is not None,
        identifier=Dataset.from_json(job.identifier),
        root=Root(job.root),
        deadline=time.monotonic() + max(0.0, (deadline - utcnow()).total_seconds()),
        commitment=None,  # asked (or not: committed_at) in the first round
    )


def verify_delivery(deps: RunnerDeps, taken: Claim, verifier: DeliveryVerifier) -> JobState | None:
    """Verify a ``reconciling`` move at its destination node and end it; the
    state it ended in (None: the lease was lost, another worker has it)."""
    with deps.sessions() as session, session.begin():
        job = fenced(session, taken)
        if job is None:
            return None
        plan = _plan(session, job)
    problem = None
    while plan.pending or not plan.expected_known:
        try:
            method, found = _verify_once(deps, verifier, plan)
        except NodeBusy as exc:
            # Its permits are all taken (a round of confirmation alongside the
            # move may still hold one): asked again until the deadline.
            if time.monotonic() + verifier.poll_s > plan.deadline:
                problem = f"not verified at the destination: {exc}"
                log.warning("job %d: %s", plan.job_id, problem)
                break
            time.sleep(verifier.poll_s)
            continue
        except (QrfarmError, LookupError) as exc:
            problem = f"not verified at the destination: {exc}"
            log.warning("job %d: %s", plan.job_id, problem)
            break
        with deps.sessions() as session, session.begin():
            job = fenced(session, taken)
            if job is None:
                return None
            wanted = {e.sop_instance_uid for e in plan.pending}
            confirmed = found & wanted if plan.expected_known else found
            job.confirmed_count = record_confirmed(session, job.id, confirmed, method)
            job.verified_by = method.value
            cancelled = job.cancel_requested
        plan.pending = [e for e in plan.pending if e.sop_instance_uid not in confirmed]
        if not plan.expected_known or not plan.pending:
            break
        if cancelled or time.monotonic() + verifier.poll_s > plan.deadline:
            break
        time.sleep(verifier.poll_s)  # its C-STOREs may still be on their way
    with deps.sessions() as session, session.begin():
        job = fenced(session, taken)
        if job is None:
            return None
        finalize_delivery(session, job, deps.policy, problem)
        log.info(
            "job %d: %s at the destination (%d confirmed)",
            job.id,
            job.state.value,
            job.confirmed_count or 0,
        )
        return job.state


def finalize_delivery(
    session: Session, job: Job, policy: JobPolicy | None = None, problem: str | None = None
) -> None:
    """End a verified move: ``completed`` when every expected instance is
    confirmed at the destination, else ``partial`` naming the unconfirmed ones
    in ``missing_uids`` (or queued again for exactly those, as the policy
    allows). Without an expected list, the count the source reported is held
    against the count confirmed."""
    confirmed = confirmed_uids(session, job.id)
    job.confirmed_count = len(confirmed)
    if job.cancel_requested:
        transition(job, JobState.CANCELLED, error=f"cancelled; {len(confirmed)} confirmed")
        return
    reported = (job.reported_completed or 0) + (job.reported_warning or 0)
    failed, reported_failed = unresolved_failures(job, confirmed)
    if job.expected_count is not None:
        expected = expected_uids(session, job.id)
        missing = expected - confirmed
        enough = bool(expected) or not reported
        parts = [f"{len(missing)} of {len(expected)} expected instance(s) not confirmed"]
    else:
        expected, missing = set(), set()
        enough = len(confirmed) >= reported
        parts = [f"{reported} reported sent, {len(confirmed)} confirmed"]
    job.missing_uids = sorted(missing | failed)
    if not missing and not failed and not reported_failed and enough:
        transition(job, JobState.COMPLETED)
        job.error = None
        return
    if failed or reported_failed:
        parts.append(f"{max(len(failed), reported_failed)} failed at the source")
    if problem:
        parts.append(problem)
    reason = "; ".join(parts) + " at the destination"
    if policy is not None and retry_missing(job, policy, reason, expected):
        return
    transition(job, JobState.PARTIAL, error=reason)
