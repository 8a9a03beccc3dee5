"""A waiter on PostgreSQL hears of a job's end the moment it commits, and
never of an end that was rolled back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.jobs.announce import can_listen, wait_for_end
from qrfarm.jobs.states import transition
from qrfarm.models import Job, JobKind, JobState, NodeRecord
from tests.databases import migrated, postgres_database

# Far longer than any wait below: a waiter that returns sooner was told.
RECHECK_S = 30.0


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[tuple[Engine, sessionmaker[Session]]]:
    with postgres_database() as url, migrated(url) as (engine, sessions):
        yield engine, sessions


def running_job(sessions: sessionmaker[Session]) -> int:
    with sessions() as session, session.begin():
        node = NodeRecord(name="pacs", ae_title="PACS", host="127.0.0.1", port=104)
        session.add(node)
        session.flush()
        job = Job(
            kind=JobKind.FIND,
            root="STUDY",
            level="STUDY",
            identifier={},
            node_id=node.id,
            state=JobState.RUNNING,
            max_attempts=3,
        )
        session.add(job)
        session.flush()
        return job.id


class Waiter(threading.Thread):
    def __init__(self, engine: Engine, job_id: int, timeout_s: float) -> None:
        super().__init__(daemon=True)
        self.engine, self.job_id, self.timeout_s = engine, job_id, timeout_s
        self.ended: bool | None = None
        self.returned_at = 0.0

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        self.ended = wait_for_end(self.engine, self.job_id, deadline, recheck_s=RECHECK_S)
        self.returned_at = time.monotonic()


def end(sessions: sessionmaker[Session], job_id: int, *, commit: bool) -> float:
    with sessions() as session:
        session.begin()
        transition(session.get_one(Job, job_id), JobState.COMPLETED)
        session.flush()
        if commit:
            session.commit()
        else:
            session.rollback()
    return time.monotonic()


def test_a_waiter_hears_the_end_when_it_commits(
    postgres: tuple[Engine, sessionmaker[Session]],
) -> None:
    engine, sessions = postgres
    assert can_listen(engine)
    job_id = running_job(sessions)
    waiter = Waiter(engine, job_id, timeout_s=60)
    waiter.start()
    time.sleep(1.0)  # listening by now
    ended_at = end(sessions, job_id, commit=True)
    waiter.join(10)
    assert waiter.ended is True
    assert waiter.returned_at - ended_at < 2.0  # told, not found by a recheck


def test_an_end_rolled_back_is_not_heard(
    postgres: tuple[Engine, sessionmaker[Session]],
) -> None:
    engine, sessions = postgres
    job_id = running_job(sessions)
    waiter = Waiter(engine, job_id, timeout_s=3)
    waiter.start()
    time.sleep(1.0)
    end(sessions, job_id, commit=False)
    waiter.join(10)
    assert waiter.ended is False  # ran out its deadline, job still running
    with sessions() as session:
        assert session.get_one(Job, job_id).state is JobState.RUNNING


def test_an_end_committed_before_the_wait_is_seen_at_once(
    postgres: tuple[Engine, sessionmaker[Session]],
) -> None:
    engine, sessions = postgres
    job_id = running_job(sessions)
    end(sessions, job_id, commit=True)
    started = time.monotonic()
    assert wait_for_end(engine, job_id, started + 60, recheck_s=RECHECK_S) is True
    assert time.monotonic() - started < 2.0
