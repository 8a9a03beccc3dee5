"""C-MOVEs into the storage SCP, correlated to their jobs.

Orthanc and dcmqrscp both copy the Move Originator AE Title and Message ID
into their C-STOREs: instances are matched by them, exactly. The sandbox
PACS (pynetdicom's Move SCP) puts its own AE title there instead: its
instances are matched by their UIDs against the running moves of that PACS.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import func, select

from qrfarm.dicom import (
    Connection,
    Level,
    Node,
    Operation,
    OperationResult,
    Root,
    build_retrieve_identifier,
    qr_contexts,
)
from qrfarm.models import Job, MatchedBy, OrphanInstance, ReceivedInstance
from qrfarm.sandbox.pacs import SandboxPacs
from qrfarm.sandbox.synthetic import Corpus
from qrfarm.scp import StorageScp
from tests.conftest import CALLING_AE, QRFARM_SCP_AE
from tests.dicom.helpers import node_of
from tests.peers import PacsPeer

from .conftest import Db


def move(node: Node, job: Job, destination: str = QRFARM_SCP_AE) -> OperationResult:
    from pydicom.dataset import Dataset

    identifier = Dataset.from_json(job.identifier)
    with Connection.open(node, qr_contexts([Operation.MOVE]), calling_ae=CALLING_AE) as conn:
        return conn.move(identifier, destination, message_id=job.attempts[0].message_id)


def received(db: Db, job_id: int) -> list[ReceivedInstance]:
    with db.sessions() as session:
        return list(
            session.scalars(select(ReceivedInstance).where(ReceivedInstance.job_id == job_id))
        )


def test_move_from_each_pacs_is_recorded_against_its_job_by_originator(
    db: Db, scp: StorageScp, pacs: PacsPeer, corpus: Corpus
) -> None:
    study_uid = corpus.large_study_uid
    expected = {i.sop_uid for i in corpus.studies()[study_uid]}
    job = db.new_move(
        pacs.name,
        build_retrieve_identifier(Root.STUDY, Level.STUDY, {"StudyInstanceUID": study_uid}),
    )
    result = move(node_of(pacs), job)
    assert result.ok, result.final.summary()
    rows = received(db, job.id)
    assert {r.sop_instance_uid for r in rows} == expected
    assert len(rows) == len(expected) == result.final.completed
    # Both PACS set the originator fields, with our AE title and the Message ID we chose.
    assert {(r.matched_by, r.move_originator_ae, r.move_originator_message_id) for r in rows} == {
        (MatchedBy.ORIGINATOR, CALLING_AE, job.attempts[0].message_id)
    }
    assert {r.calling_ae for r in rows} == {pacs.ae_title}
    with db.sessions() as session:
        assert session.get_one(Job, job.id).recorded_count == len(expected)
        assert session.scalar(select(func.count()).select_from(OrphanInstance)) == 0


def test_two_overlapping_moves_at_once_each_count_their_own(
    db: Db, scp: StorageScp, pacs: PacsPeer, corpus: Corpus
) -> None:
    study_uid = corpus.large_study_uid
    series_uid = next(s for s, i in corpus.series().items() if i[0].study_uid == study_uid)
    whole = db.new_move(
        pacs.name,
        build_retrieve_identifier(Root.STUDY, Level.STUDY, {"StudyInstanceUID": study_uid}),
    )
    part = db.new_move(
        pacs.name,
        build_retrieve_identifier(
            Root.STUDY,
            Level.SERIES,
            {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid},
        ),
    )
    assert whole.attempts[0].message_id != part.attempts[0].message_id
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda job: move(node_of(pacs), job), [whole, part]))
    assert all(r.ok for r in results)
    whole_rows, part_rows = received(db, whole.id), received(db, part.id)
    assert {r.sop_instance_uid for r in whole_rows} == {
        i.sop_uid for i in corpus.studies()[study_uid]
    }
    assert {r.sop_instance_uid for r in part_rows} == {
        i.sop_uid for i in corpus.series()[series_uid]
    }
    assert all(r.matched_by is MatchedBy.ORIGINATOR for r in whole_rows + part_rows)
    assert {r.move_originator_message_id for r in part_rows} == {part.attempts[0].message_id}


def test_a_pacs_with_a_wrong_originator_is_matched_by_uids(
    db: Db, scp: StorageScp, corpus: Corpus
) -> None:
    study_uid = corpus.large_study_uid
    study_files = [i.path for i in corpus.studies()[study_uid]]
    other = next(s for s in corpus.studies() if s != study_uid)
    files = study_files + [i.path for i in corpus.studies()[other]]
    sandbox = SandboxPacs(files, destinations={QRFARM_SCP_AE: ("127.0.0.1", scp.port)})
    port = sandbox.start()
    try:
        job = db.new_move(
            "sandbox",
            build_retrieve_identifier(Root.STUDY, Level.STUDY, {"StudyInstanceUID": study_uid}),
        )
        result = move(Node("SANDBOX", "127.0.0.1", port), job)
        # A move nobody asked for through a job: its instances are orphans.
        stray = build_retrieve_identifier(Root.STUDY, Level.STUDY, {"StudyInstanceUID": other})
        with Connection.open(
            Node("SANDBOX", "127.0.0.1", port), qr_contexts([Operation.MOVE])
        ) as c:
            assert c.move(stray, QRFARM_SCP_AE).ok
    finally:
        sandbox.stop()
    assert result.ok
    rows = received(db, job.id)
    assert {r.sop_instance_uid for r in rows} == {i.sop_uid for i in corpus.studies()[study_uid]}
    # pynetdicom's Move SCP names itself as the originator: not our move.
    assert {(r.matched_by, r.move_originator_ae) for r in rows} == {(MatchedBy.UIDS, "SANDBOX")}
    with db.sessions() as session:
        orphans = session.scalars(select(OrphanInstance)).all()
    assert {o.sop_instance_uid for o in orphans} == {i.sop_uid for i in corpus.studies()[other]}


def test_an_instance_of_no_running_move_is_an_orphan_never_dropped(
    db: Db, scp: StorageScp, storage_root: Path, corpus: Corpus
) -> None:
    from .test_ingest import storescu

    storescu(scp.port, [corpus.instances[0].path])
    with db.sessions() as session:
        orphan = session.scalars(select(OrphanInstance)).one()
        assert session.scalar(select(func.count()).select_from(ReceivedInstance)) == 0
    assert (storage_root / orphan.file_path).is_file()
