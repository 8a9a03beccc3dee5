"""Leases: which worker runs a job, fenced by a token, kept alive by heartbeats.

A redelivered task finds the lease alive and steps aside; a dead owner's
lease expires and the sweeper sends the job again. Every write a runner makes
afterwards names its token, so a runner that lost its lease changes nothing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from qrfarm.models import Attempt, Job, JobState, table, utcnow

from . import holds
from .policy import JobPolicy
from .states import transition


@dataclass(frozen=True)
class Claim:
    job_id: int
    token: int
    attempt_id: int
    attempt_number: int
    owner: str


def claim(
    session: Session, job_id: int, owner: str, policy: JobPolicy, task_id: str | None = None
) -> tuple[Claim, Job] | None:
    """Take the job for one attempt, or None when it is not ours to run now.

    The job comes back too: the session holds its objects weakly, and a
    second look-up would cost a query."""
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None:
        return None
    now = utcnow()
    if job.state is JobState.RUNNING:
        if job.lease_expires_at is not None and job.lease_expires_at > now:
            return None  # alive elsewhere: a redelivered message steps aside
        _end_lost_attempt(session, job)
        transition(job, JobState.QUEUED)
    if job.state is not JobState.QUEUED:
        return None
    clock_now = policy.clock()
    if job.next_attempt_at is not None and job.next_attempt_at > clock_now:
        return None  # not due yet; the scheduler sends it again when it is
    if job.cancel_requested:
        transition(job, JobState.CANCELLED, error="cancelled before it ran")
        return None
    node = holds.lock_node_if_capped(session, job.node_id)
    hold = holds.hold_for(session, job, node, clock_now, starting=True)
    if hold is not None:
        holds.apply(job, hold, clock_now)
        return None
    job.wait_reason = None
    if job.attempt_count >= job.max_attempts:
        transition(job, JobState.FAILED, error=job.error or "attempts exhausted")
        return None
    job.lease_token += 1
    job.lease_owner = owner
    job.lease_expires_at = now + dt.timedelta(seconds=policy.lease_ttl_s)
    job.attempt_count += 1
    job.next_attempt_at = None
    transition(job, JobState.RUNNING)
    # Attempts are numbered by row, not by attempt_count: a wait for a
    # permit gives its count back but keeps its row. Numbered in the INSERT
    # itself (the job's row is locked, so no other attempt races it).
    attempts = table(Attempt).c
    next_number = (
        select(func.coalesce(func.max(attempts.number), 0) + 1)
        .where(attempts.job_id == job.id)
        .scalar_subquery()
    )
    attempt_id, number = session.execute(
        insert(table(Attempt))
        .values(job_id=job.id, number=next_number, worker=owner, task_id=task_id, started_at=now)
        .returning(attempts.id, attempts.number)
    ).one()
    return Claim(job.id, job.lease_token, attempt_id, number, owner), job


def _end_lost_attempt(session: Session, job: Job) -> None:
    session.execute(
        update(Attempt)
        .where(Attempt.job_id == job.id, Attempt.ended_at.is_(None))
        .values(ended_at=utcnow(), outcome="lost", error="the worker's lease expired")
    )


def fenced(session: Session, claim: Claim) -> Job | None:
    """The job, locked, if this claim still holds its lease; None if it was lost."""
    job = session.scalar(
        select(Job).where(Job.id == claim.job_id, Job.lease_token == claim.token).with_for_update()
    )
    if job is None or job.state not in (JobState.RUNNING, JobState.RECONCILING):
        return None
    return job


def renew(session: Session, claim: Claim, policy: JobPolicy) -> bool:
    """Extend the lease; False when it is no longer ours."""
    result = session.execute(
        update(Job)
        .where(
            Job.id == claim.job_id,
            Job.lease_token == claim.token,
            Job.state.in_([JobState.RUNNING, JobState.RECONCILING]),
        )
        .values(lease_expires_at=utcnow() + dt.timedelta(seconds=policy.lease_ttl_s))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
