"""Orphans a move claims, and a retry whose instances arrived meanwhile: the
record is reconciled on what is held, never on what a move did not bring."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.jobs import attempt_end
from qrfarm.jobs.leases import Claim, claim
from qrfarm.jobs.orphans import claim_orphans
from qrfarm.jobs.policy import JobPolicy
from qrfarm.jobs.reconcile import finalize
from qrfarm.jobs.worker_deps import RunnerDeps
from qrfarm.models import Job, JobState, NodeRecord, OrphanInstance, ReceivedInstance, utcnow

from .conftest import add_job, expect, load, receive

POLICY = JobPolicy(reconcile_grace_s=0.0)


def _deps(sessions: sessionmaker[Session]) -> RunnerDeps:
    return RunnerDeps(
        sessions=sessions,
        connections=None,  # type: ignore[arg-type]  # no DICOM on these paths
        get_recorder=None,  # type: ignore[arg-type]
        calling_ae="QRFARM",
        policy=POLICY,
    )


def _claim(sessions: sessionmaker[Session], job_id: int) -> Claim:
    with sessions() as session, session.begin():
        taken = claim(session, job_id, "review", POLICY)
        assert taken is not None
        return taken[0]


def _orphan(
    sessions: sessionmaker[Session],
    uid: str,
    *,
    calling_ae: str = "PACS",
    at: dt.datetime | None = None,
) -> None:
    with sessions() as session, session.begin():
        session.add(
            OrphanInstance(
                sop_instance_uid=uid,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                study_instance_uid="1.2.3",
                series_instance_uid="1.2.3.1",
                transfer_syntax="1.2.840.10008.1.2.1",
                size=100,
                file_path=f"x/{uid}.dcm",
                calling_ae=calling_ae,
                received_at=at or utcnow(),
            )
        )


def _rows(sessions: sessionmaker[Session], job_id: int) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).where(ReceivedInstance.job_id == job_id)) or 0


def test_a_retry_whose_failed_instance_arrived_meanwhile_ends_completed(
    sessions: sessionmaker[Session],
) -> None:
    """First attempt: the PACS reported 1 failed, naming it in the Failed SOP
    Instance UID List; a retry for it is queued. The instance arrives
    meanwhile (resent, or late): the retry moves nothing and the job ends
    completed, the failure resolved."""
    job_id = add_job(
        sessions,
        state=JobState.QUEUED,
        attempt_count=1,
        retry_uids=["1.2.3.1.2"],
        reported_completed=1,
        reported_failed=1,
        failed_uids=["1.2.3.1.2"],
    )
    expect(sessions, job_id, ["1.2.3.1.1", "1.2.3.1.2"])
    receive(sessions, job_id, ["1.2.3.1.1", "1.2.3.1.2"])
    taken = _claim(sessions, job_id)
    deps = _deps(sessions)
    assert attempt_end.retry_still_missing(deps, taken, ["1.2.3.1.2"]) == []
    attempt_end.reconcile_held(deps, taken)
    job = load(sessions, job_id)
    assert job.state is JobState.COMPLETED, (job.state, job.error, job.missing_uids)


def test_orphans_claimed_before_a_retry_are_counted(sessions: sessionmaker[Session]) -> None:
    """Orphans a retry claims count at once: the job's recorded count is its
    rows, before the retry and after."""
    job_id = add_job(
        sessions, state=JobState.QUEUED, attempt_count=1, retry_uids=["1.2.3.1.1", "1.2.3.1.2"]
    )
    expect(sessions, job_id, ["1.2.3.1.1", "1.2.3.1.2"])
    _orphan(sessions, "1.2.3.1.1")
    taken = _claim(sessions, job_id)
    missing = attempt_end.retry_still_missing(_deps(sessions), taken, ["1.2.3.1.1", "1.2.3.1.2"])
    assert missing == ["1.2.3.1.2"]
    assert load(sessions, job_id).recorded_count == _rows(sessions, job_id) == 1


def test_an_orphan_from_before_the_job_existed_is_not_taken_for_what_its_move_brought(
    sessions: sessionmaker[Session],
) -> None:
    """An instance pushed by the PACS a year ago (an orphan, old bytes) and asked
    for by a move today that did not bring it is not claimed: the job does not
    end completed on bytes its move never delivered."""
    job_id = add_job(sessions, state=JobState.RECONCILING, attempt_count=1, reported_completed=1)
    expect(sessions, job_id, ["1.2.3.1.1", "1.2.3.1.2"])
    receive(sessions, job_id, ["1.2.3.1.1"])
    _orphan(sessions, "1.2.3.1.2", at=utcnow() - dt.timedelta(days=365))
    with sessions() as session, session.begin():
        finalize(session, session.get_one(Job, job_id))
    job = load(sessions, job_id)
    assert job.state is not JobState.COMPLETED, "completed on a year-old orphan"


def test_two_store_ae_orphans_with_different_bytes_are_not_claimed_silently(
    sessions: sessionmaker[Session],
) -> None:
    """The node sends from two AE titles; each left an orphan of one UID with
    different bytes: the job gets the first, flagged as having two versions."""
    add_job(sessions)  # makes node PACS
    with sessions() as session, session.begin():
        node = session.scalar(select(NodeRecord).where(NodeRecord.name == "pacs"))
        assert node is not None
        node.store_ae_titles = ["PACS2"]
    job_id = add_job(sessions, state=JobState.RECONCILING, attempt_count=1)
    expect(sessions, job_id, ["1.2.3.1.1"])
    _orphan(sessions, "1.2.3.1.1", calling_ae="PACS")
    with sessions() as session, session.begin():
        session.add(
            OrphanInstance(
                sop_instance_uid="1.2.3.1.1",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                study_instance_uid="1.2.3",
                series_instance_uid="1.2.3.1",
                transfer_syntax="1.2.840.10008.1.2.1",
                size=100,
                file_path="x/1.2.3.1.1.deadbeef.dcm",
                calling_ae="PACS2",
                repeat_differs=True,
            )
        )
    with sessions() as session, session.begin():
        claim_orphans(session, session.get_one(Job, job_id), POLICY.late_window_s)
    with sessions() as session:
        (row,) = session.scalars(select(ReceivedInstance).where(ReceivedInstance.job_id == job_id))
        assert row.repeat_differs, f"claimed {row.file_path} with no flag"
