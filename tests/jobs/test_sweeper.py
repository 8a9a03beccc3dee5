"""The sweep: the database is the record of truth; what the broker lost is sent again."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session, sessionmaker

from qrfarm.jobs.dispatch import RUN_JOB, node_queue
from qrfarm.jobs.policy import JobPolicy
from qrfarm.jobs.sweeper import sweep
from qrfarm.models import JobState, utcnow

from .conftest import Sent, add_job, ago, load, receive

POLICY = JobPolicy(redispatch_after_s=120)


def test_a_queued_job_never_sent_is_sent_once(sessions: sessionmaker[Session]) -> None:
    job_id = add_job(sessions)  # committed, then the producer died before sending
    sent = Sent()
    assert sweep(sessions, sent, POLICY).dispatched == [job_id]
    assert sent.messages == [(RUN_JOB, [job_id], node_queue("pacs"))]
    assert load(sessions, job_id).dispatched_at is not None
    assert sweep(sessions, sent, POLICY).dispatched == []  # not twice


def test_a_queued_job_sent_long_ago_is_sent_again(sessions: sessionmaker[Session]) -> None:
    lost = add_job(sessions, dispatched_at=ago(600))
    recent = add_job(sessions, dispatched_at=ago(1))
    assert sweep(sessions, Sent(), POLICY).dispatched == [lost]
    assert load(sessions, recent).state is JobState.QUEUED


def test_a_retry_is_sent_when_it_is_due_and_not_before(sessions: sessionmaker[Session]) -> None:
    later = utcnow() + dt.timedelta(seconds=60)
    waiting = add_job(sessions, dispatched_at=ago(5), next_attempt_at=later)
    due = add_job(sessions, dispatched_at=ago(5), next_attempt_at=ago(1))
    assert sweep(sessions, Sent(), POLICY).dispatched == [due]
    assert load(sessions, waiting).dispatched_at is not None


def test_a_running_job_whose_worker_died_is_sent_again(sessions: sessionmaker[Session]) -> None:
    dead = add_job(
        sessions,
        state=JobState.RUNNING,
        lease_owner="w1",
        lease_expires_at=ago(1),
        dispatched_at=ago(70),
    )
    alive = add_job(
        sessions,
        state=JobState.RUNNING,
        lease_owner="w2",
        lease_expires_at=utcnow() + dt.timedelta(seconds=60),
        dispatched_at=ago(70),
    )
    assert sweep(sessions, Sent(), POLICY).dispatched == [dead]
    assert load(sessions, alive).lease_owner == "w2"


def test_a_reconciling_job_whose_worker_died_is_finalized_here(
    sessions: sessionmaker[Session],
) -> None:
    job_id = add_job(
        sessions,
        state=JobState.RECONCILING,
        lease_owner="w1",
        lease_expires_at=ago(1),
        reported_completed=2,
        reported_failed=0,
        attempt_count=1,
    )
    receive(sessions, job_id, ["1", "2"])
    report = sweep(sessions, Sent(), POLICY)
    assert report.finalized == [job_id] and report.dispatched == []
    job = load(sessions, job_id)
    assert (job.state, job.recorded_count) == (JobState.COMPLETED, 2)
