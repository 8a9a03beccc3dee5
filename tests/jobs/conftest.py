"""A migrated database (SQLite file or a new PostgreSQL database) and rows to test on."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.models import (
    ExpectedInstance,
    Job,
    JobKind,
    JobState,
    MatchedBy,
    NodeRecord,
    ReceivedInstance,
    utcnow,
)
from tests.databases import database_url, migrated


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with database_url(request.param, tmp_path) as url, migrated(url) as (_, factory):
        yield factory


class Sent:
    """A dispatcher that only remembers what was sent."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[object], str]] = []
        # Each message's job priority, in the order sent.
        self.priorities: list[int] = []

    def send(self, task: str, args: list[object], queue: str, priority: int = 0) -> None:
        self.messages.append((task, args, queue))
        self.priorities.append(priority)


def add_job(sessions: sessionmaker[Session], kind: JobKind = JobKind.MOVE, **columns: Any) -> int:
    """A job on node ``pacs`` (made on first use), with the given columns."""
    with sessions() as session, session.begin():
        node = session.query(NodeRecord).filter_by(name="pacs").one_or_none()
        if node is None:
            node = NodeRecord(name="pacs", ae_title="PACS", host="127.0.0.1", port=104)
            session.add(node)
            session.flush()
        columns.setdefault("state", JobState.QUEUED)
        job = Job(
            kind=kind,
            root="STUDY",
            level="STUDY",
            identifier={"0020000D": {"vr": "UI", "Value": ["1.2.3"]}},
            node_id=node.id,
            destination="QRFARMSCP" if kind is not JobKind.FIND else None,
            max_attempts=columns.pop("max_attempts", 3),
            **columns,
        )
        session.add(job)
        session.flush()
        return job.id


def load(sessions: sessionmaker[Session], job_id: int) -> Job:
    with sessions() as session:
        return session.get_one(Job, job_id)


def expect(sessions: sessionmaker[Session], job_id: int, uids: list[str]) -> None:
    with sessions() as session, session.begin():
        session.add_all(ExpectedInstance(job_id=job_id, sop_instance_uid=uid) for uid in uids)
        session.get_one(Job, job_id).expected_count = len(uids)


def receive(sessions: sessionmaker[Session], job_id: int, uids: list[str]) -> None:
    with sessions() as session, session.begin():
        session.add_all(
            ReceivedInstance(
                job_id=job_id,
                matched_by=MatchedBy.ORIGINATOR,
                sop_instance_uid=uid,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                study_instance_uid="1.2.3",
                series_instance_uid="1.2.3.1",
                transfer_syntax="1.2.840.10008.1.2.1",
                size=100,
                file_path=f"x/{uid}.dcm",
                calling_ae="PACS",
            )
            for uid in uids
        )


def ago(seconds: float) -> dt.datetime:
    return utcnow() - dt.timedelta(seconds=seconds)
