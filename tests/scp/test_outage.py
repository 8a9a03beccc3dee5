"""The storage SCP while its database cannot be reached: closed to strangers,
out of resources for known PACS, and nothing on disk that has no row.

The database stopped is the test's own PostgreSQL cluster, never the machine's.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select

from qrfarm.jobs.nodes import upsert_node
from qrfarm.models import OrphanInstance, ReceivedInstance, make_engine, session_factory, upgrade
from qrfarm.sandbox.synthetic import Corpus
from qrfarm.scp import StorageScp
from qrfarm.scp.known_nodes import REFRESH_S
from qrfarm.storage import InstanceStorage
from tests.conftest import QRFARM_SCP_AE
from tests.peers import peer_env, require_peer
from tests.peers.dcmtk import STORESCU
from tests.postgres_cluster import OwnPostgres

from .conftest import NODES
from .senders import association_answer, encoded, send_raw, store_association

SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700
REJECTED_TRANSIENT = 0x02
OUTAGE_S = 30.0


def storescu(port: int, files: list[Path], calling_ae: str) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu, verbose: its log names each response's status."""
    return subprocess.run(
        [
            require_peer(STORESCU),
            *("-v", "-aet", calling_ae, "-aec", QRFARM_SCP_AE),
            *("127.0.0.1", str(port), *map(str, files)),
        ],
        capture_output=True,
        text=True,
        env=peer_env(),
        timeout=120,
        check=False,
    )


def test_database_outage_admits_no_stranger_and_leaves_nothing_unrecorded(
    own_postgres: OwnPostgres, tmp_path: Path, corpus: Corpus
) -> None:
    upgrade(own_postgres.url)
    # As `qrfarm scp` makes it: no ping before use.
    engine = make_engine(own_postgres.url, pool_pre_ping=False)
    sessions = session_factory(engine)
    with sessions() as session, session.begin():
        for spec in NODES:
            upsert_node(session, spec)
    root = tmp_path / "storage"
    scp = StorageScp(sessions, InstanceStorage(root), ae_title=QRFARM_SCP_AE, port=0)
    scp.start()
    recorded, *during = corpus.instances[:4]
    try:
        with store_association(scp.port, [recorded.sop_class_uid]) as assoc:
            raw = encoded(dcmread(recorded.path))
            assert send_raw(assoc, recorded.sop_class_uid, recorded.sop_uid, raw) == SUCCESS
        (recorded_file,) = root.rglob("*.dcm")
        recorded_bytes = recorded_file.read_bytes()

        own_postgres.stop()
        back_at = time.monotonic() + OUTAGE_S
        # The known nodes were read before the outage; past their refresh
        # the SCP knows it cannot read them now.
        time.sleep(REFRESH_S + 1)

        # A stranger is turned away, for now (it may try again later).
        assert association_answer(scp.port, "STRANGER") == (REJECTED_TRANSIENT, 0x01, 0x03)
        stranger = storescu(scp.port, [during[0].path], "STRANGER")
        assert stranger.returncode != 0
        assert "Rejected Transient" in stranger.stderr + stranger.stdout

        # A known PACS is admitted on the last list it was read from, and told
        # to send again later: the instances recorded before as well as new ones.
        with store_association(scp.port, [i.sop_class_uid for i in (recorded, *during)]) as assoc:
            for instance in (recorded, *during):
                raw = encoded(dcmread(instance.path))
                status = send_raw(assoc, instance.sop_class_uid, instance.sop_uid, raw)
                assert status == OUT_OF_RESOURCES, instance.sop_uid
        # DCMTK's storescu too (it stops at the first refusal).
        dcmtk = storescu(scp.port, [during[1].path], "STORESCU2")
        assert "Received Store Response (Refused: OutOfResources)" in dcmtk.stderr, dcmtk.stderr

        # What was recorded before is untouched. A file made for a refused
        # instance stays only with its mark: the database could not say
        # whether a row vouches for it, so it is kept until it can (below,
        # once the database is back and the SCP stops).
        placed = {p for p in root.rglob("*.dcm") if ".incoming" not in p.parts}
        marks = [m.name for m in root.rglob("link.*")]
        for kept in placed - {recorded_file}:
            flat = str(kept.relative_to(root)).replace("/", "_")
            assert any(m.endswith(flat) for m in marks), kept
        assert recorded_file.read_bytes() == recorded_bytes
        assert not list(root.rglob("*.part"))
        time.sleep(max(0.0, back_at - time.monotonic()))
        own_postgres.start()
    finally:
        scp.stop()
    engine.dispose()
    with sessions() as session:
        paths = {
            *session.scalars(select(OrphanInstance.file_path)),
            *session.scalars(select(ReceivedInstance.file_path)),
        }
    engine.dispose()
    # Every file on disk has its row, and none is left marked.
    assert {str(p.relative_to(root)) for p in root.rglob("*.dcm")} <= paths
    assert not list(root.rglob("link.*"))
