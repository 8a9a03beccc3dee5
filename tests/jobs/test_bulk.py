"""Bulk actions on the database of record: what each filter field selects, what
each action touches, and that it answers how many and which."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.errors import FieldError
from qrfarm.jobs import bulk
from qrfarm.jobs.bulk import JobFilter
from qrfarm.jobs.priority import BULK
from qrfarm.models import JobKind, JobState, utcnow

from .conftest import Sent, add_job, ago, load


def test_cancel_by_node_and_state_touches_only_live_matching_jobs(
    sessions: sessionmaker[Session],
) -> None:
    queued = add_job(sessions)
    running = add_job(sessions, state=JobState.RUNNING)
    done = add_job(sessions, state=JobState.COMPLETED)
    result = bulk.cancel(sessions, JobFilter(node="pacs"))
    assert (result.touched, result.job_ids) == (2, [queued, running])
    assert load(sessions, queued).state is JobState.CANCELLED
    assert load(sessions, running).cancel_requested  # its worker sends C-CANCEL
    assert load(sessions, done).state is JobState.COMPLETED
    assert bulk.cancel(sessions, JobFilter(node="pacs", state=JobState.QUEUED)).touched == 0
    assert bulk.cancel(sessions, JobFilter(node="other")).touched == 0


def test_filters_by_kind_time_and_ids(sessions: sessionmaker[Session]) -> None:
    old_find = add_job(sessions, kind=JobKind.FIND, created_at=ago(3600))
    new_find = add_job(sessions, kind=JobKind.FIND)
    move = add_job(sessions)
    hour_ago = utcnow() - dt.timedelta(minutes=30)
    assert bulk.cancel(sessions, JobFilter(kind=JobKind.FIND, created_before=hour_ago)).job_ids == [
        old_find
    ]
    assert bulk.cancel(sessions, JobFilter(created_after=hour_ago, job_ids=(move,))).job_ids == [
        move
    ]
    assert load(sessions, new_find).state is JobState.QUEUED
    with pytest.raises(FieldError, match="at least one of"):
        bulk.cancel(sessions, JobFilter())


def test_reprioritise_moves_queued_jobs_to_their_new_lane_and_frees_a_held_one(
    sessions: sessionmaker[Session],
) -> None:
    held = add_job(
        sessions,
        priority=BULK,
        next_attempt_at=utcnow() + dt.timedelta(hours=8),
        dispatched_at=utcnow(),
        wait_reason="bulk work waits for a window of node pacs",
    )
    waiting = add_job(sessions, priority=BULK, dispatched_at=utcnow())
    ended = add_job(sessions, priority=BULK, state=JobState.FAILED)
    sent = Sent()
    result = bulk.reprioritise(sessions, JobFilter(node="pacs"), 60, sent)
    assert result.job_ids == [held, waiting]
    assert [args[0] for _, args, _ in sent.messages] == [held, waiting]
    assert sent.priorities == [60, 60]
    job = load(sessions, held)
    assert (job.priority, job.next_attempt_at, job.wait_reason) == (60, None, None)
    assert load(sessions, ended).priority == BULK
    # The same again changes nothing.
    assert bulk.reprioritise(sessions, JobFilter(node="pacs"), 60, Sent()).touched == 0
    with pytest.raises(FieldError, match="from -100 to 100"):
        bulk.reprioritise(sessions, JobFilter(node="pacs"), 101, Sent())


def test_retry_sends_each_partial_job_in_its_own_lane(sessions: sessionmaker[Session]) -> None:
    partial = add_job(sessions, state=JobState.PARTIAL, priority=BULK, missing_uids=["1.2.9"])
    failed = add_job(sessions, kind=JobKind.FIND, state=JobState.FAILED)
    sent = Sent()
    result = bulk.retry(sessions, JobFilter(state=JobState.PARTIAL), sent, max_attempts=2)
    assert result.job_ids == [partial] and sent.priorities == [BULK]
    job = load(sessions, partial)
    assert job.state is JobState.QUEUED and job.retry_uids == ["1.2.9"]
    assert load(sessions, failed).state is JobState.FAILED
    assert bulk.retry(sessions, JobFilter(kind=JobKind.FIND), Sent(), 2).job_ids == [failed]
