"""What the storage SCP refuses, with which status, and that nothing recorded is lost."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import func, select

from qrfarm.dicom import Connection, Node, Operation, qr_contexts
from qrfarm.errors import AssociationRejected
from qrfarm.models import OrphanInstance
from qrfarm.sandbox.synthetic import Corpus
from qrfarm.scp import StorageScp
from qrfarm.storage import InstanceStorage
from tests.conftest import QRFARM_SCP_AE
from tests.peers.dcmtk import echoscu
from tests.postgres_cluster import OwnPostgres

from .conftest import Db
from .senders import encoded, send_raw, store_association

SUCCESS, OUT_OF_RESOURCES, DOES_NOT_MATCH, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xA900, 0xC000


def orphan_count(db: Db) -> int:
    with db.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(OrphanInstance)) or 0)


def test_unknown_calling_ae_is_rejected_with_the_reason(scp: StorageScp) -> None:
    with pytest.raises(AssociationRejected) as info:
        Connection.open(
            Node(QRFARM_SCP_AE, "127.0.0.1", scp.port),
            qr_contexts([Operation.ECHO]),
            calling_ae="STRANGER",
        )
    assert info.value.reason == "Calling AE title not recognised"
    run = echoscu("127.0.0.1", scp.port, QRFARM_SCP_AE, calling_ae="STRANGER")
    assert run.returncode != 0 and "Calling AE Title Not Recognized" in run.stderr


def test_known_calling_ae_gets_an_echo(scp: StorageScp) -> None:
    node = Node(QRFARM_SCP_AE, "127.0.0.1", scp.port)
    with Connection.open(node, qr_contexts([Operation.ECHO]), calling_ae="STORESCU") as conn:
        assert conn.echo().status == SUCCESS


def test_bad_data_sets_get_failure_statuses_and_leave_nothing(
    db: Db, scp: StorageScp, storage_root: Path, corpus: Corpus
) -> None:
    good = dcmread(corpus.instances[0].path)
    sop_class, sop_uid = str(good.SOPClassUID), str(good.SOPInstanceUID)
    escaping = dcmread(corpus.instances[1].path)
    escaping.StudyInstanceUID = "../../../../tmp/qrfarm-escape"
    mismatched = dcmread(corpus.instances[2].path)
    with store_association(scp.port, [sop_class]) as assoc:
        assert send_raw(assoc, sop_class, sop_uid, encoded(good)) == SUCCESS
        # Cut short inside the pixel data.
        cut = dcmread(corpus.instances[3].path)
        raw_cut = encoded(cut)[:-200]
        assert send_raw(assoc, sop_class, str(cut.SOPInstanceUID), raw_cut) == CANNOT_UNDERSTAND
        assert send_raw(assoc, sop_class, "1.2.3", b"\x08\x00garbage") == CANNOT_UNDERSTAND
        assert send_raw(assoc, sop_class, str(escaping.SOPInstanceUID), encoded(escaping)) == (
            CANNOT_UNDERSTAND
        )
        # The request names another instance than the data set holds.
        assert send_raw(assoc, sop_class, "1.2.3.4.5", encoded(mismatched)) == DOES_NOT_MATCH
    assert orphan_count(db) == 1
    assert [p.name for p in storage_root.rglob("*.dcm")] == [f"{sop_uid}.dcm"]
    assert not list(storage_root.rglob("*.part"))
    assert not Path("/tmp/qrfarm-escape").exists()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs: filled by a few instances."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs for the full-disk test: {done.stderr}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_out_of_resources_and_earlier_instances_stay(
    db: Db, small_disk: Path, corpus: Corpus
) -> None:
    scp = StorageScp(db.sessions, InstanceStorage(small_disk), ae_title=QRFARM_SCP_AE, port=0)
    scp.start()
    statuses: list[int] = []
    try:
        # The large study's images are about 33 kB: a few hundred fill 2 MB.
        instances = corpus.studies()[corpus.large_study_uid]
        with store_association(scp.port, [instances[0].sop_class_uid]) as assoc:
            for instance in instances:
                ds = dcmread(instance.path)
                statuses.append(
                    send_raw(assoc, instance.sop_class_uid, instance.sop_uid, encoded(ds))
                )
                if statuses[-1] != SUCCESS:
                    break
    finally:
        scp.stop()
    assert statuses[-1] == OUT_OF_RESOURCES
    stored = statuses.count(SUCCESS)
    assert stored > 10
    assert orphan_count(db) == stored
    with db.sessions() as session:
        for row in session.scalars(select(OrphanInstance)):
            path = small_disk / row.file_path
            assert path.stat().st_size == row.size
            dcmread(path)  # whole and readable
    assert not list(small_disk.rglob("*.part"))


def test_stopped_postgresql_is_out_of_resources_and_nothing_is_lost(
    own_postgres: OwnPostgres, tmp_path: Path, corpus: Corpus
) -> None:
    from qrfarm.jobs.nodes import upsert_node
    from qrfarm.models import make_engine, session_factory, upgrade

    from .conftest import NODES

    upgrade(own_postgres.url)
    # As `qrfarm scp` makes it: no ping before use; a dead connection is retried once.
    engine = make_engine(own_postgres.url, pool_pre_ping=False)
    sessions = session_factory(engine)
    with sessions() as session, session.begin():
        for spec in NODES:
            upsert_node(session, spec)
    scp = StorageScp(
        sessions, InstanceStorage(tmp_path / "storage"), ae_title=QRFARM_SCP_AE, port=0
    )
    scp.start()
    # Warm the known-nodes cache, so admission needs no query while the database is down.
    scp.context.known_nodes.for_calling_ae("STORESCU")
    first, second, third = corpus.instances[:3]
    try:
        with store_association(scp.port, [i.sop_class_uid for i in corpus.instances[:3]]) as a:
            assert (
                send_raw(a, first.sop_class_uid, first.sop_uid, encoded(dcmread(first.path)))
                == SUCCESS
            )
            own_postgres.stop()
            assert (
                send_raw(a, second.sop_class_uid, second.sop_uid, encoded(dcmread(second.path)))
                == OUT_OF_RESOURCES
            )
            own_postgres.start()
            assert (
                send_raw(a, third.sop_class_uid, third.sop_uid, encoded(dcmread(third.path)))
                == SUCCESS
            )
            # The PACS sends the refused one again: now it counts.
            assert (
                send_raw(a, second.sop_class_uid, second.sop_uid, encoded(dcmread(second.path)))
                == SUCCESS
            )
    finally:
        scp.stop()
    # The database restarted: this test's own pooled connections died with it
    # (the SCP records through connections of its own).
    engine.dispose()
    with sessions() as session:
        uids = set(session.scalars(select(OrphanInstance.sop_instance_uid)))
    engine.dispose()
    assert uids == {first.sop_uid, second.sop_uid, third.sop_uid}
