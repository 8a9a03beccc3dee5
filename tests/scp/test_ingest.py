"""The storage SCP receives from DCMTK storescu: every instance on disk, byte-equal, once."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import func, select

from qrfarm.models import OrphanInstance
from qrfarm.sandbox.synthetic import Corpus
from qrfarm.scp import StorageScp
from tests.peers import dataset_bytes, peer_env, require_peer
from tests.peers.dcmtk import STORESCU

from .conftest import Db


def storescu(port: int, files: list[Path], calling_ae: str = "STORESCU") -> None:
    require_peer(STORESCU)
    subprocess.run(
        [
            STORESCU,
            "-aet",
            calling_ae,
            "-aec",
            "QRFARMSCP",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        check=True,
        capture_output=True,
        env=peer_env(),
        timeout=300,
    )


def assert_stored_once(db: Db, storage_root: Path, corpus: Corpus, files: list[Path]) -> None:
    by_uid = {i.path: i for i in corpus.instances}
    with db.sessions() as session:
        rows = session.scalars(select(OrphanInstance)).all()
        assert session.scalar(select(func.count()).select_from(OrphanInstance)) == len(files)
    assert {r.sop_instance_uid for r in rows} == {by_uid[f].sop_uid for f in files}
    for row in rows:
        instance = corpus.by_sop_uid()[row.sop_instance_uid]
        stored = storage_root / row.file_path
        assert stored == storage_root / instance.study_uid / instance.series_uid / (
            f"{instance.sop_uid}.dcm"
        )
        assert dataset_bytes(stored.read_bytes()) == dataset_bytes(instance.path.read_bytes())
        assert row.size == stored.stat().st_size
        assert row.calling_ae == "STORESCU" and row.repeat_count == 0
    assert not list(storage_root.rglob("*.part"))


def test_a_few_hundred_instances_from_storescu(
    db: Db, scp: StorageScp, storage_root: Path, corpus: Corpus
) -> None:
    files = [i.path for i in corpus.studies()[corpus.large_study_uid]]
    storescu(scp.port, files)
    assert_stored_once(db, storage_root, corpus, files)


def test_eight_storescu_at_once(
    db: Db, scp: StorageScp, storage_root: Path, corpus: Corpus
) -> None:
    files = [i.path for i in corpus.instances]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: storescu(scp.port, files[n::8]), range(8)))
    assert_stored_once(db, storage_root, corpus, files)


def test_a_repeat_is_counted_not_stored_twice(
    db: Db, scp: StorageScp, storage_root: Path, corpus: Corpus
) -> None:
    files = [i.path for i in corpus.instances[:20]]
    storescu(scp.port, files)
    before = {p: p.stat().st_mtime_ns for p in storage_root.rglob("*.dcm")}
    storescu(scp.port, files)
    with db.sessions() as session:
        rows = session.scalars(select(OrphanInstance)).all()
    assert len(rows) == 20
    assert all(r.repeat_count == 1 and not r.repeat_differs for r in rows)
    assert {p: p.stat().st_mtime_ns for p in storage_root.rglob("*.dcm")} == before


def test_a_store_ae_title_listed_for_a_node_is_admitted(
    db: Db, scp: StorageScp, storage_root: Path, corpus: Corpus
) -> None:
    storescu(scp.port, [corpus.instances[0].path], calling_ae="STORESCU2")
    with db.sessions() as session:
        row = session.scalars(select(OrphanInstance)).one()
    assert row.calling_ae == "STORESCU2"
