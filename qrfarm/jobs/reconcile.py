"""Reconciliation: expected, reported and recorded held against each other.

* expected: the instances an IMAGE-level find named before the move;
* reported: the final response's completed + warning, failed, and the
  Failed SOP Instance UID List;
* recorded: the distinct instances the storage SCP (or the C-GET) stored,
  with the orphans of the job's node that it asked for (claimed here).

A job is ``completed`` when all that is expected is recorded, nothing failed
and at least what was reported arrived; otherwise ``partial``, naming the
failed and the missing UIDs, or saying plainly that the PACS reported
success and nothing arrived.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection
from dataclasses import replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from qrfarm.models import (
    DeliveredInstance,
    ExpectedInstance,
    Job,
    JobKind,
    JobState,
    ReceivedInstance,
    utcnow,
)
from qrfarm.observability.metrics import RECONCILIATIONS, RETRIES

from .orphans import claim_orphans
from .policy import JobPolicy
from .states import transition

log = logging.getLogger(__name__)


def recorded_uids(session: Session, job_id: int) -> set[str]:
    return set(
        session.scalars(
            select(ReceivedInstance.sop_instance_uid).where(ReceivedInstance.job_id == job_id)
        )
    )


def expected_uids(session: Session, job_id: int) -> set[str]:
    return set(
        session.scalars(
            select(ExpectedInstance.sop_instance_uid).where(ExpectedInstance.job_id == job_id)
        )
    )


def all_arrived(session: Session, job: Job) -> bool:
    """Whether waiting longer can change nothing: everything expected (or reported) is here."""
    recorded = recorded_uids(session, job.id)
    if job.expected_count:  # an empty list tells nothing: the counts decide
        return expected_uids(session, job.id) <= recorded
    reported = (job.reported_completed or 0) + (job.reported_warning or 0)
    return len(recorded) >= reported


def unresolved_failures(job: Job, held: set[str]) -> tuple[set[str], int]:
    """The failures the source named that are still not ``held`` (arrived, or
    confirmed at the destination), and how many it reported failed less those
    named ones held after all (a retry, a resend): a failure it only counted
    is not resolved."""
    named = set(job.failed_uids or [])
    return named - held, max(0, (job.reported_failed or 0) - len(named & held))


def finalize(session: Session, job: Job, policy: JobPolicy | None = None) -> None:
    """End a ``reconciling`` job as completed, partial or cancelled; with a
    ``policy`` that retries partial jobs, one with instances missing (and
    attempts left) is queued again for exactly those instead."""
    if job.destination_node_id is not None:
        _verifier_lost(session, job, policy or JobPolicy())
        return
    claim_orphans(session, job, (policy or JobPolicy()).late_window_s)
    session.flush()
    recorded = recorded_uids(session, job.id)
    job.recorded_count = len(recorded)
    if job.cancel_requested:
        transition(job, JobState.CANCELLED, error=f"cancelled; {len(recorded)} instance(s) arrived")
        RECONCILIATIONS.labels("cancelled").inc()
        return
    expected = expected_uids(session, job.id) if job.expected_count is not None else set()
    missing = expected - recorded
    reported = (job.reported_completed or 0) + (job.reported_warning or 0)
    failed, reported_failed = unresolved_failures(job, recorded)
    job.missing_uids = sorted(missing | failed)
    # Completeness is decided by content where a find named it: every
    # expected instance held. Only without that list do the PACS's counts
    # decide (its completed count may include instances added since the find).
    enough = len(recorded) >= reported or (bool(expected) and not missing)
    if not missing and not failed and reported_failed == 0 and enough:
        transition(job, JobState.COMPLETED)
        job.error = None
        RECONCILIATIONS.labels("completed").inc()
        return
    if reported and not recorded:
        reason = f"the PACS reported {reported} instance(s) sent, and nothing arrived"
    else:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of {len(expected)} expected instance(s) missing")
        if reported_failed or failed:
            parts.append(f"{max(reported_failed, len(failed))} failed at the PACS")
        if len(recorded) < reported:
            parts.append(f"{reported} reported sent, {len(recorded)} arrived")
        reason = "; ".join(parts) or "incomplete"
    if policy is not None and retry_missing(job, policy, reason, expected):
        RECONCILIATIONS.labels("retrying").inc()
        return
    transition(job, JobState.PARTIAL, error=reason)
    RECONCILIATIONS.labels("partial").inc()


def retry_missing(job: Job, policy: JobPolicy, reason: str, expected: Collection[str]) -> bool:
    """Queue the job again for its missing instances (``missing_uids``) that
    ``expected`` (its IMAGE-level find) names, when that can help; qrfarm.delivery
    calls it for what a destination did not confirm. An instance only the
    PACS's failure list names cannot be asked for by UID (its series is not
    known): it stays named, and alone it queues nothing."""
    if not (policy.retry_partial and job.missing_uids and job.kind is not JobKind.FIND):
        return False
    askable = [uid for uid in job.missing_uids if uid in expected]
    if job.expected_count is None or not askable or job.attempt_count >= job.max_attempts:
        return False
    delay = policy.backoff(job.attempt_count)
    RETRIES.labels("missing").inc()
    transition(job, JobState.QUEUED, error=f"{reason}; asking again for those")
    job.retry_uids = askable
    job.next_attempt_at = utcnow() + dt.timedelta(seconds=delay)
    log.info("job %d: %s; retry of %d in %.1f s", job.id, reason, len(askable), delay)
    return True


def _verifier_lost(session: Session, job: Job, policy: JobPolicy) -> None:
    """A move to another node is verified there, over DICOM (qrfarm.delivery),
    not by what the farm recorded; one whose worker died while verifying is
    sent again for what its destination has not confirmed."""
    if job.cancel_requested:
        transition(job, JobState.CANCELLED, error="cancelled while verifying at the destination")
        return
    confirmed = set(
        session.scalars(
            select(DeliveredInstance.sop_instance_uid).where(DeliveredInstance.job_id == job.id)
        )
    )
    expected = expected_uids(session, job.id)
    unconfirmed = expected - confirmed
    failed, reported_failed = unresolved_failures(job, confirmed)
    job.missing_uids = sorted(unconfirmed | failed)
    job.confirmed_count = len(confirmed & expected) if expected else len(confirmed)
    if expected and not job.missing_uids and not reported_failed:
        # Everything was confirmed before the verifier died: nothing is left.
        transition(job, JobState.COMPLETED)
        job.error = None
        return
    if unconfirmed or not expected:
        reason = "verification at the destination did not finish"
    else:
        reason = f"{max(len(failed), reported_failed)} failed at the source"
    if (
        job.expected_count is None
        or not unconfirmed
        or not retry_missing(job, replace(policy, retry_partial=True), reason, expected)
    ):
        transition(job, JobState.PARTIAL, error=reason)


def reopen_for_late_arrival(session: Session, job: Job) -> None:
    """An instance arrived for an ended job: reconcile it again at once."""
    if job.state in (JobState.COMPLETED, JobState.PARTIAL):
        transition(job, JobState.RECONCILING)
        finalize(session, job)
