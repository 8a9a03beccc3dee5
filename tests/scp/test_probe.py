"""The farm's own probe: `qrfarm probe scp` gets the SCP's C-ECHO, and the
probe's AE title may store nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pydicom import dcmread
from pynetdicom.association import Association
from sqlalchemy import func, select

from qrfarm.models import OrphanInstance, ReceivedInstance
from qrfarm.sandbox.synthetic import Corpus
from qrfarm.scp import StorageScp
from qrfarm.scp.gate import MAX_PROBES
from qrfarm.storage import InstanceStorage
from tests.conftest import QRFARM_SCP_AE

from .conftest import Db
from .senders import association_answer, encoded, send_raw, store_association

PROBE_AE = "QRFARMPROBE"
REFUSED_NOT_AUTHORIZED = 0x0124
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)  # A-ASSOCIATE-RJ, PS3.8 9.3.4


def probe(port: int, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("QRFARM_")},
        "QRFARM_SCP_PORT": str(port),
        "QRFARM_SCP_AE_TITLE": QRFARM_SCP_AE,
        "QRFARM_CONFIG": str(tmp_path / "none.toml"),
    }
    return subprocess.run(
        [sys.executable, "-m", "qrfarm.cli", "probe", "scp"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_probe_gets_a_c_echo_and_may_store_nothing(
    db: Db, tmp_path: Path, corpus: Corpus
) -> None:
    scp = StorageScp(
        db.sessions,
        InstanceStorage(tmp_path / "storage"),
        ae_title=QRFARM_SCP_AE,
        port=0,
        probe_ae_title=PROBE_AE,
    )
    port = scp.start()
    try:
        answered = probe(port, tmp_path)
        assert answered.returncode == 0, answered.stdout + answered.stderr
        assert "C-ECHO" in answered.stdout
        instance = corpus.instances[0]
        with store_association(port, [instance.sop_class_uid], calling_ae=PROBE_AE) as assoc:
            status = send_raw(
                assoc, instance.sop_class_uid, instance.sop_uid, encoded(dcmread(instance.path))
            )
        assert status == REFUSED_NOT_AUTHORIZED
    finally:
        scp.stop(drain_timeout=5)
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(ReceivedInstance)) == 0
        assert session.scalar(select(func.count()).select_from(OrphanInstance)) == 0
    assert not list((tmp_path / "storage").rglob("*.dcm"))
    stopped = probe(port, tmp_path)
    assert stopped.returncode == 1 and "not ready" in stopped.stderr


def test_probes_hold_no_slot_a_pacs_needs(db: Db, tmp_path: Path, corpus: Corpus) -> None:
    """Anyone can call with the probe's AE title: its associations are capped
    apart (MAX_PROBES), so that held open they never lock a PACS out."""
    scp = StorageScp(
        db.sessions,
        InstanceStorage(tmp_path / "storage"),
        ae_title=QRFARM_SCP_AE,
        port=0,
        probe_ae_title=PROBE_AE,
        max_associations=MAX_PROBES + 1,
    )
    port = scp.start()
    held: list[Association] = []
    try:
        for _ in range(MAX_PROBES):
            assert association_answer(port, PROBE_AE, held=held) is None
        assert association_answer(port, PROBE_AE) == LOCAL_LIMIT_EXCEEDED
        instance = corpus.instances[0]
        with store_association(port, [instance.sop_class_uid]) as assoc:
            status = send_raw(
                assoc, instance.sop_class_uid, instance.sop_uid, encoded(dcmread(instance.path))
            )
        assert status == 0x0000
    finally:
        for assoc in held:
            assoc.release()
        scp.stop(drain_timeout=5)
