"""Who may open an association with the storage SCP: a known node's calling AE
title, from one of that node's hosts, calling the SCP's own AE title.

Source addresses are 127.0.0.1 and 127.0.0.2, both loopback: a node registered
at 127.0.0.1 that presents its AE title from 127.0.0.2 is the wrong host.
"""

from __future__ import annotations

import socket

import pytest
from pynetdicom import build_context

from qrfarm.errors import InvalidNode
from qrfarm.jobs.nodes import NodeSpec, upsert_node
from qrfarm.scp import StorageScp
from tests.conftest import QRFARM_SCP_AE
from tests.peers.dcmtk import echoscu

from .conftest import Db, limit_of_the_pynetdicom_path
from .senders import association_answer, association_request

VERIFICATION = "1.2.840.10008.1.1"
# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4.
CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)
CALLED_AE_NOT_RECOGNISED = (0x01, 0x01, 0x07)


def add_node(db: Db, spec: NodeSpec) -> None:
    with db.sessions() as session, session.begin():
        upsert_node(session, spec)


def test_known_ae_from_the_wrong_host_is_rejected(scp: StorageScp) -> None:
    # "sender" is registered at 127.0.0.1 (tests/scp/conftest.py).
    assert association_answer(scp.port, "STORESCU", source="127.0.0.1") is None
    assert association_answer(scp.port, "STORESCU", source="127.0.0.2") == CALLING_AE_NOT_RECOGNISED
    # Its other store AE title too: a host check is per node, not per title.
    other_title = association_answer(scp.port, "STORESCU2", source="127.0.0.2")
    assert other_title == CALLING_AE_NOT_RECOGNISED


def test_store_hosts_take_networks_and_names(db: Db, scp: StorageScp) -> None:
    add_node(db, NodeSpec("by-network", "NETPACS", "127.0.0.1", 104, store_hosts=["127.0.0.2/32"]))
    add_node(db, NodeSpec("by-name", "NAMEPACS", "127.0.0.1", 104, store_hosts=["localhost"]))
    scp.context.known_nodes.expire()
    # The store hosts replace the node's own host: only what they name is admitted.
    assert association_answer(scp.port, "NETPACS", source="127.0.0.2") is None
    assert association_answer(scp.port, "NETPACS", source="127.0.0.1") == CALLING_AE_NOT_RECOGNISED
    # "localhost" resolves to 127.0.0.1 (and ::1), never to 127.0.0.2.
    assert association_answer(scp.port, "NAMEPACS", source="127.0.0.1") is None
    assert association_answer(scp.port, "NAMEPACS", source="127.0.0.2") == CALLING_AE_NOT_RECOGNISED


def test_a_node_behind_nat_is_admitted_from_any_host_only_when_told(
    db: Db, scp: StorageScp
) -> None:
    add_node(db, NodeSpec("natted", "NATPACS", "127.0.0.1", 104, any_store_host=True))
    scp.context.known_nodes.expire()
    assert association_answer(scp.port, "NATPACS", source="127.0.0.2") is None
    assert association_answer(scp.port, "NATPACS", source="127.0.0.1") is None


def test_a_wrong_called_ae_is_rejected(scp: StorageScp) -> None:
    assert association_answer(scp.port, "STORESCU", called_ae="ANY-SCP") == CALLED_AE_NOT_RECOGNISED
    assert association_answer(scp.port, "STORESCU", called_ae=QRFARM_SCP_AE + "X") == (
        CALLED_AE_NOT_RECOGNISED
    )
    run = echoscu("127.0.0.1", scp.port, "ANY-SCP", calling_ae="STORESCU")
    assert run.returncode != 0 and "Called AE Title Not Recognized" in run.stderr
    assert association_answer(scp.port, "STORESCU") is None


def test_bad_store_hosts_are_refused_at_registration(db: Db) -> None:
    for bad in ("10.0.0.0/33", "", "exa mple", "-x.example"):
        with pytest.raises(InvalidNode), db.sessions() as session:
            upsert_node(session, NodeSpec("bad", "BADPACS", "127.0.0.1", 104, store_hosts=[bad]))


def test_after_a_rejection_the_peer_closes_the_connection(
    scp: StorageScp, receive_path: str, request: pytest.FixtureRequest
) -> None:
    """PS3.8 (Sta13): after its A-ASSOCIATE-RJ the SCP waits for the requestor
    to close the connection rather than closing it at once; a peer that sees
    the close first may report an abort and lose the reason."""
    limit_of_the_pynetdicom_path(
        request,
        receive_path,
        "pynetdicom's acceptor closes the connection once its A-ASSOCIATE-RJ is sent",
    )
    context = build_context(VERIFICATION)
    context.context_id = 1
    with socket.create_connection(("127.0.0.1", scp.port), timeout=5) as peer:
        peer.sendall(association_request("STRANGER", [context]))
        answer = peer.recv(10, socket.MSG_WAITALL)
        assert answer[:1] == b"\x03"  # A-ASSOCIATE-RJ
        assert tuple(answer[7:10]) == CALLING_AE_NOT_RECOGNISED
        peer.settimeout(0.5)
        with pytest.raises(TimeoutError):
            peer.recv(1)  # still open: the peer closes it
