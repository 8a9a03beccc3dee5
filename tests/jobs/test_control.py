"""What a user may ask of a submitted job: cancel it, retry it."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.errors import NoSuchJob, NotRetriable
from qrfarm.jobs.control import cancel, retry
from qrfarm.jobs.dispatch import RUN_JOB, node_queue
from qrfarm.models import JobKind, JobState

from .conftest import Sent, add_job, load


def test_a_queued_job_cancelled_ends_at_once(sessions: sessionmaker[Session]) -> None:
    job_id = add_job(sessions)
    assert cancel(sessions, job_id) is JobState.CANCELLED
    job = load(sessions, job_id)
    assert (job.state, job.cancel_requested) == (JobState.CANCELLED, True)


def test_a_running_job_cancelled_is_asked_to_stop_and_runs_on_until_it_does(
    sessions: sessionmaker[Session],
) -> None:
    job_id = add_job(sessions, state=JobState.RUNNING, lease_owner="w1")
    assert cancel(sessions, job_id) is JobState.RUNNING
    job = load(sessions, job_id)
    assert job.cancel_requested  # its watch sends C-CANCEL; its end says cancelled
    assert job.lease_owner == "w1"


def test_an_ended_job_is_not_changed_by_a_cancel(sessions: sessionmaker[Session]) -> None:
    job_id = add_job(sessions, state=JobState.COMPLETED)
    assert cancel(sessions, job_id) is JobState.COMPLETED
    assert not load(sessions, job_id).cancel_requested


def test_a_partial_move_retried_asks_only_for_what_is_missing(
    sessions: sessionmaker[Session],
) -> None:
    job_id = add_job(
        sessions, state=JobState.PARTIAL, attempt_count=3, missing_uids=["1.2.3.4", "1.2.3.5"]
    )
    sent = Sent()
    retry(sessions, job_id, sent, max_attempts=2)
    job = load(sessions, job_id)
    assert job.state is JobState.QUEUED
    assert job.retry_uids == ["1.2.3.4", "1.2.3.5"]
    assert job.max_attempts == 5  # two more than it has had
    assert sent.messages == [(RUN_JOB, [job_id], node_queue("pacs"))]


def test_a_failed_find_retried_runs_whole_again(sessions: sessionmaker[Session]) -> None:
    job_id = add_job(sessions, JobKind.FIND, state=JobState.FAILED, attempt_count=3)
    retry(sessions, job_id, Sent(), max_attempts=3)
    job = load(sessions, job_id)
    assert (job.state, job.retry_uids, job.ended_at) == (JobState.QUEUED, [], None)


@pytest.mark.parametrize("state", [JobState.COMPLETED, JobState.RUNNING, JobState.CANCELLED])
def test_only_partial_or_failed_jobs_can_be_retried(
    sessions: sessionmaker[Session], state: JobState
) -> None:
    job_id = add_job(sessions, state=state)
    sent = Sent()
    with pytest.raises(NotRetriable, match=f"job {job_id} is {state.value}"):
        retry(sessions, job_id, sent, max_attempts=3)
    assert load(sessions, job_id).state is state
    assert sent.messages == []


def test_a_job_that_does_not_exist_is_named(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(NoSuchJob, match="job 4242 does not exist"):
        cancel(sessions, 4242)
    with pytest.raises(NoSuchJob, match="job 4242 does not exist"):
        retry(sessions, 4242, Sent(), max_attempts=3)
