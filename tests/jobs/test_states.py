"""The state machine: the one way a job's state changes."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.errors import IllegalTransition
from qrfarm.jobs.states import transition
from qrfarm.models import Job, JobState

from .conftest import add_job, load


def test_a_job_goes_queued_running_reconciling_completed_with_its_times_stamped(
    sessions: sessionmaker[Session],
) -> None:
    job_id = add_job(sessions)
    with sessions() as session, session.begin():
        job = session.get_one(Job, job_id)
        transition(job, JobState.RUNNING)
        job.lease_owner = "worker-1"
        started = job.started_at
        transition(job, JobState.RECONCILING)
        transition(job, JobState.COMPLETED)
    job = load(sessions, job_id)
    assert job.state is JobState.COMPLETED
    assert started is not None and job.started_at == started
    assert job.ended_at is not None and job.ended_at >= started
    assert job.lease_owner is None  # an ended job is no worker's


@pytest.mark.parametrize(
    ("start", "to"),
    [
        (JobState.COMPLETED, JobState.RUNNING),
        (JobState.QUEUED, JobState.COMPLETED),
        (JobState.CANCELLED, JobState.QUEUED),
        (JobState.FAILED, JobState.RUNNING),
    ],
)
def test_a_change_the_life_cycle_does_not_allow_is_refused_and_changes_nothing(
    sessions: sessionmaker[Session], start: JobState, to: JobState
) -> None:
    job_id = add_job(sessions, state=start)
    with sessions() as session, session.begin():
        job = session.get_one(Job, job_id)
        with pytest.raises(IllegalTransition, match=f"{start.value} → {to.value} is not allowed"):
            transition(job, to)
        assert job.state is start
    assert load(sessions, job_id).state is start


def test_a_failed_job_queued_again_is_no_longer_ended(sessions: sessionmaker[Session]) -> None:
    job_id = add_job(sessions, state=JobState.RUNNING)
    with sessions() as session, session.begin():
        job = session.get_one(Job, job_id)
        transition(job, JobState.FAILED, error="refused")
        assert job.ended_at is not None
        transition(job, JobState.QUEUED)
    job = load(sessions, job_id)
    assert job.state is JobState.QUEUED
    assert job.ended_at is None
    assert job.error == "refused"  # the last reason stays until another replaces it
