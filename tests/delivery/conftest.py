"""A farm with the source Orthanc and destinations the source does not know:
dcmqrscp (plain, and marked for pseudonymised delivery), and an Orthanc that
accepts Implicit VR Little Endian only. One farm for the module: its worker
serves every node's queue."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.jobs.nodes import NodeSpec
from tests.conftest import QRFARM_SCP_AE
from tests.databases import database_url, migrated
from tests.peers import require_peer
from tests.peers.dcmqrscp import DCMQRSCP, DcmqrscpPeer
from tests.peers.orthanc import ORTHANC_BINARIES, OrthancPeer

# How many associations the dcmqrscp destination takes at once, as registered in
# the farm (which would use 4 otherwise: QRFARM_FORWARD_ASSOCIATIONS). One:
# dcmqrscp 3.6.7 names stored files by the time and a counter of its own in
# each forked child, and two children storing at once were seen to write 300
# instances to 288 files while answering success, and C-FIND, for all 300.
DEST_LIMIT = 1


@dataclass
class ChildCounter:
    """Counts a forking server's live children (one per association, as dcmqrscp
    forks them) every few milliseconds: the peak held at the peer."""

    pid: int
    peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _children(self) -> int:
        live = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid ...": a zombie (Z) has released its association.
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == self.pid and fields[0] != "Z":
                live += 1
        return live

    def __enter__(self) -> ChildCounter:
        def run() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, self._children())
                time.sleep(0.002)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A migrated database of its own (SQLite file, or a new PostgreSQL database)."""
    with database_url(request.param, tmp_path) as url, migrated(url) as (_, factory):
        yield factory


@pytest.fixture(scope="module")
def dest_qr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DcmqrscpPeer]:
    """An empty dcmqrscp the source PACS does not know."""
    require_peer(DCMQRSCP)
    peer = DcmqrscpPeer.start(
        tmp_path_factory.mktemp("dest-qr"), {}, ae_title="DESTQR", callers=["QRFARM"]
    )
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture(scope="module")
def pseudo_qr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DcmqrscpPeer]:
    """An empty dcmqrscp for research deliveries (pseudonymised)."""
    require_peer(DCMQRSCP)
    peer = DcmqrscpPeer.start(
        tmp_path_factory.mktemp("pseudo-qr"), {}, ae_title="RESEARCH", callers=["QRFARM"]
    )
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture(scope="module")
def implicit_orthanc(
    tmp_path_factory: pytest.TempPathFactory, qrfarm_scp_port: int
) -> Iterator[OrthancPeer]:
    """An Orthanc that takes Implicit VR Little Endian only, and sends its Storage
    Commitment reports to the farm's storage SCP."""
    binary = require_peer(*ORTHANC_BINARIES)
    farm = {"AET": QRFARM_SCP_AE, "Host": "127.0.0.1", "Port": qrfarm_scp_port}
    peer = OrthancPeer.start(
        binary,
        tmp_path_factory.mktemp("implicit-orthanc"),
        {},
        ae_title="IMPLICIT",
        extra_config={
            "AcceptedTransferSyntaxes": ["1.2.840.10008.1.2"],
            "DicomModalities": {"farm": {**farm, "AllowStorageCommitment": True}},
        },
    )
    try:
        yield peer
    finally:
        peer.stop()


def destination_specs(
    orthanc: OrthancPeer,
    dest_qr: DcmqrscpPeer,
    pseudo_qr: DcmqrscpPeer,
    implicit_orthanc: OrthancPeer,
) -> list[NodeSpec]:
    return [
        NodeSpec("orthanc", orthanc.ae_title, "127.0.0.1", orthanc.port),
        NodeSpec("dest", dest_qr.ae_title, "127.0.0.1", dest_qr.port, max_associations=DEST_LIMIT),
        NodeSpec("research", pseudo_qr.ae_title, "127.0.0.1", pseudo_qr.port, max_associations=1),
        NodeSpec("implicit", implicit_orthanc.ae_title, "127.0.0.1", implicit_orthanc.port),
    ]
