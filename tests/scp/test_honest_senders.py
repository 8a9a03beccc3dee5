"""Honest PACS are not refused: the check that stops foreign instances keeps
every instance a real PACS sends for what it was asked, and a failed record
removes only a file no row points to."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread

from qrfarm.dicom import Level, Root, build_retrieve_identifier
from qrfarm.jobs.ingest import discard_unrecorded
from qrfarm.jobs.reconcile import finalize
from qrfarm.models import ExpectedInstance, Job, JobState, MatchedBy, ReceivedInstance
from qrfarm.sandbox.synthetic import Corpus
from qrfarm.scp import StorageScp
from qrfarm.storage import InstanceStorage
from tests.conftest import CALLING_AE

from .conftest import Db
from .test_hostile_senders import job_row, orphans, received, store, study_move, two_studies


def _expect(db: Db, job_id: int, uids: list[str]) -> None:
    with db.sessions() as session, session.begin():
        session.add_all(ExpectedInstance(job_id=job_id, sop_instance_uid=u) for u in uids)
        session.get_one(Job, job_id).expected_count = len(uids)


# -- legitimate instances made orphans ------------------------------------------


def test_an_empty_expected_list_does_not_orphan_every_instance_the_move_brings(
    db: Db, scp: StorageScp, corpus: Corpus
) -> None:
    """A PACS that answers the IMAGE-level find with success and no match (IMAGE
    level not supported for that caller, or not yet indexed) gives an empty
    expected list, which tells nothing: the identifier decides, and the move's
    instances count."""
    asked, _ = two_studies(corpus)
    job, originator = study_move(db, asked[0].study_uid)
    _expect(db, job.id, [])
    for instance in asked[:3]:
        assert store(scp.port, dcmread(instance.path), "ORTHANC", originator) == 0x0000
    with db.sessions() as session, session.begin():
        row = session.get_one(Job, job.id)
        row.state = JobState.RECONCILING
        row.reported_completed = 3
        finalize(session, row)
    after = job_row(db, job.id)
    assert after.recorded_count == 3, [o.refusal for o in orphans(db)]
    assert after.state is JobState.COMPLETED, after.error


def test_an_instance_added_to_the_study_after_the_find_is_not_a_wrongful_orphan(
    db: Db, scp: StorageScp, corpus: Corpus
) -> None:
    """A study still being archived at the PACS: the move sends one more instance
    than the find listed. Every expected instance is held, so the job is
    completed on content, though the PACS counted one more."""
    asked, _ = two_studies(corpus)
    job, originator = study_move(db, asked[0].study_uid)
    _expect(db, job.id, [asked[0].sop_uid, asked[1].sop_uid])
    for instance in asked[:3]:
        assert store(scp.port, dcmread(instance.path), "ORTHANC", originator) == 0x0000
    with db.sessions() as session, session.begin():
        row = session.get_one(Job, job.id)
        row.state = JobState.RECONCILING
        row.reported_completed = 3
        finalize(session, row)
    after = job_row(db, job.id)
    assert after.state is JobState.COMPLETED, (after.error, [o.refusal for o in orphans(db)])


def _patient_root_study_move(
    db: Db, patient_id: str, study_uid: str
) -> tuple[Job, tuple[str, int]]:
    identifier = build_retrieve_identifier(
        Root.PATIENT, Level.STUDY, {"PatientID": patient_id, "StudyInstanceUID": study_uid}
    )
    job = db.new_move("orthanc", identifier)
    message_id = job.attempts[0].message_id
    assert message_id is not None
    return job, (CALLING_AE, message_id)


def test_a_patient_root_study_move_whose_pacs_coerces_the_patient_id_keeps_its_instances(
    db: Db, scp: StorageScp, corpus: Corpus
) -> None:
    """Patient root, STUDY level: the Patient ID is a key above the level. A PACS
    that coerces it on the way out (to an enterprise ID; with spaces that are
    not significant in LO) still sends the very study asked for, and its
    instances count."""
    asked, _ = two_studies(corpus)
    job, originator = _patient_root_study_move(db, asked[0].patient_id, asked[0].study_uid)
    coerced = dcmread(asked[0].path)
    coerced.PatientID = f"ENT-{asked[0].patient_id}"
    padded = dcmread(asked[1].path)
    padded.PatientID = f" {asked[1].patient_id}"  # LO: leading spaces are not significant
    assert store(scp.port, coerced, "ORTHANC", originator) == 0x0000
    assert store(scp.port, padded, "ORTHANC", originator) == 0x0000
    assert len(received(db, job.id)) == 2, [o.refusal for o in orphans(db)]


# -- bytes and rows ----------------------------------------------------------------


def test_a_failed_record_never_removes_a_file_another_row_points_to(
    db: Db, storage_root: Path, corpus: Corpus
) -> None:
    """Two associations receive the same bytes under one UID at once: A writes
    the file, B finds the same bytes in place and commits its row; when A's
    record then fails, the file B's row points to stays. A file no row points
    to is removed."""
    storage = InstanceStorage(storage_root, fsync=False)
    instance = corpus.instances[0]
    data = instance.path.read_bytes()
    uids = (instance.study_uid, instance.series_uid, instance.sop_uid)
    first = storage.store(*uids, data)
    second = storage.store(*uids, data)
    assert first.created and not second.created and first.path == second.path
    relative = str(second.path.relative_to(storage_root))
    job, _ = study_move(db, instance.study_uid)
    with db.sessions() as session, session.begin():
        session.add(
            ReceivedInstance(
                job_id=job.id,
                matched_by=MatchedBy.ORIGINATOR,
                sop_instance_uid=instance.sop_uid,
                sop_class_uid=instance.sop_class_uid,
                study_instance_uid=instance.study_uid,
                series_instance_uid=instance.series_uid,
                transfer_syntax="1.2.840.10008.1.2.1",
                size=len(data),
                file_path=relative,
                calling_ae="ORTHANC",
            )
        )
    discard_unrecorded(db.engine, storage, first, instance.study_uid, relative)
    assert second.path.exists(), "a committed row points to a file that is gone"

    other = corpus.instances[1]
    lone = storage.store(other.study_uid, other.series_uid, other.sop_uid, other.path.read_bytes())
    discard_unrecorded(
        db.engine, storage, lone, other.study_uid, str(lone.path.relative_to(storage_root))
    )
    assert not lone.path.exists()
