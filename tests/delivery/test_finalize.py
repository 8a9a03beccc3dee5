"""The end of a verified move: what the destination confirmed held against
what the source was asked for and what it said failed."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from qrfarm.delivery.verification import finalize_delivery
from qrfarm.jobs.policy import JobPolicy
from qrfarm.models import DeliveredInstance, Job, JobState
from tests.jobs.conftest import add_job, expect, load

RETRYING = JobPolicy(retry_partial=True)


def confirm(sessions: sessionmaker[Session], job_id: int, uids: list[str]) -> None:
    with sessions() as session, session.begin():
        session.add_all(
            DeliveredInstance(job_id=job_id, sop_instance_uid=uid, verified_by="commitment")
            for uid in uids
        )


def end(sessions: sessionmaker[Session], job_id: int) -> Job:
    with sessions() as session, session.begin():
        finalize_delivery(session, session.get_one(Job, job_id), RETRYING)
    return load(sessions, job_id)


def test_a_failure_the_destination_confirmed_after_all_is_resolved(
    sessions: sessionmaker[Session],
) -> None:
    """The source named "3" failed on the first attempt; the retry brought it
    and the destination confirmed every expected instance: completed."""
    job_id = add_job(
        sessions,
        state=JobState.RUNNING,
        attempt_count=2,
        reported_completed=1,
        reported_failed=1,
        failed_uids=["3"],
    )
    expect(sessions, job_id, ["1", "2", "3"])
    confirm(sessions, job_id, ["1", "2", "3"])
    job = end(sessions, job_id)
    assert job.state is JobState.COMPLETED, job.error
    assert job.missing_uids == []


def test_a_failure_named_outside_the_expected_list_is_named_not_asked_for(
    sessions: sessionmaker[Session],
) -> None:
    job_id = add_job(
        sessions,
        state=JobState.RUNNING,
        attempt_count=1,
        reported_completed=3,
        reported_failed=1,
        failed_uids=["9"],
    )
    expect(sessions, job_id, ["1", "2", "3"])
    confirm(sessions, job_id, ["1", "2"])
    job = end(sessions, job_id)
    assert job.state is JobState.QUEUED
    assert job.retry_uids == ["3"]
    assert job.missing_uids == ["3", "9"]
