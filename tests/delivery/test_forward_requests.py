"""Making forward jobs and a destination's options, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.delivery.forward import (
    ForwardRequest,
    new_forward,
    options_document,
    set_options,
    submit_forward,
)
from qrfarm.dicom import Level
from qrfarm.dicom.sending import Held, held_contexts
from qrfarm.errors import FieldError, NotForwardable, PresentationContextError
from qrfarm.jobs.submit import JobRequest, SubmitRules, submit
from qrfarm.models import (
    ExpectedInstance,
    ForwardOptions,
    Job,
    JobKind,
    JobState,
    MatchedBy,
    ReceivedInstance,
)
from tests.jobs.conftest import Sent, add_job

CT = "1.2.840.10008.5.1.4.1.1.2"


def _hold(sessions: sessionmaker[Session], job_id: int, count: int) -> None:
    with sessions() as session, session.begin():
        for n in range(count):
            session.add(
                ReceivedInstance(
                    job_id=job_id,
                    sop_instance_uid=f"1.2.3.4.{n}",
                    sop_class_uid=CT,
                    study_instance_uid="1.2.3",
                    series_instance_uid="1.2.3.4",
                    transfer_syntax=str(ExplicitVRLittleEndian),
                    size=100,
                    file_path=f"1.2.3/1.2.3.4/1.2.3.4.{n}.dcm",
                    calling_ae="PACS",
                    matched_by=MatchedBy.ORIGINATOR,
                )
            )


def test_a_forward_expects_what_its_source_holds(sessions: sessionmaker[Session]) -> None:
    source = add_job(sessions, state=JobState.COMPLETED)
    _hold(sessions, source, 3)
    sent = Sent()
    forward = submit_forward(sessions, ForwardRequest(source, "pacs"), sent)
    with sessions() as session:
        job = session.get_one(Job, forward)
        expected = session.scalars(
            select(ExpectedInstance.sop_instance_uid).where(ExpectedInstance.job_id == forward)
        ).all()
        assert job.kind is JobKind.FORWARD and job.state is JobState.QUEUED
        assert job.expected_count == 3 and job.destination == "PACS"
    assert sorted(expected) == [f"1.2.3.4.{n}" for n in range(3)]
    assert [args for _, args, _ in sent.messages] == [[forward]]


@pytest.mark.parametrize(
    ("state", "kind", "held", "rule"),
    [
        (JobState.RUNNING, JobKind.MOVE, 1, "once it is completed or partial"),
        (JobState.COMPLETED, JobKind.FIND, 0, "only what a move or get brought"),
        (JobState.COMPLETED, JobKind.MOVE, 0, "holds no instance"),
    ],
)
def test_a_forward_of_nothing_is_refused(
    sessions: sessionmaker[Session], state: JobState, kind: JobKind, held: int, rule: str
) -> None:
    source = add_job(sessions, kind, state=state)
    _hold(sessions, source, held)
    with sessions() as session, pytest.raises(NotForwardable, match=rule):
        new_forward(session, ForwardRequest(source, "pacs"))


def test_forward_is_not_a_kind_to_submit(sessions: sessionmaker[Session]) -> None:
    add_job(sessions)
    request = JobRequest(JobKind.FORWARD, "pacs", Level.STUDY, keys={"StudyInstanceUID": "1.2"})
    with pytest.raises(FieldError, match="forward"):
        submit(sessions, request, Sent(), SubmitRules(default_destination="QRFARMSCP"))


def test_pseudonymising_gets_a_seed_that_stays(sessions: sessionmaker[Session]) -> None:
    add_job(sessions)
    with sessions() as session, session.begin():
        row = set_options(session, "pacs", pseudonymise=True)
        assert options_document(row) == {
            "via_farm": False,
            "transcode": False,
            "pseudonymise": True,
        }
    with sessions() as session, session.begin():
        seed = session.scalars(select(ForwardOptions.pseudonym_seed)).one()
        set_options(session, "pacs", pseudonymise=False)
        set_options(session, "pacs", pseudonymise=True, transcode=True)
    with sessions() as session:
        assert session.scalars(select(ForwardOptions.pseudonym_seed)).one() == seed
    assert seed and len(seed) == 64


def test_contexts_from_what_is_held() -> None:
    held = [Held(CT, str(ExplicitVRLittleEndian)), Held(CT, str(RLELossless))]
    plain = held_contexts(held, with_fallback=False)
    assert [(str(c.abstract_syntax), [str(t) for t in c.transfer_syntax]) for c in plain] == [
        ("1.2.840.10008.1.1", [str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)]),
        (CT, [str(ExplicitVRLittleEndian)]),
        (CT, [str(RLELossless)]),
    ]
    converting = held_contexts(held, with_fallback=True)
    assert [str(t) for t in converting[-1].transfer_syntax] == [
        str(ExplicitVRLittleEndian),
        str(ImplicitVRLittleEndian),
    ]
    many = [Held(f"1.2.840.10008.5.1.4.1.1.{n}", str(ExplicitVRLittleEndian)) for n in range(128)]
    with pytest.raises(PresentationContextError, match="at most 128"):
        held_contexts(many, with_fallback=False)
