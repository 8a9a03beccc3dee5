"""Reconciliation: expected, reported and recorded instances held against each other."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from qrfarm.jobs.policy import JobPolicy
from qrfarm.jobs.reconcile import all_arrived, finalize
from qrfarm.models import DeliveredInstance, Job, JobState, NodeRecord

from .conftest import add_job, expect, load, receive

RETRYING = JobPolicy(retry_partial=True)
NOT_RETRYING = JobPolicy(retry_partial=False)


def reconciling(sessions: sessionmaker[Session], **columns: object) -> int:
    return add_job(sessions, state=JobState.RECONCILING, attempt_count=1, **columns)


def reading_node(sessions: sessionmaker[Session]) -> int:
    """A destination node (a reading PACS) for moves verified there; its id."""
    with sessions() as session, session.begin():
        node = NodeRecord(name="reading", ae_title="READING", host="127.0.0.1", port=104)
        session.add(node)
        session.flush()
        return node.id


def confirmed_at_destination(sessions: sessionmaker[Session], job_id: int, uids: list[str]) -> None:
    with sessions() as session, session.begin():
        session.add_all(
            DeliveredInstance(job_id=job_id, sop_instance_uid=uid, verified_by="find")
            for uid in uids
        )


def end(sessions: sessionmaker[Session], job_id: int, policy: JobPolicy) -> Job:
    with sessions() as session, session.begin():
        finalize(session, session.get_one(Job, job_id), policy)
    return load(sessions, job_id)


def test_everything_expected_recorded_is_completed(sessions: sessionmaker[Session]) -> None:
    job_id = reconciling(sessions, reported_completed=3, reported_failed=0)
    expect(sessions, job_id, ["1", "2", "3"])
    receive(sessions, job_id, ["1", "2", "3"])
    job = end(sessions, job_id, RETRYING)
    assert job.state is JobState.COMPLETED
    assert (job.recorded_count, job.missing_uids, job.error) == (3, [], None)


def test_missing_instances_are_asked_for_again_while_attempts_remain(
    sessions: sessionmaker[Session],
) -> None:
    job_id = reconciling(sessions, reported_completed=3, reported_failed=0)
    expect(sessions, job_id, ["1", "2", "3"])
    receive(sessions, job_id, ["2"])
    with sessions() as session:
        assert not all_arrived(session, session.get_one(Job, job_id))
    job = end(sessions, job_id, RETRYING)
    assert job.state is JobState.QUEUED
    assert job.retry_uids == ["1", "3"]
    assert job.next_attempt_at is not None
    assert "2 of 3 expected instance(s) missing" in (job.error or "")


def test_missing_instances_with_no_retry_end_partial_naming_them(
    sessions: sessionmaker[Session],
) -> None:
    job_id = reconciling(
        sessions, reported_completed=2, reported_failed=1, failed_uids=["3"], max_attempts=1
    )
    expect(sessions, job_id, ["1", "2", "3"])
    receive(sessions, job_id, ["1"])
    job = end(sessions, job_id, RETRYING)  # no attempt left
    assert job.state is JobState.PARTIAL
    assert job.missing_uids == ["2", "3"]
    assert job.error == (
        "2 of 3 expected instance(s) missing; 1 failed at the PACS; 2 reported sent, 1 arrived"
    )


def test_success_reported_and_nothing_arrived_says_so(sessions: sessionmaker[Session]) -> None:
    job_id = reconciling(sessions, reported_completed=5, reported_failed=0)
    job = end(sessions, job_id, NOT_RETRYING)
    assert job.state is JobState.PARTIAL
    assert job.error == "the PACS reported 5 instance(s) sent, and nothing arrived"


def test_without_an_expected_list_what_was_reported_must_arrive(
    sessions: sessionmaker[Session],
) -> None:
    job_id = reconciling(sessions, reported_completed=2, reported_warning=1, reported_failed=0)
    receive(sessions, job_id, ["1", "2"])
    with sessions() as session:
        assert not all_arrived(session, session.get_one(Job, job_id))
    receive(sessions, job_id, ["3"])
    with sessions() as session:
        assert all_arrived(session, session.get_one(Job, job_id))
    assert end(sessions, job_id, NOT_RETRYING).state is JobState.COMPLETED


def test_a_cancelled_job_keeps_what_arrived(sessions: sessionmaker[Session]) -> None:
    job_id = reconciling(sessions, reported_completed=1, cancel_requested=True)
    receive(sessions, job_id, ["1", "2"])
    job = end(sessions, job_id, RETRYING)
    assert job.state is JobState.CANCELLED
    assert job.recorded_count == 2
    assert job.error == "cancelled; 2 instance(s) arrived"


def test_a_failure_named_outside_the_expected_list_is_reported_not_asked_for(
    sessions: sessionmaker[Session],
) -> None:
    """The PACS names as failed an instance its find never listed: the job
    names it, but a retry by UID cannot ask for it (its series is unknown),
    so none is queued for it alone."""
    job_id = reconciling(sessions, reported_completed=3, reported_failed=1, failed_uids=["9"])
    expect(sessions, job_id, ["1", "2", "3"])
    receive(sessions, job_id, ["1", "2", "3"])
    job = end(sessions, job_id, RETRYING)
    assert job.state is JobState.PARTIAL
    assert job.missing_uids == ["9"]
    assert job.retry_uids == []


def test_a_retry_asks_only_for_what_the_expected_list_names(
    sessions: sessionmaker[Session],
) -> None:
    job_id = reconciling(sessions, reported_completed=2, reported_failed=1, failed_uids=["9"])
    expect(sessions, job_id, ["1", "2", "3"])
    receive(sessions, job_id, ["1", "2"])
    job = end(sessions, job_id, RETRYING)
    assert job.state is JobState.QUEUED
    assert job.retry_uids == ["3"]


def test_a_move_whose_verifier_died_after_every_instance_was_confirmed_is_completed(
    sessions: sessionmaker[Session],
) -> None:
    """The worker verifying a move at another node died after the destination
    had confirmed everything: nothing is left to send again or to name."""
    node_id = reading_node(sessions)
    job_id = reconciling(sessions, reported_completed=2, destination_node_id=node_id)
    expect(sessions, job_id, ["1", "2"])
    confirmed_at_destination(sessions, job_id, ["1", "2"])
    job = end(sessions, job_id, NOT_RETRYING)
    assert job.state is JobState.COMPLETED, job.error
    assert (job.missing_uids, job.confirmed_count) == ([], 2)


def test_a_verified_move_left_with_a_failure_outside_its_list_stays_partial_naming_it(
    sessions: sessionmaker[Session],
) -> None:
    """Every expected instance confirmed at the destination, and the source
    named one more failed (never in its find): a retry has nothing to ask
    for, and the job ends partial naming that failure, not a lost verifier."""
    node_id = reading_node(sessions)
    job_id = reconciling(
        sessions,
        reported_completed=2,
        reported_failed=1,
        failed_uids=["9"],
        destination_node_id=node_id,
    )
    expect(sessions, job_id, ["1", "2"])
    confirmed_at_destination(sessions, job_id, ["1", "2"])
    job = end(sessions, job_id, RETRYING)
    assert job.state is JobState.PARTIAL
    assert job.missing_uids == ["9"]
    assert job.error == "1 failed at the source"
