"""`qrfarm scp` with DICOM TLS on its own port beside the plain one.

DCMTK's storescu is the sender (built with OpenSSL on Debian). The SCP is
given a CA: every TLS peer must present a client certificate that CA signed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.jobs.nodes import NodeSpec, upsert_node
from qrfarm.models import OrphanInstance
from qrfarm.sandbox.synthetic import Corpus
from tests.conftest import QRFARM_SCP_AE
from tests.databases import database_url, migrated
from tests.peers import LOCALHOST, peer_env, require_peer
from tests.peers.certs import CertPair, TestCa
from tests.peers.dcmtk import STORESCU
from tests.peers.ports import free_port, wait_for_port

from .test_process import wait_for


@dataclass
class TlsScp:
    port: int
    tls_port: int
    ca: TestCa
    sessions: sessionmaker[Session]
    log: Path

    def recorded(self) -> int:
        with self.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(OrphanInstance)) or 0)


@pytest.fixture
def tls_scp(tmp_path: Path) -> Iterator[TlsScp]:
    require_peer(STORESCU)
    ca = TestCa(tmp_path / "tls")
    server = ca.issue("scp")
    port, tls_port = free_port(), free_port()
    log = tmp_path / "scp.log"
    with database_url("sqlite", tmp_path) as url, migrated(url) as (_engine, sessions):
        with sessions() as session, session.begin():
            upsert_node(session, NodeSpec("sender", "STORESCU", LOCALHOST, 104))
        env = {
            **os.environ,
            "QRFARM_DATABASE_URL": url,
            "QRFARM_STORAGE_ROOT": str(tmp_path / "storage"),
            "QRFARM_SCP_PORT": str(port),
            "QRFARM_SCP_AE_TITLE": QRFARM_SCP_AE,
            "QRFARM_SCP_TLS_PORT": str(tls_port),
            "QRFARM_SCP_TLS_CERT_FILE": str(server.cert),
            "QRFARM_SCP_TLS_KEY_FILE": str(server.key),
            "QRFARM_SCP_TLS_CA_FILE": str(ca.cert_file),
            "QRFARM_ALLOWED_HOSTS": LOCALHOST,
            "QRFARM_CONFIG": str(tmp_path / "none.toml"),
        }
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "qrfarm.cli", "-v", "scp"], env=env, stdout=out, stderr=out
            )
        try:
            running = lambda: process.poll() is None  # noqa: E731
            for each in (port, tls_port):
                if not wait_for_port(each, timeout=30, still_running=running):
                    pytest.fail("qrfarm scp did not start:\n" + log.read_text())
            yield TlsScp(port, tls_port, ca, sessions, log)
        finally:
            process.terminate()
            process.wait(30)


def storescu(port: int, files: list[Path], *tls: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STORESCU, *tls, "-aet", "STORESCU", "-aec", QRFARM_SCP_AE, LOCALHOST, str(port)]
        + [str(f) for f in files],
        env=peer_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def with_certificate(ca: TestCa, pair: CertPair) -> list[str]:
    # +tls KEY CERT: our certificate; +cf: the CA the SCP's certificate must chain to.
    return ["+tls", str(pair.key), str(pair.cert), "+cf", str(ca.cert_file)]


def test_a_c_store_over_tls_is_stored_and_recorded(tls_scp: TlsScp, corpus: Corpus) -> None:
    files = [i.path for i in corpus.instances[:3]]
    sent = storescu(
        tls_scp.tls_port, files, *with_certificate(tls_scp.ca, tls_scp.ca.issue("storescu"))
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr + tls_scp.log.read_text()
    assert tls_scp.recorded() == len(files)
    # The plain port still speaks plain DICOM beside it.
    plain = storescu(tls_scp.port, [corpus.instances[3].path])
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert tls_scp.recorded() == len(files) + 1


def test_a_plain_connection_to_the_tls_port_is_refused(tls_scp: TlsScp, corpus: Corpus) -> None:
    sent = storescu(tls_scp.tls_port, [corpus.instances[0].path])
    assert sent.returncode != 0
    assert tls_scp.recorded() == 0
    assert "TLS connection from 127.0.0.1 closed" in tls_scp.log.read_text()


def test_a_tls_peer_without_a_certificate_the_ca_signed_is_refused(
    tls_scp: TlsScp, corpus: Corpus, tmp_path: Path
) -> None:
    files = [corpus.instances[0].path]
    # No client certificate at all.
    anonymous = storescu(tls_scp.tls_port, files, "+tla", "+cf", str(tls_scp.ca.cert_file))
    assert anonymous.returncode != 0
    # One signed by another CA.
    stranger = TestCa(tmp_path / "other", "another CA").issue("stranger")
    foreign = storescu(
        tls_scp.tls_port,
        files,
        "+tls",
        str(stranger.key),
        str(stranger.cert),
        "+cf",
        str(tls_scp.ca.cert_file),
    )
    assert foreign.returncode != 0
    assert tls_scp.recorded() == 0
    # The SCP process logs each refusal as its handshake ends, which may be
    # after storescu has exited: its log is read until both are in it.
    wanted = ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_VERIFY_FAILED")
    wait_for(
        lambda: all(reason in tls_scp.log.read_text() for reason in wanted),
        10,
        "both refusals in the SCP's log",
    )
