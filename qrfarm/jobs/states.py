"""The job state machine: the one way a job's state changes.

``queued → running → reconciling → completed | partial | failed | cancelled``;
a retry sends a ``partial`` or ``failed`` job (or a ``running`` one whose
attempt hit a transient error, or a ``reconciling`` one with instances
missing and attempts left) back to ``queued``; a late arrival reopens a
``completed`` or ``partial`` job into ``reconciling``.
"""

from __future__ import annotations

from sqlalchemy.orm import object_session

from qrfarm.errors import IllegalTransition
from qrfarm.models import ENDED_STATES, Job, JobState, utcnow
from qrfarm.notify.outbox import notify_job_ended

from .announce import announce_ended

Q, RUN, REC = JobState.QUEUED, JobState.RUNNING, JobState.RECONCILING
DONE, PART, FAIL, CANC = (
    JobState.COMPLETED,
    JobState.PARTIAL,
    JobState.FAILED,
    JobState.CANCELLED,
)

ALLOWED: dict[JobState, frozenset[JobState]] = {
    Q: frozenset({RUN, FAIL, CANC}),
    RUN: frozenset({REC, Q, FAIL, CANC, DONE}),
    REC: frozenset({DONE, PART, FAIL, CANC, Q}),
    DONE: frozenset({REC}),
    PART: frozenset({Q, REC}),
    FAIL: frozenset({Q}),
    CANC: frozenset(),
}


def transition(job: Job, to: JobState, *, error: str | None = None) -> None:
    """Move ``job`` to ``to`` (or raise IllegalTransition); stamps start and end times."""
    if to not in ALLOWED[job.state]:
        raise IllegalTransition(f"job {job.id}: {job.state.value} → {to.value} is not allowed")
    now = utcnow()
    job.state = to
    if to is RUN and job.started_at is None:
        job.started_at = now
    if to in ENDED_STATES or to is Q:
        # Ended or waiting for its next attempt: no worker holds it.
        job.lease_owner = None
        job.lease_expires_at = None
    if to in ENDED_STATES:
        job.ended_at = now
    elif to is Q:
        job.ended_at = None
    if error is not None:
        job.error = error
    if to in ENDED_STATES:
        _tell_of_end(job)


def _tell_of_end(job: Job) -> None:
    """In the transaction that ends the job: waiters hear of it on commit, and
    its webhook is in the outbox (so that it cannot be lost)."""
    session = object_session(job)
    if session is not None:
        announce_ended(session, job.id)
    if job.callback_url:
        if session is None:
            raise RuntimeError(f"job {job.id} ended outside a session; its webhook would be lost")
        notify_job_ended(session, job)
