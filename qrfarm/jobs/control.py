"""What a user may ask of a job once submitted: cancel it, retry it."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.errors import NoSuchJob, NotRetriable
from qrfarm.models import ENDED_STATES, Job, JobKind, JobState, NodeRecord, utcnow

from .dispatch import Dispatcher, send_run_jobs
from .states import transition


def _job(session: Session, job_id: int) -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None:
        raise NoSuchJob(f"job {job_id} does not exist")
    return job


def cancel(sessions: sessionmaker[Session], job_id: int) -> JobState:
    """Ask for a job to stop: a queued one ends at once; a running one gets C-CANCEL."""
    with sessions() as session, session.begin():
        job = _job(session, job_id)
        if job.state in ENDED_STATES:
            return job.state
        job.cancel_requested = True
        if job.state is JobState.QUEUED:
            transition(job, JobState.CANCELLED, error="cancelled before it ran")
        return job.state


def retry(
    sessions: sessionmaker[Session], job_id: int, dispatcher: Dispatcher, max_attempts: int
) -> None:
    """Send a partial or failed job back to the queue as a new attempt.

    A partial move or get asks only for what is missing: an IMAGE-level
    retrieve of the missing SOP Instance UIDs.
    """
    with sessions() as session, session.begin():
        job = _job(session, job_id)
        if job.state not in (JobState.PARTIAL, JobState.FAILED):
            raise NotRetriable(
                f"job {job_id} is {job.state.value}; only partial or failed jobs can be retried"
            )
        prepare_retry(job, max_attempts)
        node_name = session.scalar(select(NodeRecord.name).where(NodeRecord.id == job.node_id))
        assert node_name is not None
        priority = job.priority
    send_run_jobs(sessions, dispatcher, [(job_id, node_name, priority)])


def prepare_retry(job: Job, max_attempts: int) -> None:
    """Queue a partial or failed job (locked by the caller) for a new attempt;
    the caller sends it once committed."""
    retry_uids = (
        list(job.missing_uids)
        if job.state is JobState.PARTIAL and job.kind is not JobKind.FIND
        else []
    )
    transition(job, JobState.QUEUED)
    job.retry_uids = retry_uids
    job.max_attempts = job.attempt_count + max_attempts
    job.next_attempt_at = None
    job.wait_reason = None
    job.dispatched_at = utcnow()
    job.cancel_requested = False
