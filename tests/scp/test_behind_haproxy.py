"""The storage SCP behind HAProxy (Debian's, with deploy/haproxy's configuration)
admits a PACS by its real address, which the PROXY protocol v2 header carries.

HAProxy connects to the SCP from 127.0.0.2; the PACS (DCMTK storescu) connects
to HAProxy from 127.0.0.1, the address its node is registered at. Without the
header the SCP would see 127.0.0.2 for every PACS.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from qrfarm.models import OrphanInstance
from qrfarm.sandbox.synthetic import Corpus
from qrfarm.scp import StorageScp
from qrfarm.storage import InstanceStorage
from tests.conftest import QRFARM_SCP_AE
from tests.peers import peer_env, require_peer
from tests.peers.dcmtk import STORESCU
from tests.peers.ports import free_port, wait_for_port

from .conftest import Db
from .senders import association_answer
from .test_admission import CALLING_AE_NOT_RECOGNISED

HAPROXY = "/usr/sbin/haproxy"
DEPLOY_CFG = Path(__file__).parents[2] / "deploy" / "haproxy" / "haproxy.cfg"
PROXY_SOURCE = "127.0.0.2"


def haproxy_config(tmp_path: Path) -> Path:
    """deploy/haproxy's configuration, its connections to the SCPs made from PROXY_SOURCE."""
    text = DEPLOY_CFG.read_text()
    backend = "backend storage_scps\n"
    assert backend in text
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text.replace(backend, f"{backend}    source {PROXY_SOURCE}\n"))
    return cfg


@pytest.fixture
def proxied_scp(db: Db, tmp_path: Path) -> Iterator[tuple[StorageScp, int]]:
    """An SCP that takes PROXY headers from PROXY_SOURCE, and HAProxy's port in front of it."""
    haproxy_bin = require_peer(HAPROXY)
    scp = StorageScp(
        db.sessions,
        InstanceStorage(tmp_path / "storage"),
        ae_title=QRFARM_SCP_AE,
        port=free_port(),
        proxy_protocol_from=[PROXY_SOURCE],
    )
    scp.start()
    front = free_port()
    env = {
        **os.environ,
        "QRFARM_DICOM_BIND": f"127.0.0.1:{front}",
        "QRFARM_SCP1_ADDR": f"127.0.0.1:{scp.port}",
        "QRFARM_SCP2_ADDR": f"127.0.0.1:{scp.port}",
    }
    with (tmp_path / "haproxy.log").open("wb") as log:
        haproxy = subprocess.Popen(
            [haproxy_bin, "-db", "-f", str(haproxy_config(tmp_path))],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            assert wait_for_port(front, still_running=lambda: haproxy.poll() is None), (
                tmp_path / "haproxy.log"
            ).read_text()
            yield scp, front
        finally:
            haproxy.terminate()
            haproxy.wait(10)
            scp.stop(drain_timeout=10)


def test_behind_haproxy_the_pacs_is_admitted_by_its_real_address(
    db: Db, proxied_scp: tuple[StorageScp, int], corpus: Corpus
) -> None:
    _scp, front = proxied_scp
    instance = corpus.instances[0]
    # The PACS, from its registered address (127.0.0.1), through HAProxy.
    sent = subprocess.run(
        [
            require_peer(STORESCU),
            *("-aet", "STORESCU", "-aec", QRFARM_SCP_AE),
            *("127.0.0.1", str(front), str(instance.path)),
        ],
        capture_output=True,
        text=True,
        env=peer_env(),
        timeout=60,
        check=False,
    )
    assert sent.returncode == 0, sent.stderr
    with db.sessions() as session:
        row = session.scalars(select(OrphanInstance)).one()
    assert row.sop_instance_uid == instance.sop_uid
    assert row.peer_host == "127.0.0.1"
    # Its AE title from another address, through the same HAProxy: refused.
    assert association_answer(front, "STORESCU", source="127.0.0.2") == CALLING_AE_NOT_RECOGNISED


def test_a_connection_from_the_proxy_address_without_a_header_is_dropped(
    proxied_scp: tuple[StorageScp, int],
) -> None:
    scp, _front = proxied_scp
    # Straight to the SCP from the proxy's address, with no PROXY header: its
    # A-ASSOCIATE-RQ is not read as one; nothing is admitted.
    with pytest.raises(AssertionError, match="neither accepted nor rejected"):
        association_answer(scp.port, "STORESCU", source=PROXY_SOURCE)
    # From anywhere else the SCP speaks DICOM at once.
    assert association_answer(scp.port, "STORESCU", source="127.0.0.1") is None
