"""Senders that lie: an originator is a claim, not a proof, and bytes never change hands.

A known PACS (or anyone presenting its AE title) may name a move's Move
Originator Message ID in a C-STORE of an instance that move never asked
for; it may store other bytes under a UID a move brings. Neither may change
what a job has recorded.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from sqlalchemy import select, update

from qrfarm.dicom import Level, Root, build_retrieve_identifier
from qrfarm.jobs.reconcile import finalize
from qrfarm.jobs.states import transition
from qrfarm.models import (
    Attempt,
    ExpectedInstance,
    Job,
    JobState,
    MoveMessageId,
    OrphanInstance,
    ReceivedInstance,
    utcnow,
)
from qrfarm.sandbox.synthetic import Corpus, SyntheticInstance
from qrfarm.scp import StorageScp
from tests.conftest import CALLING_AE, QRFARM_SCP_AE

from .conftest import Db


def store(
    port: int,
    ds: Dataset,
    calling_ae: str,
    originator: tuple[str, int] | None = None,
) -> int:
    """One C-STORE of ``ds`` from ``calling_ae``, naming ``originator`` if given."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title=QRFARM_SCP_AE)
    assert assoc.is_established
    try:
        if originator is None:
            status = assoc.send_c_store(ds)
        else:
            status = assoc.send_c_store(
                ds, originator_aet=originator[0], originator_id=originator[1]
            )
    finally:
        assoc.release()
    return int(status.Status)


def two_studies(corpus: Corpus) -> tuple[list[SyntheticInstance], list[SyntheticInstance]]:
    studies = sorted(corpus.studies().values(), key=len)
    return studies[-1], studies[0]


def study_move(db: Db, study_uid: str, node: str = "orthanc") -> tuple[Job, tuple[str, int]]:
    job = db.new_move(
        node, build_retrieve_identifier(Root.STUDY, Level.STUDY, {"StudyInstanceUID": study_uid})
    )
    message_id = job.attempts[0].message_id
    assert message_id is not None
    return job, (CALLING_AE, message_id)


def job_row(db: Db, job_id: int) -> Job:
    with db.sessions() as session:
        return session.get_one(Job, job_id)


def orphans(db: Db) -> list[OrphanInstance]:
    with db.sessions() as session:
        return list(session.scalars(select(OrphanInstance)))


def received(db: Db, job_id: int) -> list[ReceivedInstance]:
    with db.sessions() as session:
        return list(
            session.scalars(select(ReceivedInstance).where(ReceivedInstance.job_id == job_id))
        )


def test_a_foreign_instance_naming_a_running_move_is_an_orphan_that_says_why(
    db: Db, scp: StorageScp, corpus: Corpus
) -> None:
    asked, foreign = two_studies(corpus)
    job, originator = study_move(db, asked[0].study_uid)
    assert store(scp.port, dcmread(foreign[0].path), "ORTHANC", originator) == 0x0000
    assert store(scp.port, dcmread(asked[0].path), "ORTHANC", originator) == 0x0000

    assert [r.sop_instance_uid for r in received(db, job.id)] == [asked[0].sop_uid]
    assert job_row(db, job.id).recorded_count == 1
    (orphan,) = orphans(db)
    assert orphan.sop_instance_uid == foreign[0].sop_uid
    assert orphan.claimed_job_id == job.id
    assert orphan.refusal is not None and "Study Instance UID" in orphan.refusal


def test_an_instance_outside_a_known_expected_list_does_not_count(
    db: Db, scp: StorageScp, corpus: Corpus
) -> None:
    asked, _ = two_studies(corpus)
    job, originator = study_move(db, asked[0].study_uid)
    with db.sessions() as session, session.begin():
        session.add(ExpectedInstance(job_id=job.id, sop_instance_uid=asked[0].sop_uid))
        session.get_one(Job, job.id).expected_count = 1
    assert store(scp.port, dcmread(asked[1].path), "ORTHANC", originator) == 0x0000

    assert received(db, job.id) == []
    (orphan,) = orphans(db)
    assert orphan.claimed_job_id == job.id
    assert orphan.refusal is not None and "expects" in orphan.refusal


def test_a_foreign_instance_never_reopens_a_completed_job(
    db: Db, scp: StorageScp, corpus: Corpus
) -> None:
    asked, foreign = two_studies(corpus)
    job, originator = study_move(db, asked[0].study_uid)
    assert store(scp.port, dcmread(asked[0].path), "ORTHANC", originator) == 0x0000
    with db.sessions() as session, session.begin():
        row = session.get_one(Job, job.id)
        row.state = JobState.RECONCILING
        finalize(session, row)
        assert row.state is JobState.COMPLETED
        session.execute(update(MoveMessageId).values(released_at=utcnow()))

    assert store(scp.port, dcmread(foreign[1].path), "ORTHANC", originator) == 0x0000
    after = job_row(db, job.id)
    assert after.state is JobState.COMPLETED and after.recorded_count == 1
    assert [o.claimed_job_id for o in orphans(db)] == [job.id]


def test_a_partial_job_two_days_old_stays_partial(db: Db, scp: StorageScp, corpus: Corpus) -> None:
    """Its worker died mid-move, so its Message ID was never released; even
    an instance of its own study, two days on, is not a late arrival."""
    asked, _ = two_studies(corpus)
    job, originator = study_move(db, asked[0].study_uid)
    two_days_ago = utcnow() - dt.timedelta(days=2)
    with db.sessions() as session, session.begin():
        session.add(ExpectedInstance(job_id=job.id, sop_instance_uid=asked[0].sop_uid))
        row = session.get_one(Job, job.id)
        row.expected_count = 1
        row.state = JobState.PARTIAL
        row.ended_at = two_days_ago
        row.missing_uids = [asked[0].sop_uid]
    assert store(scp.port, dcmread(asked[0].path), "ORTHANC", originator) == 0x0000

    after = job_row(db, job.id)
    assert after.state is JobState.PARTIAL and after.recorded_count == 0
    assert [o.sop_instance_uid for o in orphans(db)] == [asked[0].sop_uid]


def test_a_planted_instance_never_stands_in_for_the_one_a_move_brought(
    db: Db, scp: StorageScp, storage_root: Path, corpus: Corpus
) -> None:
    asked, _ = two_studies(corpus)
    real = dcmread(asked[0].path)
    planted = dcmread(asked[0].path)
    planted.InstitutionName = "PLANTED"
    # Another known AE stores its own bytes under the UID first: an orphan.
    assert store(scp.port, planted, "STORESCU") == 0x0000
    job, originator = study_move(db, asked[0].study_uid)
    assert store(scp.port, real, "ORTHANC", originator) == 0x0000

    (row,) = received(db, job.id)
    held = dcmread(storage_root / row.file_path)
    assert held.get("InstitutionName") == real.get("InstitutionName")
    assert row.repeat_differs  # flagged: other bytes are held under this UID
    (orphan,) = orphans(db)
    assert dcmread(storage_root / orphan.file_path).InstitutionName == "PLANTED"

    # Nor can a differing copy sent afterwards, within the move, replace it.
    assert store(scp.port, planted, "ORTHANC", originator) == 0x0000
    (again,) = received(db, job.id)
    assert again.file_path == row.file_path and again.repeat_count == 1
    assert dcmread(storage_root / again.file_path).get("InstitutionName") == real.get(
        "InstitutionName"
    )


def test_the_same_bytes_again_for_a_second_job_are_not_flagged(
    db: Db, scp: StorageScp, corpus: Corpus
) -> None:
    asked, _ = two_studies(corpus)
    first, first_originator = study_move(db, asked[0].study_uid)
    second, second_originator = study_move(db, asked[0].study_uid)
    ds = dcmread(asked[0].path)
    assert store(scp.port, ds, "ORTHANC", first_originator) == 0x0000
    assert store(scp.port, ds, "ORTHANC", second_originator) == 0x0000
    (a,), (b,) = received(db, first.id), received(db, second.id)
    assert a.file_path == b.file_path
    assert not a.repeat_differs and not b.repeat_differs


def test_the_sweeper_releases_the_message_ids_of_attempts_whose_lease_expired(
    db: Db, corpus: Corpus
) -> None:
    from qrfarm.jobs.moves import release_lost_message_ids

    asked, _ = two_studies(corpus)
    lost, _ = study_move(db, asked[0].study_uid)
    alive, _ = study_move(db, asked[0].study_uid)
    with db.sessions() as session, session.begin():
        session.get_one(Job, lost.id).lease_expires_at = utcnow() - dt.timedelta(seconds=5)
        session.get_one(Job, alive.id).lease_expires_at = utcnow() + dt.timedelta(seconds=60)
        assert release_lost_message_ids(session) == 1
    with db.sessions() as session:
        released = dict(
            session.execute(
                select(Attempt.job_id, MoveMessageId.released_at).join(
                    Attempt, Attempt.id == MoveMessageId.attempt_id
                )
            ).all()
        )
    assert released[lost.id] is not None and released[alive.id] is None


def test_an_instance_for_a_move_just_cancelled_is_an_orphan(
    db: Db, scp: StorageScp, corpus: Corpus
) -> None:
    """A PACS that goes on sending after the move was cancelled (Orthanc ignores
    C-CANCEL): once the move has ended, what it sends is not counted for it,
    whatever the SCP read of the move a moment before."""
    asked, _ = two_studies(corpus)
    job, originator = study_move(db, asked[0].study_uid)
    assert store(scp.port, dcmread(asked[0].path), "ORTHANC", originator) == 0x0000
    with db.sessions() as session, session.begin():
        transition(session.get_one(Job, job.id), JobState.CANCELLED, error="cancelled")
    time.sleep(0.3)  # well within the seconds a move's other facts are cached
    assert store(scp.port, dcmread(asked[1].path), "ORTHANC", originator) == 0x0000

    assert [r.sop_instance_uid for r in received(db, job.id)] == [asked[0].sop_uid]
    assert job_row(db, job.id).recorded_count == 1
    (orphan,) = orphans(db)
    assert orphan.claimed_job_id == job.id
    assert orphan.refusal is not None and "cancelled" in orphan.refusal


def test_an_instance_naming_a_move_to_another_node_is_an_orphan(
    db: Db, scp: StorageScp, corpus: Corpus
) -> None:
    """A move whose destination is another node sends nothing here: an
    instance that names its Message ID (misrouted, or forged) is not counted
    for it (its proof of arrival is at that node)."""
    asked, _ = two_studies(corpus)
    job, originator = study_move(db, asked[0].study_uid)
    with db.sessions() as session, session.begin():
        session.get_one(Job, job.id).destination_node_id = db.node_id("sandbox")
    assert store(scp.port, dcmread(asked[0].path), "ORTHANC", originator) == 0x0000

    assert received(db, job.id) == []
    assert job_row(db, job.id).recorded_count == 0
    (orphan,) = orphans(db)
    assert orphan.claimed_job_id == job.id
    assert orphan.refusal is not None and "another node" in orphan.refusal
