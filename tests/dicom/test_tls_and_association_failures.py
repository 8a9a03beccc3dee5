"""TLS against DCMTK storescp, and association failures against real peers."""

from __future__ import annotations

from pathlib import Path

import pytest

from qrfarm.dicom import (
    Connection,
    Node,
    Operation,
    StatusCategory,
    TlsSettings,
    qr_contexts,
)
from qrfarm.errors import AssociationAborted, AssociationRejected, InvalidNode, PeerUnreachable
from tests.peers import PacsPeer, require_peer
from tests.peers.dcmtk import STORESCP, StoreScp, make_tls_certificate, storescp_has_tls
from tests.peers.ports import free_port

from .helpers import node_of

ECHO = qr_contexts([Operation.ECHO])


@pytest.fixture
def tls_storescp(tmp_path: Path) -> tuple[StoreScp, Path]:
    require_peer(STORESCP)
    if not storescp_has_tls():
        pytest.fail("DCMTK storescp here is built without TLS")
    key, cert = make_tls_certificate(tmp_path / "tls")
    scp = StoreScp("TLSSCP", free_port(), tmp_path / "in", tls=(key, cert))
    return scp, cert


def test_echo_over_tls_to_dcmtk_storescp(tls_storescp: tuple[StoreScp, Path]) -> None:
    scp, cert = tls_storescp
    try:
        node = Node("TLSSCP", "127.0.0.1", scp.port, tls=TlsSettings(ca_file=cert))
        with Connection.open(node, ECHO) as conn:
            assert conn.echo().category is StatusCategory.SUCCESS
    finally:
        scp.stop()


def test_tls_with_an_untrusted_certificate_names_the_tls_failure(
    tls_storescp: tuple[StoreScp, Path], tmp_path: Path
) -> None:
    scp, _ = tls_storescp
    _, other_cert = make_tls_certificate(tmp_path / "other")
    try:
        node = Node("TLSSCP", "127.0.0.1", scp.port, tls=TlsSettings(ca_file=other_cert))
        with pytest.raises(PeerUnreachable, match=r"TLS handshake failed.*certificate verify"):
            Connection.open(node, ECHO)
    finally:
        scp.stop()


def test_plain_association_to_a_tls_port_does_not_pass(
    tls_storescp: tuple[StoreScp, Path],
) -> None:
    scp, _ = tls_storescp
    try:
        with pytest.raises((AssociationAborted, PeerUnreachable)):
            Connection.open(Node("TLSSCP", "127.0.0.1", scp.port), ECHO)
    finally:
        scp.stop()


def test_missing_tls_files_are_a_clear_node_error(tmp_path: Path) -> None:
    tls = TlsSettings(ca_file=tmp_path / "absent.pem")
    with pytest.raises(InvalidNode, match="TLS files cannot be loaded"):
        Connection.open(Node("X", "127.0.0.1", free_port(), tls=tls), ECHO)


def test_wrong_called_ae_title_is_rejected_with_the_peers_reason(pacs: PacsPeer) -> None:
    # Repeated: the rejection must never be mistaken for an abort (a race in
    # pynetdicom when the peer closes right after A-ASSOCIATE-RJ).
    for _ in range(10):
        with pytest.raises(AssociationRejected) as info:
            Connection.open(node_of(pacs, "NOTTHISPACS"), ECHO)
        assert "Called AE title not recognised" in info.value.reason
        assert not info.value.retriable


def test_echo_on_each_pacs(pacs: PacsPeer) -> None:
    with Connection.open(node_of(pacs), ECHO) as conn:
        response = conn.echo()
    assert response.status == 0x0000 and response.category is StatusCategory.SUCCESS


def test_pacs_stopped_listening_is_unreachable() -> None:
    port = free_port()
    with pytest.raises(PeerUnreachable, match=f"127.0.0.1:{port}: Connection refused"):
        Connection.open(Node("GONE", "127.0.0.1", port), ECHO)
