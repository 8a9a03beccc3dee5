"""Queued jobs over DICOM TLS, through the real farm, against Orthanc as a TLS-only PACS.

Orthanc listens with TLS alone (``DicomTlsEnabled``) and asks every caller for
a certificate its trusted list signs; it sends a move's C-STOREs over TLS to
the storage SCP's TLS port, which verifies Orthanc's certificate in turn.
One CA (made here, for 127.0.0.1 only) signs every certificate.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from qrfarm.dicom import Level
from qrfarm.jobs.nodes import NodeSpec
from qrfarm.models import MatchedBy
from qrfarm.sandbox.synthetic import Corpus
from tests.conftest import QRFARM_SCP_AE
from tests.peers import LOCALHOST, require_peer
from tests.peers.certs import CertPair, TestCa
from tests.peers.orthanc import ORTHANC_BINARIES, OrthancPeer
from tests.peers.ports import free_port

from .conftest import Farm, make_farm


class TlsSetup:
    def __init__(self, folder: Path) -> None:
        self.ca = TestCa(folder)
        self.orthanc: CertPair = self.ca.issue("orthanc")
        self.farm: CertPair = self.ca.issue("qrfarm")  # the workers' client certificate
        self.scp: CertPair = self.ca.issue("qrfarm-scp")
        self.scp_tls_port = free_port()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsSetup:
    return TlsSetup(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_orthanc(
    corpus: Corpus, tls: TlsSetup, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OrthancPeer]:
    """Orthanc speaking DICOM over TLS only, moving to the SCP's TLS port over TLS."""
    binary = require_peer(*ORTHANC_BINARIES)
    extra = {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(tls.orthanc.cert),
        "DicomTlsPrivateKey": str(tls.orthanc.key),
        "DicomTlsTrustedCertificates": str(tls.ca.cert_file),
        "DicomTlsRemoteCertificateRequired": True,
        "DicomModalities": {
            QRFARM_SCP_AE: {
                "AET": QRFARM_SCP_AE,
                "Host": LOCALHOST,
                "Port": tls.scp_tls_port,
                "UseDicomTls": True,
            }
        },
    }
    peer = OrthancPeer.start(
        binary,
        tmp_path_factory.mktemp("orthanc-tls"),
        {},
        ae_title="ORTHANCTLS",
        extra_config=extra,
    )
    try:
        study = corpus.studies()[_small_study(corpus)]
        peer.load(i.path for i in study)
        yield peer
    finally:
        peer.stop()


def _small_study(corpus: Corpus) -> str:
    return min(
        (uid for uid in corpus.studies() if uid != corpus.large_study_uid),
        key=lambda uid: (len(corpus.studies()[uid]), uid),
    )


@pytest.fixture
def farm(tmp_path: Path, qrfarm_scp_port: int, tls: TlsSetup) -> Iterator[Farm]:
    with make_farm("embedded", tmp_path, qrfarm_scp_port) as farm:
        farm.env.update(
            {
                "QRFARM_SCP_TLS_PORT": str(tls.scp_tls_port),
                "QRFARM_SCP_TLS_CERT_FILE": str(tls.scp.cert),
                "QRFARM_SCP_TLS_KEY_FILE": str(tls.scp.key),
                "QRFARM_SCP_TLS_CA_FILE": str(tls.ca.cert_file),
            }
        )
        yield farm


def _register(farm: Farm, orthanc: OrthancPeer, tls: TlsSetup, *, with_ca: bool = True) -> None:
    farm.register(
        NodeSpec(
            "orthanc-tls",
            orthanc.ae_title,
            LOCALHOST,
            orthanc.port,
            tls=True,
            tls_ca_file=str(tls.ca.cert_file) if with_ca else None,
            tls_cert_file=str(tls.farm.cert),
            tls_key_file=str(tls.farm.key),
        )
    )


def test_a_queued_find_and_move_run_over_tls(
    farm: Farm, tls_orthanc: OrthancPeer, tls: TlsSetup, corpus: Corpus
) -> None:
    _register(farm, tls_orthanc, tls)
    farm.start_scp()
    farm.start("scheduler", "scheduler")
    farm.start_worker("orthanc-tls", concurrency=1)
    study = _small_study(corpus)
    instances = {i.sop_uid for i in corpus.studies()[study]}

    find = farm.wait(farm.client.find("orthanc-tls", Level.STUDY, {"StudyInstanceUID": study}))
    assert find["state"] == "completed", find
    answers = farm.client.results(find["id"])
    assert [a["0020000D"]["Value"][0] for a in answers] == [study]

    move = farm.wait(farm.client.move("orthanc-tls", Level.STUDY, {"StudyInstanceUID": study}))
    assert move["state"] == "completed", move
    rows = farm.rows(move["id"])
    assert {r.sop_instance_uid for r in rows} == instances
    assert {r.matched_by for r in rows} == {MatchedBy.ORIGINATOR}


def _node_echo(farm: Farm, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qrfarm.cli", "node", "echo", name],
        env={**os.environ, **farm.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_node_echo_uses_the_nodes_tls(farm: Farm, tls_orthanc: OrthancPeer, tls: TlsSetup) -> None:
    _register(farm, tls_orthanc, tls)
    echoed = _node_echo(farm, "orthanc-tls")
    assert echoed.returncode == 0, echoed.stdout + echoed.stderr
    assert "Success" in echoed.stdout


def test_a_tls_node_without_a_ca_trusts_only_the_system_store(
    farm: Farm, tls_orthanc: OrthancPeer, tls: TlsSetup
) -> None:
    # The test CA is in no system trust store: verification stays on and fails.
    _register(farm, tls_orthanc, tls, with_ca=False)
    echoed = _node_echo(farm, "orthanc-tls")
    assert echoed.returncode == 3, echoed.stdout + echoed.stderr
    assert "certificate verify failed" in echoed.stdout + echoed.stderr
