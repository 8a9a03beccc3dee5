"""Shared fixtures: the synthetic corpus and the real peers loaded with it.

Peers start only when a test asks for them, once per session; the move
destinations' ports are fixed for the session because both PACS are told
them in their configuration at start.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qrfarm.sandbox.synthetic import Corpus, generate_corpus
from tests.peers import PacsPeer, PeerStartError, require_peer
from tests.peers.dcmqrscp import DCMQRSCP, STORESCU, DcmqrscpPeer
from tests.peers.dcmtk import STORESCP, StoreScp
from tests.peers.orthanc import ORTHANC_BINARIES, OrthancPeer
from tests.peers.ports import free_port

CALLING_AE = "QRFARM"
"""The AE title qrfarm (and findscu in tests) calls the PACS with."""
MOVE_DEST_AE = "STORESCP"
"""Move destination served by DCMTK storescp (the ``storescp`` fixture)."""
QRFARM_SCP_AE = "QRFARMSCP"
"""Second move destination, for qrfarm's own storage SCP."""
UNKNOWN_DEST_AE = "NOWHERE"
"""An AE title neither PACS knows as a move destination."""


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return generate_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def move_dest_port() -> int:
    """Port of the STORESCP move destination."""
    return free_port()


@pytest.fixture(scope="session")
def qrfarm_scp_port() -> int:
    """Port of the QRFARMSCP move destination."""
    return free_port()


@pytest.fixture(scope="session")
def move_destinations(move_dest_port: int, qrfarm_scp_port: int) -> dict[str, int]:
    """AE title -> port on 127.0.0.1 of every destination the PACS may move to."""
    return {MOVE_DEST_AE: move_dest_port, QRFARM_SCP_AE: qrfarm_scp_port}


@pytest.fixture(scope="session")
def orthanc(
    corpus: Corpus, move_destinations: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OrthancPeer]:
    binary = require_peer(*ORTHANC_BINARIES)
    peer = OrthancPeer.start(binary, tmp_path_factory.mktemp("orthanc"), move_destinations)
    try:
        peer.load(i.path for i in corpus.instances)
        _check_loaded(peer, peer.count_instances(), corpus)
        yield peer
    finally:
        peer.stop()


@pytest.fixture(scope="session")
def dcmqrscp(
    corpus: Corpus, move_destinations: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DcmqrscpPeer]:
    require_peer(DCMQRSCP)
    require_peer(STORESCU)
    peer = DcmqrscpPeer.start(
        tmp_path_factory.mktemp("dcmqrscp"), move_destinations, callers=[CALLING_AE]
    )
    try:
        peer.load(corpus.root, calling_ae=CALLING_AE)
        _check_loaded(peer, len(peer.stored_files()), corpus)
        yield peer
    finally:
        peer.stop()


def _check_loaded(peer: OrthancPeer | DcmqrscpPeer, count: int, corpus: Corpus) -> None:
    if count != len(corpus.instances):
        raise PeerStartError(
            f"{peer.name} holds {count} instances after loading {len(corpus.instances)}\n"
            f"--- last lines of its log ---\n{peer.log_tail()}"
        )


@pytest.fixture(params=["orthanc", "dcmqrscp"])
def pacs(request: pytest.FixtureRequest) -> PacsPeer:
    """Each PACS in turn, loaded with the corpus."""
    peer: PacsPeer = request.getfixturevalue(request.param)
    return peer


@pytest.fixture
def storescp(move_dest_port: int, tmp_path: Path) -> Iterator[StoreScp]:
    """DCMTK storescp as the STORESCP move destination, into a fresh directory."""
    require_peer(STORESCP)
    scp = StoreScp(MOVE_DEST_AE, move_dest_port, tmp_path / "storescp")
    try:
        yield scp
    finally:
        scp.stop()
