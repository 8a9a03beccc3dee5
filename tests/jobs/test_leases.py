"""Leases: one attempt at a time per job, taken over when its worker died, and
writes fenced by the token so that a runner that lost its lease changes nothing."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.jobs.leases import Claim, claim, fenced, renew
from qrfarm.jobs.policy import JobPolicy
from qrfarm.models import Attempt, Job, JobState, utcnow

from .conftest import add_job, ago, load

POLICY = JobPolicy(lease_ttl_s=60)


def take(sessions: sessionmaker[Session], job_id: int, owner: str) -> Claim | None:
    with sessions() as session, session.begin():
        claimed = claim(session, job_id, owner, POLICY, task_id=f"task-{owner}")
        return None if claimed is None else claimed[0]


def attempts(sessions: sessionmaker[Session], job_id: int) -> list[tuple[int, str | None]]:
    with sessions() as session:
        rows = session.execute(
            select(Attempt.number, Attempt.outcome)
            .where(Attempt.job_id == job_id)
            .order_by(Attempt.number)
        )
        return [(number, outcome) for number, outcome in rows]


def test_a_queued_job_is_claimed_for_its_first_attempt(sessions: sessionmaker[Session]) -> None:
    job_id = add_job(sessions)
    taken = take(sessions, job_id, "w1")
    assert taken is not None
    assert (taken.attempt_number, taken.owner) == (1, "w1")
    job = load(sessions, job_id)
    assert job.state is JobState.RUNNING
    assert job.attempt_count == 1
    assert job.lease_owner == "w1" and job.lease_token == taken.token
    assert job.lease_expires_at is not None and job.lease_expires_at > utcnow()
    assert attempts(sessions, job_id) == [(1, None)]


def test_a_redelivered_message_steps_aside_while_the_lease_lives(
    sessions: sessionmaker[Session],
) -> None:
    job_id = add_job(sessions)
    first = take(sessions, job_id, "w1")
    assert first is not None
    assert take(sessions, job_id, "w2") is None
    job = load(sessions, job_id)
    assert (job.lease_owner, job.attempt_count) == ("w1", 1)
    assert attempts(sessions, job_id) == [(1, None)]


def test_an_expired_lease_is_taken_over_and_the_old_runner_can_change_nothing(
    sessions: sessionmaker[Session],
) -> None:
    job_id = add_job(sessions)
    old = take(sessions, job_id, "w1")
    assert old is not None
    with sessions() as session, session.begin():
        session.get_one(Job, job_id).lease_expires_at = ago(1)  # w1 died
    new = take(sessions, job_id, "w2")
    assert new is not None
    assert new.attempt_number == 2 and new.token != old.token
    assert attempts(sessions, job_id) == [(1, "lost"), (2, None)]
    with sessions() as session, session.begin():
        assert fenced(session, old) is None
        assert renew(session, old, POLICY) is False
        assert fenced(session, new) is not None
        assert renew(session, new, POLICY) is True
    assert load(sessions, job_id).lease_owner == "w2"


def test_a_job_not_due_yet_is_left_for_later(sessions: sessionmaker[Session]) -> None:
    job_id = add_job(sessions, next_attempt_at=utcnow() + dt.timedelta(seconds=60))
    assert take(sessions, job_id, "w1") is None
    job = load(sessions, job_id)
    assert (job.state, job.attempt_count) == (JobState.QUEUED, 0)


def test_a_job_cancelled_before_it_ran_ends_cancelled_unrun(
    sessions: sessionmaker[Session],
) -> None:
    job_id = add_job(sessions, cancel_requested=True)
    assert take(sessions, job_id, "w1") is None
    job = load(sessions, job_id)
    assert job.state is JobState.CANCELLED
    assert job.error == "cancelled before it ran"
    assert attempts(sessions, job_id) == []


def test_a_job_out_of_attempts_fails_with_its_last_reason(
    sessions: sessionmaker[Session],
) -> None:
    job_id = add_job(sessions, attempt_count=3, max_attempts=3, error="association refused")
    assert take(sessions, job_id, "w1") is None
    job = load(sessions, job_id)
    assert job.state is JobState.FAILED
    assert job.error == "association refused"


def test_an_ended_job_is_not_run_again(sessions: sessionmaker[Session]) -> None:
    job_id = add_job(sessions, state=JobState.COMPLETED)
    assert take(sessions, job_id, "w1") is None
    assert load(sessions, job_id).state is JobState.COMPLETED
