"""Submitting: a bad request is refused with an error naming what is wrong,
and leaves no job and no message behind; a good one is committed, then sent."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.dicom import Level
from qrfarm.errors import FieldError, InvalidIdentifier, QrfarmError, UnknownNode
from qrfarm.jobs.dispatch import RUN_JOB, node_queue
from qrfarm.jobs.submit import JobRequest, SubmitRules, submit
from qrfarm.models import Job, JobKind, JobState

from .conftest import Sent, add_job

RULES = SubmitRules(default_destination="QRFARMSCP")


class Checking(Sent):
    """Remembers, and checks that the job's row is committed when it is sent."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        super().__init__()
        self.sessions = sessions
        self.committed: list[bool] = []

    def send(self, task: str, args: list[object], queue: str, priority: int = 0) -> None:
        with self.sessions() as session:  # another session: sees committed rows only
            self.committed.append(session.get(Job, args[0]) is not None)
        super().send(task, args, queue, priority)


def jobs(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


@pytest.fixture
def node(sessions: sessionmaker[Session]) -> str:
    add_job(sessions)  # registers node "pacs"
    return "pacs"


def test_a_job_is_committed_before_its_message_is_sent(
    sessions: sessionmaker[Session], node: str
) -> None:
    sent = Checking(sessions)
    request = JobRequest(JobKind.FIND, node, Level.STUDY, keys={"PatientID": "P1"})
    job_id = submit(sessions, request, sent, RULES)
    assert sent.messages == [(RUN_JOB, [job_id], node_queue(node))]
    assert sent.committed == [True]
    with sessions() as session:
        job = session.get_one(Job, job_id)
        assert job.state is JobState.QUEUED
        assert job.dispatched_at is not None


@pytest.mark.parametrize(
    ("request_", "error", "words"),
    [
        (
            JobRequest(JobKind.MOVE, "pacs", Level.SERIES, keys={"StudyInstanceUID": "1.2"}),
            InvalidIdentifier,
            "SeriesInstanceUID",
        ),
        (
            JobRequest(JobKind.FIND, "pacs", Level.STUDY, keys={"NoSuchKeyword": "x"}),
            InvalidIdentifier,
            "NoSuchKeyword",
        ),
        (
            JobRequest(JobKind.FIND, "nowhere", Level.STUDY, keys={"PatientID": "P1"}),
            UnknownNode,
            "node 'nowhere' is not registered",
        ),
        (
            JobRequest(
                JobKind.MOVE,
                "pacs",
                Level.STUDY,
                keys={"StudyInstanceUID": "1.2"},
                destination="A DESTINATION TOO LONG",
            ),
            QrfarmError,
            "move destination",
        ),
    ],
    ids=["missing-unique-key", "unknown-keyword", "unknown-node", "bad-destination"],
)
def test_a_bad_request_is_refused_by_name_and_leaves_nothing(
    sessions: sessionmaker[Session],
    node: str,
    request_: JobRequest,
    error: type[Exception],
    words: str,
) -> None:
    before = jobs(sessions)
    sent = Sent()
    with pytest.raises(error, match=words):
        submit(sessions, request_, sent, RULES)
    assert jobs(sessions) == before
    assert sent.messages == []


def test_the_same_external_reference_gives_the_same_job_and_one_message(
    sessions: sessionmaker[Session], node: str
) -> None:
    sent = Sent()
    request = JobRequest(
        JobKind.MOVE, node, Level.STUDY, keys={"StudyInstanceUID": "1.2"}, external_reference="r1"
    )
    first = submit(sessions, request, sent, RULES)
    assert submit(sessions, request, sent, RULES) == first
    assert len(sent.messages) == 1


def test_a_move_goes_only_to_the_farms_scp_or_a_registered_node(
    sessions: sessionmaker[Session], node: str
) -> None:
    """A submitter cannot send studies to any AE title the PACS knows: only to
    the farm's own storage SCP, or to a node an admin registered."""
    study = {"StudyInstanceUID": "1.2.3"}
    before = jobs(sessions)
    with pytest.raises(FieldError, match="ELSEWHERE is neither the farm's storage SCP"):
        submit(
            sessions,
            JobRequest(JobKind.MOVE, node, Level.STUDY, keys=study, destination="ELSEWHERE"),
            Sent(),
            RULES,
        )
    assert jobs(sessions) == before
    for destination in (None, "QRFARMSCP", "PACS"):  # PACS: node "pacs"'s AE title
        request = JobRequest(JobKind.MOVE, node, Level.STUDY, keys=study, destination=destination)
        assert submit(sessions, request, Sent(), RULES)
